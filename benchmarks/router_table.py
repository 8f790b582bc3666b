"""One table from the JSON lines of router runs: each router's hit rate and TTFT beside
round-robin's at the same workload and level, so a reader sees the ratios the issue asks for.

    python -m benchmarks.router_table bench-results/kv_workloads.jsonl [more.jsonl ...]

Rows are matched by workload (the label's first word, for `kv_workloads.sh` labels
"WORKLOAD ROUTER") and level (loadgen's concurrency; trace replay's label suffix). The
baseline is the round-robin row of the same harness: ours for ours, Dynamo's for Dynamo's
(`dynamo-round-robin`), whose mocker runs a different timing model.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from typing import Any


def _rows(paths: Iterable[str]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    """(workload, router, level)"""
    label = row.get("label") or ""
    if row.get("benchmark") == "loadgen":
        workload, _, router = label.partition(" ")
        return workload, router, str(row.get("concurrency"))
    router, _, level = label.partition(" ")
    return row.get("trace", "trace").rsplit("/", 1)[-1].removesuffix(".jsonl"), router, level


def _baseline(router: str) -> str:
    return "dynamo-round-robin" if router.startswith("dynamo-") else "round-robin"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or not base or math.isnan(value) or math.isnan(base):
        return "-"
    return f"{value / base:.2f}×"


def table(rows: list[dict[str, Any]]) -> str:
    by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault(_key(row), []).append(row)
    lines = ["| workload | level | router | run | requests | errors | prefix hit | TTFT p50 ms | TTFT p99 ms "
             "| p50 / baseline | p99 / baseline |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (workload, router, level), runs in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][2].zfill(4), kv[0][1])):
        bases = by_key.get((workload, _baseline(router), level), [])
        for i, row in enumerate(runs):
            base = bases[min(i, len(bases) - 1)] if bases else {}
            lines.append(
                f"| {workload} | {level} | {router} | {i + 1} | {row['requests']} | {row['errors']} "
                f"| {row['prefix_hit_rate']:.0%} | {row['ttft_p50_ms']:.1f} | {row['ttft_p99_ms']:.1f} "
                f"| {_ratio(row['ttft_p50_ms'], base.get('ttft_p50_ms'))} "
                f"| {_ratio(row['ttft_p99_ms'], base.get('ttft_p99_ms'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.router_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jsonl", nargs="+")
    print(table(_rows(p.parse_args(argv).jsonl)))


if __name__ == "__main__":
    main()
