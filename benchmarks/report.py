"""Benchmark output: markdown tables, JSON lines, error samples, and the options and event loop
every load benchmark shares."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table; columns are (key, header, format spec). Missing or NaN cells print
    as "-"; text columns (spec "s") align left, numbers right."""
    head = "| " + " | ".join(header for _, header, _ in columns) + " |"
    rule = "| " + " | ".join("---" if spec == "s" else "---:" for _, _, spec in columns) + " |"
    body = ["| " + " | ".join(_cell(row.get(key), spec) for key, _, spec in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def append_json_lines(path: str | None, rows: Sequence[dict[str, Any]]) -> None:
    """Append one JSON object a row (NaN written as null, which JSON has and NaN is not)."""
    if not path:
        return
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(_without_nan(row)) + "\n")


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return value


def print_errors(rows: Sequence[dict[str, Any]], name_key: str) -> None:
    """Print the commonest error messages of each row that had errors."""
    for row in rows:
        for sample in row.get("error_samples", []):
            print(f"  errors at {row.get(name_key)}: {sample}")


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (a cheaper event loop for the generator itself)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def add_run_options(p: argparse.ArgumentParser, *, timeout_s: float, label_help: str, json_help: str) -> None:
    """The options every load benchmark shares: transport, timeout, and where results go."""
    p.add_argument("--client", choices=["raw", "httpx"], default="raw", help="streaming transport (see client.py)")
    p.add_argument("--timeout", type=float, default=timeout_s, help="seconds before a request counts as failed")
    p.add_argument("--label", default="", help=label_help)
    p.add_argument("--json-out", default=None, help=json_help)


def report(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]], name_key: str,
           json_out: str | None) -> None:
    """Print the table and any errors, and keep the rows as JSON lines."""
    print(markdown_table(rows, columns))
    print_errors(rows, name_key)
    append_json_lines(json_out, rows)
