"""The scaling benchmark's merge of side-by-side load generators into one row."""

import json
import sys
from pathlib import Path

# The benchmarks are scripts of the repository, not an installed distribution.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.gateway_scaling_table import merge  # noqa: E402


def test_merge_sums_rates_weights_p50s_and_keeps_the_worst_p99(tmp_path):
    rows = [
        {"label": "ours", "requests": 300, "errors": 0, "req_per_s": 30.0, "output_tok_per_s": 300.0,
         "sent_requests": 310, "concurrency": 16, "loadgen_cpu_util": 0.5, "ttft_p50_ms": 10.0,
         "ttft_p99_ms": 40.0, "level_wall_s": 10.0},
        {"label": "ours", "requests": 100, "errors": 2, "req_per_s": 10.0, "output_tok_per_s": 100.0,
         "sent_requests": 110, "concurrency": 16, "loadgen_cpu_util": 0.25, "ttft_p50_ms": 30.0,
         "ttft_p99_ms": 90.0, "level_wall_s": 11.0},
    ]
    parts = []
    for i, row in enumerate(rows):
        part = tmp_path / f"gen{i}"
        part.write_text(json.dumps(row) + "\n")
        parts.append(part)
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"label": "earlier"}) + "\n")

    merge(out, parts)

    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"label": "earlier"}
    merged = json.loads(lines[1])
    assert merged["requests"] == 400 and merged["errors"] == 2 and merged["sent_requests"] == 420
    assert merged["req_per_s"] == 40.0 and merged["concurrency"] == 32
    assert merged["loadgen_cpu_util"] == 0.75
    assert merged["ttft_p50_ms"] == 15.0  # (300 * 10 + 100 * 30) / 400
    assert merged["ttft_p99_ms"] == 90.0
    assert merged["level_wall_s"] == 11.0 and merged["generators"] == 2
