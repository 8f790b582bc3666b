"""Closed-loop load generator for OpenAI streaming chat.

    python -m benchmarks.loadgen --url http://127.0.0.1:8000 --model mocker \
        --concurrency 8,32,128 --duration 20 --prompt-tokens 512 --output-tokens 64

For each concurrency level, C clients each send their next request as soon as the previous
one ends, for `--duration` seconds (after `--warmup` seconds not counted). Prompts are
calibrated once against the server's own tokenizer (a 1-token request reports
`usage.prompt_tokens`) to land near `--prompt-tokens`. Reported per level: requests/s, output
tokens/s, TTFT, ITL and end-to-end latency percentiles, errors, the frontend's CPU-seconds per
1000 requests (from its /metrics `process_cpu_seconds_total`) and the generator's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

from benchmarks.common import (
    markdown_table,
    process_cpu_seconds,
    RawHttpConnection,
    scrape_cpu_seconds,
    stream_request_raw,
    summarize,
    write_json,
)

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu river mountain forest ocean"
).split()


def make_words(n: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(n, 1)))


async def _prompt_tokens(conn: RawHttpConnection, model: str, text: str) -> int:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 1}).encode()
    lines = [line async for _, line in conn.post_lines("/v1/chat/completions", body)]
    return json.loads(b"".join(l for l in lines if l))["usage"]["prompt_tokens"]


async def calibrate(url: str, model: str, probe_words: int = 200) -> tuple[float, int]:
    """Prompt tokens per word for this server's tokenizer and chat template, and the
    template's own overhead in tokens."""
    conn = RawHttpConnection(*host_port(url))
    full = await _prompt_tokens(conn, model, make_words(probe_words, random.Random(0)))
    overhead = await _prompt_tokens(conn, model, "")
    return (full - overhead) / probe_words, overhead


class PromptFactory:
    def __init__(self, words_per_prompt: int, shared_prefix_words: int, groups: int, seed: int):
        self.rng = random.Random(seed)
        self.words = words_per_prompt
        self.prefixes = [make_words(shared_prefix_words, random.Random(1000 + g)) for g in range(groups)] if shared_prefix_words else []
        self.prefix_words = shared_prefix_words

    def next(self) -> str:
        if not self.prefixes:
            return make_words(self.words, self.rng)
        prefix = self.rng.choice(self.prefixes)
        return prefix + " " + make_words(self.words - self.prefix_words, self.rng)


async def run_level(args, concurrency: int, prompts: PromptFactory) -> dict:
    records = []
    stop_at = time.perf_counter() + args.warmup + args.duration
    count_from = time.perf_counter() + args.warmup
    sent = 0

    async def worker():
        nonlocal sent
        conn = RawHttpConnection(*host_port(args.url))
        while time.perf_counter() < stop_at and (args.requests is None or sent < args.requests):
            sent += 1
            body = {
                "model": args.model,
                "messages": [{"role": "user", "content": prompts.next()}],
                "max_tokens": args.output_tokens,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            record = await stream_request_raw(conn, "/v1/chat/completions", body)
            if record.start >= count_from:
                records.append(record)

    await asyncio.sleep(0)
    cpu_before = await scrape_cpu_seconds(args.url)
    own_before = process_cpu_seconds()
    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    wall = time.perf_counter() - (started + args.warmup)  # the measured window
    cpu_after = await scrape_cpu_seconds(args.url)
    row = summarize(records, wall)
    row["concurrency"] = concurrency
    total_requests = sent or 1
    if cpu_before is not None and cpu_after is not None:
        row["frontend_cpu_s_per_1k"] = (cpu_after - cpu_before) / total_requests * 1000
    row["loadgen_cpu_s_per_1k"] = (process_cpu_seconds() - own_before) / total_requests * 1000
    return row


COLUMNS = [
    ("concurrency", "conc", "d"),
    ("requests", "requests", "d"),
    ("errors", "errors", "d"),
    ("req_per_s", "req/s", ".1f"),
    ("output_tok_per_s", "out tok/s", ".0f"),
    ("ttft_p50_ms", "TTFT p50 ms", ".1f"),
    ("ttft_p99_ms", "TTFT p99 ms", ".1f"),
    ("itl_p50_ms", "ITL p50 ms", ".2f"),
    ("itl_p99_ms", "ITL p99 ms", ".2f"),
    ("e2e_p50_ms", "E2E p50 ms", ".0f"),
    ("e2e_p99_ms", "E2E p99 ms", ".0f"),
    ("mean_prompt_tokens", "prompt tok", ".0f"),
    ("frontend_cpu_s_per_1k", "frontend CPU s/1k req", ".2f"),
    ("loadgen_cpu_s_per_1k", "loadgen CPU s/1k req", ".2f"),
]


async def main_async(args) -> list[dict]:
    per_word, overhead = await calibrate(args.url, args.model)
    words = max(1, round((args.prompt_tokens - overhead) / per_word))
    prefix_words = round(args.shared_prefix_tokens / per_word) if args.shared_prefix_tokens else 0
    print(f"calibrated: {per_word:.2f} tokens/word, template overhead {overhead} tokens -> {words} words a prompt", flush=True)
    rows = []
    for concurrency in args.concurrency:
        prompts = PromptFactory(words, prefix_words, args.prefix_groups, seed=concurrency)
        row = await run_level(args, concurrency, prompts)
        row["label"] = args.label
        rows.append(row)
        print(f"concurrency {concurrency}: {row['requests']} requests, {row['req_per_s']:.1f} req/s, "
              f"TTFT p50 {row['ttft_p50_ms']:.1f} ms, errors {row['errors']}", flush=True)
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="mocker")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32, 128])
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds per level not counted")
    p.add_argument("--requests", type=int, default=None, help="stop each level after this many requests instead")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--shared-prefix-tokens", type=int, default=0, help="leading tokens shared within a prefix group")
    p.add_argument("--prefix-groups", type=int, default=4)
    p.add_argument("--label", default="")
    p.add_argument("--json-out", default=None, help="append one JSON line per level here")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        import uvloop

        rows = uvloop.run(main_async(args))
    except ImportError:
        rows = asyncio.run(main_async(args))
    print()
    print(markdown_table(rows, COLUMNS))
    write_json(args.json_out, rows)


if __name__ == "__main__":
    main()
