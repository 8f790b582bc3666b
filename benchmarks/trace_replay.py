"""Replay a production request trace (prefix-sharing block ids) against a running frontend.

    python -m benchmarks.trace_replay --url http://127.0.0.1:8000 --trace ../shared/data/traces/conversation_trace.jsonl \
        --max-requests 600 --time-scale 4 --token-scale 0.0625 --label kv

Each trace line has an arrival `timestamp` (ms), `input_length`, `output_length` and
`hash_ids`, one per 512-token block, equal ids meaning equal content. Each hash id becomes a
fixed run of token ids (from an RNG seeded by the id), so requests share exactly the prefixes
the trace says they share; the last block is cut so the prompt has `input_length` tokens.
`--token-scale F` multiplies the block size, input and output lengths by F (prefix structure
kept, cost cut); `--time-scale S` divides arrival times by S. Requests are sent at their
scheduled times (open loop) as token-id prompts to streaming `/v1/completions`.

Reported: TTFT, ITL and end-to-end percentiles, throughput, errors, the prefix hit rate the
engines achieved (cached prompt tokens / prompt tokens, from `usage`), and the hit rate an
infinite cache would allow (from the trace's own reuse) for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass

from benchmarks.common import RawHttpConnection, host_port, markdown_table, stream_request_raw, summarize, write_json

TRACE_BLOCK = 512


@dataclass
class TraceRequest:
    at: float  # seconds from the start
    prompt: list[int]
    max_tokens: int
    blocks: list[int]


def load_trace(path: str, start: int, count: int | None) -> list[dict]:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if i < start:
                continue
            if count is not None and len(rows) >= count:
                break
            rows.append(json.loads(line))
    return rows


class BlockTokens:
    """The fixed token run of each hash id."""

    def __init__(self, block_len: int, lo: int, hi: int):
        self.block_len, self.lo, self.hi = block_len, lo, hi
        self._cache: dict[int, list[int]] = {}

    def __call__(self, hash_id: int) -> list[int]:
        tokens = self._cache.get(hash_id)
        if tokens is None:
            rng = random.Random(hash_id * 7919 + 17)
            tokens = self._cache[hash_id] = [rng.randrange(self.lo, self.hi) for _ in range(self.block_len)]
        return tokens


def build_requests(rows: list[dict], args) -> list[TraceRequest]:
    block_len = max(1, round(TRACE_BLOCK * args.token_scale))
    tokens_of = BlockTokens(block_len, args.token_lo, args.token_hi)
    t0 = rows[0]["timestamp"]
    requests = []
    for row in rows:
        input_len = max(1, round(row["input_length"] * args.token_scale))
        prompt: list[int] = []
        for hash_id in row["hash_ids"]:
            prompt += tokens_of(hash_id)
        prompt = prompt[:input_len] if len(prompt) >= input_len else prompt + tokens_of(-1 - len(requests))[: input_len - len(prompt)]
        output = max(1, round(row["output_length"] * args.token_scale))
        if args.max_output_tokens:
            output = min(output, args.max_output_tokens)
        requests.append(TraceRequest((row["timestamp"] - t0) / 1000.0 / args.time_scale, prompt, output, row["hash_ids"]))
    return requests


def ideal_hit_rate(requests: list[TraceRequest], block_len: int) -> float:
    """Prompt tokens in blocks seen before (by any request): the most an infinite cache reuses."""
    seen: set[int] = set()
    hit = total = 0
    for req in requests:
        total += len(req.prompt)
        for i, hash_id in enumerate(req.blocks):
            if hash_id in seen and (i + 1) * block_len <= len(req.prompt):
                hit += block_len
            seen.add(hash_id)
    return hit / total if total else 0.0


async def replay(args, requests: list[TraceRequest]) -> dict:
    semaphore = asyncio.Semaphore(args.concurrency_limit)
    idle: list[RawHttpConnection] = []
    records = []
    start = time.perf_counter()

    async def send(req: TraceRequest) -> None:
        delay = start + req.at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with semaphore:
            conn = idle.pop() if idle else RawHttpConnection(*host_port(args.url))
            body = {
                "model": args.model, "prompt": req.prompt, "max_tokens": req.max_tokens, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True},
            }
            records.append(await stream_request_raw(conn, "/v1/completions", body))
            idle.append(conn)

    await asyncio.gather(*[send(r) for r in requests])
    return summarize(records, time.perf_counter() - start)


COLUMNS = [
    ("label", "router", "s"),
    ("requests", "requests", "d"),
    ("errors", "errors", "d"),
    ("req_per_s", "req/s", ".2f"),
    ("output_tok_per_s", "out tok/s", ".0f"),
    ("ttft_p50_ms", "TTFT p50 ms", ".1f"),
    ("ttft_p99_ms", "TTFT p99 ms", ".1f"),
    ("itl_p50_ms", "ITL p50 ms", ".1f"),
    ("itl_p99_ms", "ITL p99 ms", ".1f"),
    ("e2e_p50_ms", "E2E p50 ms", ".0f"),
    ("e2e_p99_ms", "E2E p99 ms", ".0f"),
    ("prefix_hit_rate", "prefix hit rate", ".1%"),
    ("ideal_hit_rate", "infinite-cache hit rate", ".1%"),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="mocker")
    p.add_argument("--trace", required=True)
    p.add_argument("--start-index", type=int, default=0)
    p.add_argument("--max-requests", type=int, default=None)
    p.add_argument("--time-scale", type=float, default=1.0, help="divide arrival times by this")
    p.add_argument("--token-scale", type=float, default=1.0, help="multiply block size, input and output lengths by this")
    p.add_argument("--max-output-tokens", type=int, default=None)
    p.add_argument("--concurrency-limit", type=int, default=512)
    p.add_argument("--token-lo", type=int, default=3, help="lowest token id used (inclusive)")
    p.add_argument("--token-hi", type=int, default=250, help="highest token id used (exclusive)")
    p.add_argument("--label", default="")
    p.add_argument("--json-out", default=None)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    requests = build_requests(load_trace(args.trace, args.start_index, args.max_requests), args)
    block_len = max(1, round(TRACE_BLOCK * args.token_scale))
    span = requests[-1].at if requests else 0.0
    mean_in = sum(len(r.prompt) for r in requests) / max(len(requests), 1)
    print(f"{len(requests)} requests over {span:.1f} s (time scale {args.time_scale}), token scale {args.token_scale}: "
          f"{block_len}-token blocks, mean prompt {mean_in:.0f} tokens", flush=True)
    try:
        import uvloop

        row = uvloop.run(replay(args, requests))
    except ImportError:
        row = asyncio.run(replay(args, requests))
    row["label"] = args.label
    row["ideal_hit_rate"] = ideal_hit_rate(requests, block_len)
    row["trace"] = args.trace.rsplit("/", 1)[-1]
    print(markdown_table([row], COLUMNS))
    write_json(args.json_out, [row])


if __name__ == "__main__":
    main()
