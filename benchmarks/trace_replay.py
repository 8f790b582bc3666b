"""Replay a request trace with prefix-sharing block ids against a running frontend (open loop).

    python -m benchmarks.trace_replay --url http://127.0.0.1:8000 \\
        --trace ../shared/data/traces/conversation_trace.jsonl \\
        --max-requests 600 --time-scale 4 --token-scale 0.0625 --label kv

Each trace line has an arrival `timestamp` (ms), `input_length`, `output_length` and
`hash_ids`, one per 512-token block, equal ids meaning equal content. Each hash id becomes a
fixed run of token ids drawn from [--token-lo, --token-hi) by an RNG seeded with the id, so
requests share exactly the prefixes the trace says they share; the last block is cut so the
prompt has `input_length` tokens. `--token-scale F` multiplies the block size and the input and
output lengths by F (the prefix structure stays, the cost shrinks); `--time-scale S` divides
arrival times by S. Each request goes out at its scheduled time as a token-id prompt to
streaming `/v1/completions`, whether or not earlier ones have finished.

Reported: TTFT, ITL and end-to-end percentiles, throughput, errors, how late requests went
out, the prefix hit rate the engines achieved (cached prompt tokens / prompt tokens, from the
`usage` of each response) and, for comparison, the hit rate an infinite prefix cache would
reach on the same (scaled) requests.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import time
from array import array
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from benchmarks.client import StreamClient
from benchmarks.records import RequestRecord
from benchmarks.report import add_run_options, report, run_async
from benchmarks.stats import percentile, summarize

COMPLETIONS_PATH = "/v1/completions"
TRACE_BLOCK_TOKENS = 512  # the block size the trace's hash ids were computed over


# ---------------------------------------------------------------------------------------------
# the trace and its prompts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceRequest:
    index: int  # line number in the trace
    at: float  # seconds after the first replayed request
    input_tokens: int  # scaled
    output_tokens: int  # scaled and capped
    hash_ids: tuple[int, ...]


def load_trace(path: Path, start_index: int, max_requests: int | None) -> list[dict[str, Any]]:
    rows = []
    with path.open() as f:
        for index, line in enumerate(f):
            if index < start_index or not line.strip():
                continue
            if max_requests is not None and len(rows) >= max_requests:
                break
            row = json.loads(line)
            row["index"] = index
            rows.append(row)
    return rows


def scaled_requests(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[TraceRequest]:
    if not rows:
        return []
    t0 = rows[0]["timestamp"]
    requests = []
    for row in rows:
        output = max(1, round(row["output_length"] * args.token_scale))
        if args.max_output_tokens is not None:
            output = min(output, args.max_output_tokens)
        requests.append(TraceRequest(
            index=row["index"],
            at=(row["timestamp"] - t0) / 1000.0 / args.time_scale,
            input_tokens=max(1, round(row["input_length"] * args.token_scale)),
            output_tokens=output,
            hash_ids=tuple(row["hash_ids"]),
        ))
    return requests


class PromptBuilder:
    """Token-id prompts in which each trace block id is always the same run of tokens.

    The runs are seeded with `salt` (the trace's file name) as well as the id: every trace
    numbers its blocks from 0, and two traces replayed against one server must not appear to
    share prefixes.
    """

    def __init__(self, block_tokens: int, token_lo: int, token_hi: int, salt: str = ""):
        self.block_tokens = block_tokens
        self._lo, self._span = token_lo, token_hi - token_lo
        self._salt = salt
        # Bounded: a full trace at scale 1 holds ~10^5 distinct blocks of 512 tokens.
        self._block = functools.lru_cache(maxsize=65536)(self._make_block)

    def _make_block(self, key: int | str) -> tuple[int, ...]:
        raw = array("I", random.Random(f"{self._salt}:{key}").randbytes(4 * self.block_tokens))
        return tuple(self._lo + value % self._span for value in raw)

    def prompt(self, request: TraceRequest) -> list[int]:
        tokens: list[int] = []
        for hash_id in request.hash_ids:
            if len(tokens) >= request.input_tokens:
                break
            tokens.extend(self._block(hash_id))
        # A trace line always has enough blocks; pad with tokens of its own in case one doesn't.
        pad = 0
        while len(tokens) < request.input_tokens:
            tokens.extend(self._make_block(f"pad-{request.index}-{pad}"))
            pad += 1
        del tokens[request.input_tokens:]
        return tokens


def ideal_hit_rate(requests: list[TraceRequest], block_tokens: int) -> float:
    """Prompt tokens an infinite prefix cache would serve: for each request, the tokens of its
    leading blocks whose ids earlier requests already sent (a prefix cache reuses a block only
    if every block before it is reused too), over all prompt tokens."""
    seen: set[int] = set()
    hit = total = 0
    for request in requests:
        total += request.input_tokens
        for position, hash_id in enumerate(request.hash_ids):
            in_prompt = min(block_tokens, request.input_tokens - position * block_tokens)
            if in_prompt <= 0 or hash_id not in seen:
                break
            hit += in_prompt
        seen.update(request.hash_ids)
    return hit / total if total else 0.0


# ---------------------------------------------------------------------------------------------
# the replay
# ---------------------------------------------------------------------------------------------


def completion_body(args: argparse.Namespace, request: TraceRequest, prompt: list[int]) -> dict[str, Any]:
    return {
        "model": args.model,
        "prompt": prompt,
        "max_tokens": request.output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }


async def replay(args: argparse.Namespace, requests: list[TraceRequest], prompts: PromptBuilder) -> dict[str, Any]:
    """Send each request at its time; summarize over the span from the first send to the last
    response. A request waiting for a --concurrency-limit slot goes out late: the lag is
    reported, and TTFT counts from the actual send."""
    client = StreamClient(args.url, args.concurrency_limit, args.client, args.timeout)
    slots = asyncio.Semaphore(args.concurrency_limit)
    records: list[RequestRecord] = []
    send_lag: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def send(request: TraceRequest, due: float) -> None:
        async with slots:
            body = completion_body(args, request, prompts.prompt(request))
            send_lag.append(time.perf_counter() - due)
            records.append(await client.stream(COMPLETIONS_PATH, body))

    try:
        start = time.perf_counter()
        for request in requests:
            due = start + request.at
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(request, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)
        wall = max((r.end or r.start for r in records), default=start) - start
    finally:
        await client.aclose()
    row = summarize(records, wall)
    row["send_lag_p99_ms"] = percentile([lag * 1000 for lag in send_lag], 99)
    row["send_lag_max_ms"] = max(send_lag, default=0.0) * 1000
    return row


COLUMNS = [
    ("label", "label", "s"),
    ("requests", "requests", "d"),
    ("errors", "errors", "d"),
    ("req_per_s", "req/s", ".2f"),
    ("output_tok_per_s", "out tok/s", ".0f"),
    ("ttft_p50_ms", "TTFT p50 ms", ".1f"),
    ("ttft_p99_ms", "TTFT p99 ms", ".1f"),
    ("itl_p50_ms", "ITL p50 ms", ".2f"),
    ("itl_p99_ms", "ITL p99 ms", ".2f"),
    ("tokens_per_chunk", "tok/chunk", ".1f"),
    ("e2e_p50_ms", "E2E p50 ms", ".0f"),
    ("e2e_p99_ms", "E2E p99 ms", ".0f"),
    ("mean_prompt_tokens", "prompt tok", ".0f"),
    ("send_lag_p99_ms", "send lag p99 ms", ".1f"),
    ("prefix_hit_rate", "prefix hit rate", ".1%"),
    ("ideal_hit_rate", "infinite-cache hit rate", ".1%"),
]


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def describe(requests: list[TraceRequest], args: argparse.Namespace, block_tokens: int) -> str:
    span = requests[-1].at if requests else 0.0
    mean_in = sum(r.input_tokens for r in requests) / max(len(requests), 1)
    mean_out = sum(r.output_tokens for r in requests) / max(len(requests), 1)
    first = requests[0].index if requests else args.start_index
    return (
        f"{args.trace.name}: {len(requests)} requests from line {first}, arriving over {span:.1f} s "
        f"(trace times / {args.time_scale:g}); token scale {args.token_scale:g}: the trace's "
        f"{TRACE_BLOCK_TOKENS}-token blocks become {block_tokens}-token blocks, mean prompt "
        f"{mean_in:.0f} tokens, mean output {mean_out:.0f} tokens"
    )


def positive_number(text: str) -> float:
    """A positive number, also written as a fraction ("1/16")."""
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.trace_replay", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the frontend's base URL")
    p.add_argument("--model", default="mocker")
    p.add_argument("--trace", type=Path, required=True, help="a JSONL trace (timestamp, input_length, output_length, hash_ids)")
    p.add_argument("--start-index", type=int, default=0, help="first trace line to replay (0-based)")
    p.add_argument("--max-requests", type=int, default=None, help="replay at most this many lines")
    p.add_argument("--time-scale", type=positive_number, default=1.0, help="divide arrival times by this (2 = twice as fast)")
    p.add_argument("--token-scale", type=positive_number, default=1.0,
                   help="multiply block size, input and output lengths by this (1/16 = 32-token blocks)")
    p.add_argument("--max-output-tokens", type=int, default=None, help="cap each request's (scaled) output")
    p.add_argument("--concurrency-limit", type=int, default=512, help="most requests in flight at once")
    p.add_argument("--token-lo", type=int, default=3, help="lowest prompt token id (inclusive)")
    p.add_argument("--token-hi", type=int, default=250, help="highest prompt token id (exclusive)")
    add_run_options(
        p, timeout_s=600.0, label_help="names the row, e.g. the router under test",
        json_help="append the result as one JSON line to this file",
    )
    args = p.parse_args(argv)
    if not 0 <= args.token_lo < args.token_hi:
        p.error("need 0 <= --token-lo < --token-hi")
    if args.concurrency_limit < 1:
        p.error("--concurrency-limit must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    block_tokens = max(1, round(TRACE_BLOCK_TOKENS * args.token_scale))
    requests = scaled_requests(load_trace(args.trace, args.start_index, args.max_requests), args)
    if not requests:
        raise SystemExit(f"no requests in {args.trace} from line {args.start_index}")
    print(describe(requests, args, block_tokens), flush=True)
    row = run_async(replay(args, requests, PromptBuilder(block_tokens, args.token_lo, args.token_hi, salt=args.trace.name)))
    row.update({
        "benchmark": "trace_replay",
        "label": args.label,
        "trace": args.trace.name,
        "start_index": requests[0].index,
        "time_scale": args.time_scale,
        "token_scale": args.token_scale,
        "block_tokens": block_tokens,
        "max_output_tokens": args.max_output_tokens,
        "concurrency_limit": args.concurrency_limit,
        "ideal_hit_rate": ideal_hit_rate(requests, block_tokens),
        "url": args.url,
        "model": args.model,
        "client": args.client,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    report([row], COLUMNS, "label", args.json_out)


if __name__ == "__main__":
    main()
