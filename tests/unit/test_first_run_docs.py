"""What a fresh clone's README and benchmarks promise is there: bounded streaming examples,
the command that runs the Python snippet, and the traces the benchmarks replay."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_streaming_curl_is_bounded_and_python_snippet_says_how_to_run_it():
    readme = (ROOT / "README.md").read_text()
    streaming = [body for body in re.findall(r"-d '(\{.*?\})'", readme) if '"stream": true' in body]
    assert streaming and all('"max_tokens"' in body for body in streaming), streaming
    before_snippet = readme[: readme.index("```python")]
    assert "uv run python" in before_snippet[-400:]


def test_benchmark_traces_ship_in_the_repository():
    script = (ROOT / "benchmarks" / "router_comparison.sh").read_text()
    default_dir = re.search(r"traces_dir=\$\{TRACES_DIR:-([^}]+)\}", script).group(1)
    names = re.search(r"for trace in \$\{TRACES:-([^}]+)\}", script).group(1).split()
    for name in names:
        trace = ROOT / default_dir / f"{name}.jsonl"
        assert trace.is_file(), trace
        first = json.loads(trace.open().readline())
        assert {"timestamp", "input_length", "output_length", "hash_ids"} <= set(first)
    assert "Mooncake" in (ROOT / default_dir / "README.md").read_text()
