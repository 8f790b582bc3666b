"""The gateway-vs-Dynamo table from `gateway_comparison.sh`'s JSON lines: one line a pair (our
run and Dynamo's beside it), with ours/Dynamo ratios, so every run shows and no average hides
the spread.

    python -m benchmarks.gateway_table bench-results/gateway_comparison.jsonl [more.jsonl ...]

Labels are "ROW SIDE PAIR[ VARIANT]" (side `ours` or `dynamo`); a level is the closed loop's
concurrency or the open loop's offered rate. A VARIANT (LABEL_SUFFIX, e.g. "before") keeps
runs of different builds apart; an our run is paired with the Dynamo run of the same row,
level and pair number, of the same variant where there is one, else of any.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from typing import Any

# (key, header, format): each printed for ours, for Dynamo, and (where `ratio`) as ours/Dynamo.
METRICS = [
    ("req_per_s", "req/s", ".0f", True),
    ("ttft_p50_ms", "TTFT p50 ms", ".0f", True),
    ("ttft_p99_ms", "TTFT p99 ms", ".0f", True),
    ("tpot_p99_ms", "TPOT p99 ms", ".2f", False),
    ("cpu_of_ms_per_request", "frontend CPU-ms/req", ".2f", True),
]


def _rows(paths: Iterable[str]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def _level(row: dict[str, Any]) -> str:
    if row.get("offered_rate") is not None:
        return f"{row['offered_rate']:g}/s"
    return f"{row.get('concurrency')} streams"


def parse_label(label: str) -> tuple[str, str, str, str] | None:
    """(row, side, pair, variant) of a gateway_comparison label, or None for another's."""
    parts = label.split(" ", 3)
    if len(parts) < 3 or parts[1] not in ("ours", "dynamo"):
        return None
    return parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else ""


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _ratio(ours: Any, theirs: Any) -> str:
    if not isinstance(ours, (int, float)) or not isinstance(theirs, (int, float)) or not theirs:
        return "-"
    if math.isnan(ours) or math.isnan(theirs):
        return "-"
    return f"{ours / theirs:.2f}×"


def table(rows: list[dict[str, Any]]) -> str:
    # A key seen again (the harness run twice with the same labels) keeps every run, in order:
    # the n-th of our runs pairs with the n-th of Dynamo's and shows as pair "P.n".
    ours: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    theirs: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        parsed = parse_label(row.get("label") or "")
        if parsed is None:
            continue
        name, side, pair, variant = parsed
        (ours if side == "ours" else theirs).setdefault((name, _level(row), pair, variant), []).append(row)
    head = ["row", "level", "variant", "pair"]
    for _, header, _, ratio in METRICS:
        head += [f"{header} ours", f"{header} Dynamo"] + (["ours/Dynamo"] if ratio else [])
    head.append("load avg")
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + " |"]
    for key in sorted(ours, key=lambda k: (k[0], k[1].zfill(12), k[3], k[2])):
        name, level, pair, variant = key
        others = theirs.get(key) or next(
            (r for (n, lv, p, _), r in sorted(theirs.items()) if (n, lv, p) == (name, level, pair)), [])
        for n, mine in enumerate(ours[key]):
            other = others[n] if n < len(others) else {}
            cells = [name, level, variant or "-", pair if n == 0 else f"{pair}.{n + 1}"]
            for metric, _, spec, ratio in METRICS:
                cells += [_cell(mine.get(metric), spec), _cell(other.get(metric), spec)]
                if ratio:
                    cells.append(_ratio(mine.get(metric), other.get(metric)))
            load = mine.get("load_average")
            cells.append(f"{load[0]:.1f}" if load else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gateway_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jsonl", nargs="+")
    print(table(_rows(p.parse_args(argv).jsonl)))


if __name__ == "__main__":
    main()
