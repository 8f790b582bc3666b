"""Do long prompts stall other streams? ITL of short streams while long prompts arrive.

    python -m benchmarks.long_prompt_itl --url http://127.0.0.1:8130 --model mistral-tok \\
        --concurrency 32 --long-prompt-tokens 60000 --long-rate 0.5 --duration 20

Two phases against one running frontend, each `--warmup` seconds of load and then
`--duration` seconds measured:

1. `--concurrency` closed-loop streaming chat requests with short prompts, exactly as
   `loadgen.py` sends them (`--prompt-tokens`, `--output-tokens`, `ignore_eos`);
2. the same, while a second task sends a streaming chat request with a ~`--long-prompt-tokens`
   prompt and `max_tokens: 1` every 1/`--long-rate` seconds (open loop: whether or not the
   previous one has finished). Each long prompt is distinct (numbered first words), so no
   prefix cache shortens it, and all are built and JSON-encoded before the phase starts, so
   the generator's own loop does not stall while it runs.

A frontend that templates and tokenizes a long prompt on its event loop stops every stream for
that long; the short streams' ITL p99 and TTFT p99 in phase 2 against phase 1 show it. The
server must accept the long prompts: give the engine a large enough context (the mocker's
`--context-length`) and make it fast (`--speedup-ratio`), so the frontend is what is measured.
Besides loadgen's percentiles the table shows the short streams' ITL p99.9, max, and the
number of gaps of 100 ms or more: a stall of the loop is one long gap in each stream, so
unless stalls take over 1% of all gaps they move p99 only through the queueing they leave.
Prompt sizes are calibrated against the server's own tokenizer (see loadgen.py); with the
built-in byte-level tokenizer a long prompt costs the frontend little, so use a model
directory with a real BPE tokenizer.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from typing import Any

import msgspec

from benchmarks.client import StreamClient
from benchmarks.records import RequestRecord
from benchmarks.report import add_run_options, report, run_async
from benchmarks.stats import percentile
from benchmarks.loadgen import CHAT_PATH, Calibration, PromptFactory, calibrate, prompt_tokens_of, run_level

LONG_SEED = 1_000_003  # long prompts draw their words apart from the short ones
STALL_MS = 100.0  # a gap this long between two tokens of a stream is a stall anyone notices


class RecordingClient(StreamClient):
    """A `StreamClient` that keeps every record, for the tail beyond `summarize`'s p99: a loop
    stall is one long gap per stream, too few among all the gaps to move p99 by itself."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.records: list[RequestRecord] = []

    async def stream(self, path: str, body: dict[str, Any] | bytes) -> RequestRecord:
        record = await super().stream(path, body)
        self.records.append(record)
        return record


async def long_prompt_words(client: StreamClient, args: argparse.Namespace, calibration: Calibration) -> int:
    """Words for a prompt of `--long-prompt-tokens`: the short prompts' rate, corrected by one
    probe at the long size (tokens per word drift with length)."""
    words = max(round((args.long_prompt_tokens - calibration.template_tokens) / calibration.tokens_per_word), 1)
    measured = await prompt_tokens_of(client, args.model, PromptFactory(words, 0, 1, seed=LONG_SEED - 1).next())
    return max(round(words * (args.long_prompt_tokens - calibration.template_tokens) / (measured - calibration.template_tokens)), 1)


def long_prompt_bodies(args: argparse.Namespace, words: int, count: int) -> list[bytes]:
    """`count` encoded chat bodies, each a distinct prompt of `words` words."""
    prompts = PromptFactory(words, 0, 1, seed=LONG_SEED)
    body = {
        "model": args.model,
        "max_tokens": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return [msgspec.json.encode({**body, "messages": [{"role": "user", "content": prompts.next()}]}) for _ in range(count)]


async def send_long_prompts(client: StreamClient, bodies: list[bytes], rate: float, stop: asyncio.Event) -> list[RequestRecord]:
    """One request every 1/`rate` s until `stop` is set (or the bodies run out); returns their
    records once every one sent has ended."""
    in_flight: list[asyncio.Task[RequestRecord]] = []
    next_at = time.perf_counter()
    for body in bodies:
        in_flight.append(asyncio.create_task(client.stream(CHAT_PATH, body)))
        next_at += 1.0 / rate
        try:
            await asyncio.wait_for(stop.wait(), max(next_at - time.perf_counter(), 0.0))
            break
        except TimeoutError:
            pass
    return list(await asyncio.gather(*in_flight))


def long_summary(records: list[RequestRecord]) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    return {
        "long_sent": len(records),
        "long_errors": len(records) - len(ok),
        "long_e2e_p50_ms": percentile([r.e2e * 1000 for r in ok], 50),
        "long_e2e_max_ms": max((r.e2e * 1000 for r in ok), default=math.nan),
        "long_prompt_tokens": sum(r.prompt_tokens for r in ok) / len(ok) if ok else math.nan,
    }


def itl_tail(records: list[RequestRecord], window_start: float, window_end: float) -> dict[str, Any]:
    """ITL p99.9, max and stalls of the successful records that ended inside the window (the
    rule `loadgen.measured_records` counts by)."""
    gaps = [gap * 1000 for r in records if r.ok and window_start <= (r.end or 0) <= window_end for gap in r.itl]
    return {
        "itl_p999_ms": percentile(gaps, 99.9),
        "itl_max_ms": max(gaps, default=math.nan),
        "stalled_gaps": sum(1 for gap in gaps if gap >= STALL_MS),
    }


async def run_phase(
    client: RecordingClient, long_client: StreamClient, args: argparse.Namespace, calibration: Calibration,
    long_bodies: list[bytes] | None,
) -> dict[str, Any]:
    """One `loadgen` level of short streams, with long prompts sent alongside when given."""
    prompts = PromptFactory(calibration.words, 0, 1, seed=args.concurrency + (1 if long_bodies else 0))
    client.records.clear()
    started = time.perf_counter()  # run_level's own start is one /metrics scrape later
    stop = asyncio.Event()
    sender = asyncio.create_task(send_long_prompts(long_client, long_bodies, args.long_rate, stop)) if long_bodies else None
    row = await run_level([client], args, args.concurrency, prompts)
    stop.set()
    row.update(itl_tail(client.records, started + args.warmup, started + args.warmup + args.duration))
    if sender is None:
        row.update(phase="short streams only", long_rate=0.0)
    else:
        row.update(long_summary(await sender))
        row.update(phase=f"+ {args.long_prompt_tokens // 1000}k-token prompts", long_rate=args.long_rate)
    return row


COLUMNS = [
    ("label", "frontend", "s"),
    ("phase", "load", "s"),
    ("requests", "short req", "d"),
    ("errors", "errors", "d"),
    ("req_per_s", "req/s", ".1f"),
    ("ttft_p50_ms", "TTFT p50 ms", ".1f"),
    ("ttft_p99_ms", "TTFT p99 ms", ".1f"),
    ("itl_p50_ms", "ITL p50 ms", ".2f"),
    ("itl_p99_ms", "ITL p99 ms", ".2f"),
    ("itl_p999_ms", "ITL p99.9 ms", ".1f"),
    ("itl_max_ms", "ITL max ms", ".0f"),
    ("stalled_gaps", f"gaps ≥{STALL_MS:.0f} ms", "d"),
    ("long_sent", "long sent", "d"),
    ("long_errors", "long err", "d"),
    ("long_prompt_tokens", "long prompt tok", ".0f"),
    ("long_e2e_p50_ms", "long E2E p50 ms", ".0f"),
    ("frontend_cpu_util", "frontend CPU", ".0%"),
    ("loadgen_cpu_util", "loadgen CPU", ".0%"),
]


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    client = RecordingClient(args.url, args.concurrency, args.client, args.timeout)
    # Its own connections: a long prompt never waits for a short stream's slot, nor takes one.
    long_client = StreamClient(args.url, 16, args.client, args.timeout)
    try:
        calibration = await calibrate(client, args)
        print(calibration.describe(), flush=True)
        count = math.ceil(args.long_rate * (args.warmup + args.duration)) + 2
        long_bodies = long_prompt_bodies(args, await long_prompt_words(client, args, calibration), count)
        rows = []
        for bodies in (None, long_bodies):
            row = await run_phase(client, long_client, args, calibration, bodies)
            row.update(label=args.label, benchmark="long_prompt_itl", url=args.url, model=args.model,
                       concurrency=args.concurrency, long_prompt_target_tokens=args.long_prompt_tokens,
                       time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            rows.append(row)
            print(f"{row['phase']}: {row['requests']} short requests, ITL p99 {row['itl_p99_ms']:.2f} ms", flush=True)
        return rows
    finally:
        await client.aclose()
        await long_client.aclose()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.long_prompt_itl", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the frontend's base URL")
    p.add_argument("--model", default="mocker")
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop short streams")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds a phase")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load a phase before measuring")
    p.add_argument("--prompt-tokens", type=int, default=256, help="short prompts")
    p.add_argument("--output-tokens", type=int, default=64, help="short streams")
    p.add_argument("--long-prompt-tokens", type=int, default=60_000)
    p.add_argument("--long-rate", type=float, default=0.5, help="long prompts a second in phase 2")
    add_run_options(
        p, timeout_s=120.0, label_help="names the frontend under test in the table and JSON rows",
        json_help="append one JSON line a phase to this file",
    )
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.long_rate <= 0:
        p.error("--concurrency and --long-rate must be positive")
    # What loadgen's calibration and levels read: no shared prefixes, single turns, duration mode.
    args.shared_prefix_tokens, args.prefix_groups, args.requests = 0, 1, None
    args.turns, args.turn_tokens = 1, 0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = run_async(main_async(args))
    print()
    report(rows, COLUMNS, "phase", args.json_out)


if __name__ == "__main__":
    main()
