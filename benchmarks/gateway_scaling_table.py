"""gateway_scaling.sh's bookkeeping over its JSON lines (loadgen's rows):

    python -m benchmarks.gateway_scaling_table annotate OUT CPU_BEFORE CPU_AFTER KEY=VALUE...
        adds to OUT's last row the frontend tree's CPU over the level (ms a request, and cores
        busy on average) and the KEY=VALUE fields (processes, cpus, load)
    python -m benchmarks.gateway_scaling_table merge OUT PART...
        appends to OUT one row for a level that LOADGENS generators ran side by side (one row
        each in PART): counts and rates summed, the level's wall time the longest, p50s the
        request-weighted mean of the generators' p50s, p99s the worst generator's p99 (an upper
        bound of the true p99: the raw latencies stay in the generators)
    python -m benchmarks.gateway_scaling_table table OUT [LABEL_SUBSTRING]
        prints the rows as a markdown table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.report import markdown_table

COLUMNS = [
    ("label", "frontend", "s"),
    ("processes", "procs", "s"),
    ("concurrency", "conc", "d"),
    ("req_per_s", "req/s", ".1f"),
    ("ttft_p50_ms", "TTFT p50 ms", ".1f"),
    ("ttft_p99_ms", "TTFT p99 ms", ".1f"),
    ("itl_p99_ms", "ITL p99 ms", ".2f"),
    ("tree_cpu_ms_per_req", "frontend CPU ms/req", ".2f"),
    ("tree_cores_busy", "frontend cores busy", ".2f"),
    ("generators", "generators", "d"),
    ("loadgen_cpu_util", "loadgen CPU", ".0%"),
    ("errors", "errors", "d"),
    ("load", "load avg", "s"),
]


def annotate(path: Path, before: float, after: float, fields: list[str]) -> None:
    lines = path.read_text().splitlines()
    row = json.loads(lines[-1])
    # Read around the whole loadgen run: its level (warm-up and drain included) and its prompt
    # calibration, a few short requests; charged to every request the level sent.
    cpu = after - before
    row["tree_cpu_s"] = cpu
    row["tree_cores_busy"] = cpu / row["level_wall_s"]
    row["tree_cpu_ms_per_req"] = cpu / max(row["sent_requests"], 1) * 1000
    for field in fields:
        key, _, value = field.partition("=")
        row[key] = value
    lines[-1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


SUMMED = ("requests", "errors", "req_per_s", "output_tok_per_s", "sent_requests", "concurrency",
          "loadgen_cpu_util", "requests_without_usage")


def merge(path: Path, parts: list[Path]) -> None:
    rows = [json.loads(part.read_text().splitlines()[-1]) for part in parts]
    merged = dict(rows[0])
    weights = [max(r["requests"], 1) for r in rows]
    for key in SUMMED:
        if all(key in r for r in rows):
            merged[key] = sum(r[key] for r in rows)
    for key in rows[0]:
        if key.endswith("_p50_ms"):
            merged[key] = sum(r[key] * w for r, w in zip(rows, weights)) / sum(weights)
        elif key.endswith("_p99_ms"):
            merged[key] = max(r[key] for r in rows)
    merged["level_wall_s"] = max(r["level_wall_s"] for r in rows)
    merged["generators"] = len(rows)
    with path.open("a") as out:
        out.write(json.dumps(merged) + "\n")


def table(path: Path, match: str = "") -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return markdown_table([r for r in rows if match in r.get("label", "")], COLUMNS)


if __name__ == "__main__":
    command, out = sys.argv[1], Path(sys.argv[2])
    if command == "annotate":
        annotate(out, float(sys.argv[3]), float(sys.argv[4]), sys.argv[5:])
    elif command == "merge":
        merge(out, [Path(part) for part in sys.argv[3:]])
    elif command == "table":
        print(table(out, sys.argv[3] if len(sys.argv) > 3 else ""))
    else:
        sys.exit(f"unknown command {command!r}: annotate, merge or table")
