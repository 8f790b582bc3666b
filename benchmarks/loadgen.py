"""Closed- or open-loop load generator for OpenAI streaming chat completions.

    python -m benchmarks.loadgen --url http://127.0.0.1:8000 --model mocker \\
        --concurrency 8,32,128 --duration 20 --prompt-tokens 512 --output-tokens 64
    python -m benchmarks.loadgen ... --rate 10,20 --arrivals poisson --prompt-tokens 16000

For each concurrency level C, C workers each send their next request as soon as the previous
one ends: first for `--warmup` seconds (not counted), then for `--duration` seconds (or
`--requests N` requests). Requests stream (`max_tokens` = `--output-tokens`, `ignore_eos`,
usage in the last chunk). Prompts are made of words, calibrated once against the server's own
tokenizer and chat template (`usage.prompt_tokens` of `max_tokens=1` requests) so that they
come out at about `--prompt-tokens`; the achieved mean is reported. With
`--shared-prefix-tokens N --prefix-groups G` each prompt starts with one of G fixed N-token
prefixes. With `--turns T` each stream holds a chat of T turns: every request resends the
conversation so far (earlier user messages and a stand-in assistant reply of
`--output-tokens` words each) plus a new user message of `--turn-tokens`, so each turn's
prompt extends the previous one's; then the stream starts a new chat. `--vocabulary N` draws
the words from N made-up ones by Zipf's law instead of 32 common ones (see `Vocabulary`).

With `--rate R1,R2` the levels are open loop instead: requests start at R a second (Poisson
arrivals, or `--arrivals fixed`) whether or not earlier ones have ended, so a server that
falls behind shows it as queueing (TTFT) and as an achieved rate below the offered one.

Reported per level: requests/s, output tokens/s, TTFT, TPOT (time per output token, one value
a request), ITL and end-to-end percentiles, errors,
the frontend's CPU-seconds per 1000 requests (from `process_cpu_seconds_total` on its
/metrics, scraped before and after the level), its garbage collections (all generations per
1000 requests, and the full ones in the level, from `python_gc_collections_total`; each one
stops the server's event loop) and the generator's own CPU, so a reader can tell
whether the generator kept up. `--cpu-of REGEX` adds the CPU-ms per request of every process
whose command line matches (benchmarks/proc_cpu.py), which works for servers without that
metric (NVIDIA Dynamo's frontend) and for frontends of several processes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks.client import StreamClient
from benchmarks.proc_cpu import cpu_used, matching_cpu
from benchmarks.prometheus import gc_collections, process_cpu_seconds, prometheus_value
from benchmarks.records import RequestRecord
from benchmarks.report import add_run_options, report, run_async
from benchmarks.stats import summarize

CHAT_PATH = "/v1/chat/completions"

# Equal-length common words: each is one token for BPE vocabularies and five bytes (plus a
# space) for byte-level ones, so a prompt's token count barely varies with the words drawn.
WORDS = (
    "apple bread chair dance eagle field grape horse image judge knife lemon mouse north ocean piano "
    "queen river stone table uncle voice water youth zebra plant cloud light sound green black white"
).split()
MARKER_WORDS = 4  # leading words that number the request, so no two prompts share a first block
# A worker whose request failed at the connection level (server down, connection refused) waits
# this long before its next one, so a dead server is not hammered at thousands of requests/s.
NO_RESPONSE_PAUSE_S = 0.1


# ---------------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------------


class Vocabulary:
    """The words prompts are drawn from: `WORDS` evenly (size 0), or `size` made-up words of 2-10
    letters drawn by Zipf's law (rank r with weight 1/r), as words of real text are, so that a
    frontend's per-word token cache meets about the hit rate real prompts give it."""

    def __init__(self, size: int = 0):
        if size < 0:
            raise ValueError(f"a vocabulary size must not be negative, got {size}")
        rng = random.Random("vocabulary")
        letters = "abcdefghijklmnopqrstuvwxyz"
        self.words = list(WORDS) if size == 0 else [
            "".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(size)
        ]
        self._cum_weights = None if size == 0 else list(itertools.accumulate(1 / rank for rank in range(1, size + 1)))

    def draw(self, count: int, rng: random.Random) -> list[str]:
        return rng.choices(self.words, cum_weights=self._cum_weights, k=max(count, 0))


_vocabulary = Vocabulary()


def use_vocabulary(size: int) -> None:
    """Draw this run's prompt words from `Vocabulary(size)` (`--vocabulary`)."""
    global _vocabulary
    _vocabulary = Vocabulary(size)


def random_words(count: int, rng: random.Random) -> list[str]:
    return _vocabulary.draw(count, rng)


def request_marker(sequence: int) -> list[str]:
    """`sequence` written in base len(WORDS): distinct for the first 32**4 (1M) requests."""
    digits = []
    for _ in range(MARKER_WORDS):
        sequence, digit = divmod(sequence, len(WORDS))
        digits.append(WORDS[digit])
    return digits


class PromptFactory:
    """Prompts of a fixed word count: [shared prefix] + request marker + random words."""

    def __init__(self, words: int, prefix_words: int, prefix_groups: int, seed: int, tokens_per_word: float = 1.0):
        self.tokens_per_word = tokens_per_word
        self.words = max(words, MARKER_WORDS + prefix_words + 1)
        self.prefix_words = prefix_words
        self.prefixes = [random_words(prefix_words, random.Random(f"prefix-{g}")) for g in range(prefix_groups)]
        self._rng = random.Random(seed)
        self._sequence = 0

    def next(self) -> str:
        self._sequence += 1
        prefix = self._rng.choice(self.prefixes) if self.prefix_words else []
        tail = random_words(self.words - len(prefix) - MARKER_WORDS, self._rng)
        return " ".join([*prefix, *request_marker(self._sequence), *tail])


async def prompt_tokens_of(client: StreamClient, model: str, text: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 1}
    return int((await client.post_json(CHAT_PATH, body))["usage"]["prompt_tokens"])


@dataclass
class Calibration:
    tokens_per_word: float
    template_tokens: int  # what the chat template adds around the user's text
    words: int  # words a prompt needs for the target
    prefix_words: int

    def describe(self) -> str:
        return (f"calibrated: {self.tokens_per_word:.2f} tokens/word, chat template {self.template_tokens} tokens "
                f"-> {self.words} words a prompt ({self.prefix_words} of them a shared prefix)")


async def calibrate(client: StreamClient, args: argparse.Namespace) -> Calibration:
    """Fit tokens = template + per_word * words from two probes, then correct the word count
    with a third probe at the chosen size (tokenizers are not exactly linear)."""
    small, large = 8, 256
    rng = random.Random(0)
    tokens_small = await prompt_tokens_of(client, args.model, " ".join(random_words(small, rng)))
    tokens_large = await prompt_tokens_of(client, args.model, " ".join(random_words(large, rng)))
    per_word = max((tokens_large - tokens_small) / (large - small), 1e-6)
    template = max(round(tokens_small - per_word * small), 0)
    words = max(round((args.prompt_tokens - template) / per_word), 1)
    prefix_words = round(args.shared_prefix_tokens / per_word) if args.shared_prefix_tokens else 0
    for _ in range(2 if prefix_words else 0):
        # The prefixes are fixed word lists whose tokens per word differ from the random
        # words': size them on their own, so the unique rest keeps its share.
        prefix = " ".join(PromptFactory(prefix_words, prefix_words, 1, seed=0).prefixes[0])
        prefix_tokens = await prompt_tokens_of(client, args.model, prefix) - template
        prefix_words = max(round(prefix_words * args.shared_prefix_tokens / max(prefix_tokens, 1)), 1)
    words = max(words, prefix_words + MARKER_WORDS + 1)
    for _ in range(3 if prefix_words else 1):
        probe = PromptFactory(words, prefix_words, max(args.prefix_groups, 1), seed=0)
        measured = await prompt_tokens_of(client, args.model, probe.next())
        words = max(words + round((args.prompt_tokens - measured) / per_word), prefix_words + MARKER_WORDS + 1)
    return Calibration(per_word, template, words, prefix_words)


# ---------------------------------------------------------------------------------------------
# one concurrency level
# ---------------------------------------------------------------------------------------------


@dataclass
class Level:
    """The time window of one concurrency level and what it has started."""

    warm_until: float
    stop_at: float | None  # duration mode: no request starts after this
    max_requests: int | None  # request mode: how many requests to measure after warm-up
    measured_starts: int = 0

    def next_phase(self) -> str | None:
        """"warmup" or "measured" for the request about to start; None once the level is over."""
        now = time.perf_counter()
        if now < self.warm_until:
            return "warmup"
        if self.stop_at is not None:
            return "measured" if now < self.stop_at else None
        if self.measured_starts >= (self.max_requests or 0):
            return None
        self.measured_starts += 1
        return "measured"


def chat_body(args: argparse.Namespace, prompt: str | list[dict[str, str]]) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return {
        "model": args.model,
        "messages": messages,
        "max_tokens": args.output_tokens,
        "ignore_eos": True,
        "stream": True,
        # continuous_usage_stats (vLLM) puts token counts on every chunk; others ignore it.
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }


class Conversation:
    """One stream's multi-turn chat: each turn's messages extend the previous turn's.

    The assistant turns are stand-ins (`--output-tokens` words drawn like the prompts), not
    what the server answered: the history every later turn sends is then known in advance and
    equal across routers, and the reuse measured is that of the conversation's prompts (an
    engine that also caches its generated tokens would find none of its own output again).
    """

    def __init__(self, args: argparse.Namespace, prompts: PromptFactory) -> None:
        self._args, self._prompts = args, prompts
        self._rng = random.Random(f"chat-{id(self)}")
        self._messages: list[dict[str, str]] = []
        self._turn = 0
        self._turn_words = max(round(args.turn_tokens / prompts.tokens_per_word), 1)

    def next(self) -> list[dict[str, str]]:
        if self._turn == self._args.turns:
            self._messages, self._turn = [], 0
        if self._turn == 0:
            user = self._prompts.next()
        else:
            reply = " ".join(random_words(self._args.output_tokens, self._rng))
            self._messages.append({"role": "assistant", "content": reply})
            user = " ".join(random_words(self._turn_words, self._rng))
        self._messages.append({"role": "user", "content": user})
        self._turn += 1
        return list(self._messages)


def measured_records(records: list[tuple[str, RequestRecord]], level: Level) -> tuple[list[RequestRecord], float]:
    """The records that count, and the window they count over.

    Duration mode counts the requests that ended inside [end of warm-up, stop]: a steady
    window, free of the ramp-up and of the drain at the end. Request mode counts the N requests
    started after warm-up, from the first one's start to the last one's end.
    """
    if level.stop_at is not None:
        window = level.stop_at - level.warm_until
        ended = [r for _, r in records if r.end is not None and level.warm_until <= r.end <= level.stop_at]
        return ended, window
    measured = [r for phase, r in records if phase == "measured"]
    if not measured:
        return [], 0.0
    return measured, max(r.end or r.start for r in measured) - min(r.start for r in measured)


class LevelCpu:
    """CPU sampled around one level: the first frontend's `/metrics` (its own process), the
    processes `--cpu-of` matches (from /proc: any server, several processes summed), and this
    generator's own, so a reader can tell whether it kept up."""

    def __init__(self, client: StreamClient, cpu_of: re.Pattern[str] | None):
        self._client, self._cpu_of = client, cpu_of

    async def start(self) -> None:
        scrape = await self._client.metrics()
        self._frontend = prometheus_value(scrape, "process_cpu_seconds_total")
        self._gc = gc_collections(scrape)
        self._procs = matching_cpu(self._cpu_of) if self._cpu_of is not None else {}
        self._own = process_cpu_seconds()
        self._started = time.perf_counter()

    async def finish(self, row: dict[str, Any], requests_sent: int) -> None:
        """Add the CPU columns to `row`. CPU covers the whole level (warm-up and drain
        included), so it is divided by every request sent."""
        wall = time.perf_counter() - self._started
        own = process_cpu_seconds() - self._own
        procs = matching_cpu(self._cpu_of) if self._cpu_of is not None else {}
        scrape = await self._client.metrics()
        frontend = prometheus_value(scrape, "process_cpu_seconds_total")
        gc = gc_collections(scrape)
        per_1k = 1000 / max(requests_sent, 1)
        if self._frontend is not None and frontend is not None:
            row["frontend_cpu_s_per_1k"] = (frontend - self._frontend) * per_1k
            row["frontend_cpu_util"] = (frontend - self._frontend) / wall
        if self._gc is not None and gc is not None:
            collections = [after - before for before, after in zip(self._gc, gc)]
            row["frontend_gc_per_1k"] = sum(collections) * per_1k
            row["frontend_full_gc"] = collections[2]
        if self._cpu_of is not None:
            used = cpu_used(self._procs, procs)
            row["cpu_of"] = self._cpu_of.pattern
            row["cpu_of_processes"] = len(procs)
            row["cpu_of_ms_per_request"] = used * per_1k  # CPU-s per 1000 = CPU-ms per request
            row["cpu_of_util"] = used / wall
        row["loadgen_cpu_s_per_1k"] = own * per_1k
        row["loadgen_cpu_util"] = own / wall
        row["level_wall_s"] = wall  # warm-up and drain included, as the CPU columns
        row["sent_requests"] = requests_sent


def _next_body(args: argparse.Namespace, prompts: PromptFactory, chat: Conversation | None) -> dict[str, Any]:
    return chat_body(args, chat.next() if chat else prompts.next())


async def run_level(clients: list[StreamClient], args: argparse.Namespace, concurrency: int,
                    prompts: PromptFactory) -> dict[str, Any]:
    """Closed loop: `concurrency` streams, each sending its next request when one ends."""
    records: list[tuple[str, RequestRecord]] = []
    cpu = LevelCpu(clients[0], args.cpu_of)
    await cpu.start()
    warm_until = time.perf_counter() + args.warmup
    level = Level(warm_until, warm_until + args.duration if args.requests is None else None, args.requests)

    async def worker(stream_client: StreamClient) -> None:
        chat = Conversation(args, prompts) if args.turns > 1 else None
        while (phase := level.next_phase()) is not None:
            record = await stream_client.stream(CHAT_PATH, _next_body(args, prompts, chat))
            records.append((phase, record))
            if record.status is None:
                await asyncio.sleep(NO_RESPONSE_PAUSE_S)

    # With several --url frontends, streams are dealt to them in turn.
    await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
    counted, window = measured_records(records, level)
    row = summarize(counted, window)
    row["concurrency"] = concurrency
    await cpu.finish(row, len(records))
    return row


def arrival_gaps(rate: float, arrivals: str, rng: random.Random) -> Iterator[float]:
    """Seconds between request starts at `rate` a second: exponential (Poisson arrivals) or
    fixed."""
    while True:
        yield rng.expovariate(rate) if arrivals == "poisson" else 1 / rate


async def run_rate_level(clients: list[StreamClient], args: argparse.Namespace, rate: float,
                         prompts: PromptFactory) -> dict[str, Any]:
    """Open loop: requests start at `rate` a second whether or not earlier ones have ended,
    for the warm-up and the measured window; those still running at the end get
    `--drain-timeout` seconds to finish and are then cancelled. Counted like closed-loop
    duration mode: the requests that ended inside the window."""
    records: list[tuple[str, RequestRecord]] = []
    cpu = LevelCpu(clients[0], args.cpu_of)
    await cpu.start()
    now = time.perf_counter()
    level = Level(now + args.warmup, now + args.warmup + args.duration, None)
    running: set[asyncio.Task[None]] = set()

    async def one(stream_client: StreamClient, phase: str, body: dict[str, Any]) -> None:
        records.append((phase, await stream_client.stream(CHAT_PATH, body)))

    chat = Conversation(args, prompts) if args.turns > 1 else None
    next_start = now
    for sent, gap in enumerate(arrival_gaps(rate, args.arrivals, random.Random(f"arrivals-{rate}"))):
        delay = next_start - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if (phase := level.next_phase()) is None:
            break
        task = asyncio.create_task(one(clients[sent % len(clients)], phase, _next_body(args, prompts, chat)))
        running.add(task)
        task.add_done_callback(running.discard)
        next_start += gap  # from the schedule, not from now: a late wake-up does not lower the rate
    if running:
        _, late = await asyncio.wait(set(running), timeout=args.drain_timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    counted, window = measured_records(records, level)
    row = summarize(counted, window)
    row["concurrency"] = None
    row["offered_rate"] = rate
    row["arrivals"] = args.arrivals
    row["unfinished"] = len(running)
    await cpu.finish(row, len(records) + len(running))
    return row


COLUMNS = [
    ("concurrency", "conc", "d"),
    ("offered_rate", "offered/s", ".1f"),
    ("requests", "requests", "d"),
    ("errors", "errors", "d"),
    ("req_per_s", "req/s", ".1f"),
    ("output_tok_per_s", "out tok/s", ".0f"),
    ("ttft_p50_ms", "TTFT p50 ms", ".1f"),
    ("ttft_p99_ms", "TTFT p99 ms", ".1f"),
    ("tpot_p50_ms", "TPOT p50 ms", ".2f"),
    ("tpot_p99_ms", "TPOT p99 ms", ".2f"),
    ("itl_p50_ms", "ITL p50 ms", ".2f"),
    ("itl_p99_ms", "ITL p99 ms", ".2f"),
    ("e2e_p50_ms", "E2E p50 ms", ".0f"),
    ("e2e_p99_ms", "E2E p99 ms", ".0f"),
    ("mean_prompt_tokens", "prompt tok", ".0f"),
    ("mean_output_tokens", "output tok", ".0f"),
    ("tokens_per_chunk", "tok/chunk", ".1f"),
    ("prefix_hit_rate", "prefix hit", ".0%"),
    ("frontend_cpu_s_per_1k", "frontend CPU s/1k req", ".2f"),
    ("frontend_cpu_util", "frontend CPU util", ".0%"),
    ("frontend_gc_per_1k", "frontend GCs/1k req", ".1f"),
    ("frontend_full_gc", "frontend full GCs", ".0f"),
    ("cpu_of_ms_per_request", "--cpu-of CPU-ms/req", ".2f"),
    ("cpu_of_util", "--cpu-of CPU util", ".0%"),
    ("loadgen_cpu_s_per_1k", "loadgen CPU s/1k req", ".2f"),
    ("loadgen_cpu_util", "loadgen CPU util", ".0%"),
]


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    urls = [u for u in args.url.split(",") if u]
    # Open loop: as many connections as requests may be running at once.
    connections = args.max_connections if args.rate else max(args.concurrency)
    clients = [StreamClient(u, -(-connections // len(urls)), args.client, args.timeout) for u in urls]
    client = clients[0]
    try:
        calibration = await calibrate(client, args)
        print(calibration.describe(), flush=True)
        rows = []
        levels = [("rate", r) for r in args.rate] if args.rate else [("concurrency", c) for c in args.concurrency]
        for kind, value in levels:
            prompts = PromptFactory(calibration.words, calibration.prefix_words, max(args.prefix_groups, 1),
                                    seed=round(value * 1000) if kind == "rate" else int(value),
                                    tokens_per_word=calibration.tokens_per_word)
            if kind == "rate":
                row = await run_rate_level(clients, args, value, prompts)
            else:
                row = await run_level(clients, args, int(value), prompts)
            row.update(settings(args, calibration))
            rows.append(row)
            print(f"{kind} {value}: {row['requests']} requests, {row['req_per_s']:.1f} req/s, "
                  f"TTFT p50 {row['ttft_p50_ms']:.1f} ms, {row['errors']} errors", flush=True)
        return rows
    finally:
        for each in clients:
            await each.aclose()


def settings(args: argparse.Namespace, calibration: Calibration) -> dict[str, Any]:
    """What a JSON row needs to be read on its own later."""
    return {
        "benchmark": "loadgen",
        "label": args.label,
        "url": args.url,
        "model": args.model,
        "client": args.client,
        "target_prompt_tokens": args.prompt_tokens,
        "target_output_tokens": args.output_tokens,
        "shared_prefix_tokens": args.shared_prefix_tokens,
        "prefix_groups": args.prefix_groups if args.shared_prefix_tokens else 0,
        "prompt_words": calibration.words,
        "turns": args.turns,
        "turn_tokens": args.turn_tokens if args.turns > 1 else None,
        "duration_s": args.duration if args.requests is None else None,
        "open_loop": bool(args.rate),
        "measured_requests": args.requests,
        "warmup_s": args.warmup,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average": list(os.getloadavg()),  # the machine may be shared
    }


def concurrency_list(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels are positive integers, e.g. 8,32,128")
    return levels


def rate_list(text: str) -> list[float]:
    rates = [float(part) for part in text.split(",") if part.strip()]
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("rates are positive requests a second, e.g. 10,20")
    return rates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default="http://127.0.0.1:8000",
                   help="the frontend's base URL; comma-separated: several frontends, streams dealt in turn "
                        "(the CPU columns are the first one's)")
    p.add_argument("--model", default="mocker")
    p.add_argument("--concurrency", type=concurrency_list, default=[8, 32, 128], help="comma-separated levels")
    p.add_argument("--rate", type=rate_list, default=None,
                   help="open loop instead: comma-separated request rates a second, each a level (--concurrency unused)")
    p.add_argument("--arrivals", choices=["poisson", "fixed"], default="poisson",
                   help="open loop: exponential gaps between starts (Poisson arrivals) or equal ones")
    p.add_argument("--max-connections", type=int, default=1024,
                   help="open loop: connections a frontend, the most requests running at once")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="open loop: seconds the requests still running after the window get before they are cancelled")
    p.add_argument("--cpu-of", type=re.compile, default=None, metavar="REGEX",
                   help="also report the CPU of the processes whose command line matches (from /proc, summed), "
                        "e.g. 'dynamo frontend' or 'dynamo[.]frontend'")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds a level")
    p.add_argument("--requests", type=int, default=None, help="measure this many requests a level instead of --duration")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load a level before measuring")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--shared-prefix-tokens", type=int, default=0, help="leading prompt tokens taken from a prefix group")
    p.add_argument("--prefix-groups", type=int, default=4, help="distinct shared prefixes")
    p.add_argument("--turns", type=int, default=1, help="turns of each stream's chat (1: single requests)")
    p.add_argument("--turn-tokens", type=int, default=64, help="tokens of each later turn's user message")
    p.add_argument("--vocabulary", type=int, default=0, metavar="N",
                   help="draw prompt words from N made-up words by Zipf's law, as real text uses words "
                        "(0: 32 common words evenly, each one token; see Vocabulary)")
    add_run_options(
        p, timeout_s=600.0, label_help="a name kept in the JSON rows",
        json_help="append one JSON line a level to this file",
    )
    args = p.parse_args(argv)
    if args.shared_prefix_tokens >= args.prompt_tokens:
        p.error("--shared-prefix-tokens must be below --prompt-tokens")
    if args.requests is not None and args.requests < 1:
        p.error("--requests must be positive")
    if args.rate and args.requests is not None:
        p.error("--rate runs for --duration; --requests is for the closed loop")
    if args.turns < 1 or args.turn_tokens < 1:
        p.error("--turns and --turn-tokens must be positive")
    if args.vocabulary < 0:
        p.error("--vocabulary must not be negative")
    use_vocabulary(args.vocabulary)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = run_async(main_async(args))
    print()
    report(rows, COLUMNS, "concurrency", args.json_out)


if __name__ == "__main__":
    main()
