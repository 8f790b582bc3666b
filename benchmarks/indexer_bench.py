"""Benchmark of the kv router's prefix index: event apply rate, match latency, memory.

    python benchmarks/indexer_bench.py                              # 64 workers, 1M blocks
    python benchmarks/indexer_bench.py --workers 8 --blocks 100000  # a quick run

Builds the index the way a frontend would, from `stored` event batches of `--workers`
simulated engines holding `--blocks` (worker, block) entries in all, with realistic sharing:
each engine serves sequences that start with one of `--documents` shared prefixes (system
prompts, documents, earlier turns; popularity falls off as 1/rank) and go on with unique
blocks; a prefix it already holds is not stored again, its new blocks chain from it, as an
engine's prefix cache does. A few workers also hold full-length prompts. On one core it
measures:

- applying `stored` events (blocks/s), through `KvRouter.on_kv_events` as in production:
  our hash recomputed from each block's tokens, the engine-hash map, the event-id check;
- `find_matches` latency for prompts of `--prompt-tokens` (8k tokens: 512 blocks at block
  size 16): "typical" prompts reuse a held sequence and go on with new tokens, "full hit"
  prompts are held whole by some workers, so every one of their blocks is looked up. Each
  prompt is timed `--repeat` times; p50/p99 are over each prompt's best (what the code
  costs), "every timing" rows keep the rest too (what a busy shared host adds);
- the prompt hashing and a whole `select_worker` decision (hash, match, price every worker,
  count the request's load, update metrics), best of `--repeat` as well;
- removing every block again (`removed` events, blocks/s);
- memory per indexed (worker, block) entry: tracemalloc over a second build of the same
  index, holding only what the index keeps (engine-hash ints included, event objects not).

Prints a markdown table; `--output FILE` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

from dynamo_core.protocols.engine import PreprocessedRequest, StopConditions
from dynamo_core.protocols.kv_events import KvBlock, KvEventBatch, KvSnapshot, KvStored
from dynamo_core.routers.base import RouterContext, WorkerState
from dynamo_router_kv.config import KvRouterConfig
from dynamo_router_kv.hashing import prompt_block_hashes
from dynamo_router_kv.indexer import KvIndexer
from dynamo_router_kv.router import KvRouter

if __package__ in (None, ""):  # run as `python benchmarks/indexer_bench.py`, as docs/benchmarks.md does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.stats import percentile  # noqa: E402

VOCAB = range(32_000)


@dataclass
class Workload:
    runs: list[tuple[str, int | None, list[KvBlock]]]  # (worker, parent engine hash, blocks)
    typical_prompts: list[list[int]]
    full_prompts: list[list[int]]
    worker_ids: list[str]

    @property
    def blocks(self) -> int:
        return sum(len(blocks) for _, _, blocks in self.runs)


def _block(rng: random.Random, size: int) -> list[int]:
    return rng.choices(VOCAB, k=size)


def make_workload(args: argparse.Namespace) -> Workload:
    rng = random.Random(args.seed)
    size = args.block_size
    prompt_blocks = args.prompt_tokens // size
    documents = [[_block(rng, size) for _ in range(rng.randint(4, args.doc_blocks))] for _ in range(args.documents)]
    popularity = [1.0 / (rank + 1) for rank in range(len(documents))]
    worker_ids = [f"worker-{w}" for w in range(args.workers)]
    runs: list[tuple[str, int | None, list[KvBlock]]] = []
    sequences: list[list[list[int]]] = []
    full_prompts: list[list[int]] = []
    per_worker = args.blocks // args.workers
    for w, worker in enumerate(worker_ids):
        held_documents: dict[int, int] = {}  # document -> engine hash of its last block here
        stored = 0
        if w < args.full_hit_workers:
            # One whole prompt-length sequence: the worst case for a match walk.
            doc = rng.choices(range(len(documents)), popularity)[0]
            blocks = (documents[doc] + [_block(rng, size) for _ in range(prompt_blocks)])[:prompt_blocks]
            kv = [KvBlock(rng.getrandbits(64), tokens) for tokens in blocks]
            runs.append((worker, None, kv))
            stored += len(kv)
            held_documents[doc] = kv[len(documents[doc]) - 1].block_hash
            full_prompts.append([t for b in blocks for t in b])
        while stored < per_worker:
            doc = rng.choices(range(len(documents)), popularity)[0]
            tail = [_block(rng, size) for _ in range(rng.randint(4, args.tail_blocks))]
            parent = held_documents.get(doc)
            new_blocks = tail if parent is not None else documents[doc] + tail
            new_blocks = new_blocks[: per_worker - stored]
            kv = [KvBlock(rng.getrandbits(64), tokens) for tokens in new_blocks]
            runs.append((worker, parent, kv))
            stored += len(kv)
            if parent is None and len(kv) >= len(documents[doc]):
                held_documents[doc] = kv[len(documents[doc]) - 1].block_hash
            if len(sequences) < 4 * args.queries:
                sequences.append(documents[doc] + tail)
    typical = []
    for _ in range(args.queries):
        blocks = rng.choice(sequences)[:prompt_blocks]
        tokens = [t for b in blocks for t in b]
        typical.append(tokens + rng.choices(VOCAB, k=args.prompt_tokens - len(tokens)))
    return Workload(runs, typical, full_prompts, worker_ids)


def _fresh_int(value: int) -> int:
    """An equal int that is a new object (so tracemalloc sees the index keep it)."""
    return int.from_bytes(value.to_bytes(8, "little"), "little")


@dataclass
class Result:
    workers: int
    indexed_blocks: int
    distinct_blocks: int
    apply_blocks_per_s: float
    remove_blocks_per_s: float
    match_typical_p50_ms: float
    match_typical_p99_ms: float
    match_typical_raw_p99_ms: float
    matched_typical_mean_blocks: float
    match_full_p50_ms: float
    match_full_p99_ms: float
    match_full_raw_p99_ms: float
    hash_p50_ms: float
    hash_p99_ms: float
    decision_p50_ms: float
    decision_p99_ms: float
    decision_raw_p99_ms: float
    bytes_per_indexed_block: float
    bytes_per_distinct_block: float


def _time_matches(index: KvIndexer, prompts: list[list[int]], block_size: int, repeat: int):
    """Per prompt, the best of ``repeat`` timings (ms); every timing; leading blocks matched.

    The best of a few runs separates what the code costs from a shared host's preemptions,
    which the raw timings keep.
    """
    best, every, matched = [], [], []
    hashed = [prompt_block_hashes(p, block_size) for p in prompts]
    for hashes in hashed:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            found = index.find_matches(hashes)
            times.append((time.perf_counter() - t0) * 1e3)
        best.append(min(times))
        every += times
        matched.append(max(found.values(), default=0))
    return best, every, matched


def run(args: argparse.Namespace) -> Result:
    print(f"generating {args.blocks:,} blocks for {args.workers} workers ...", file=sys.stderr, flush=True)
    work = make_workload(args)
    context = RouterContext(model="bench", block_size=args.block_size, options=argparse.Namespace())
    router = KvRouter(context, KvRouterConfig(), rng=random.Random(args.seed))
    workers = [WorkerState(w) for w in work.worker_ids]
    for state in workers:
        router.on_worker_added(state)
        router.on_kv_snapshot(KvSnapshot(worker_id=state.worker_id, event_id=0, stored=[]))
    batches = []
    next_id = dict.fromkeys(work.worker_ids, 1)
    for worker, parent, blocks in work.runs:
        batches.append(KvEventBatch(worker_id=worker, event_id=next_id[worker],
                                    events=[KvStored(parent_hash=parent, blocks=blocks)]))
        next_id[worker] += 1

    print("applying stored events ...", file=sys.stderr, flush=True)
    gc.collect()
    started = time.perf_counter()
    for batch in batches:
        router.on_kv_events(batch)
    apply_s = time.perf_counter() - started
    index = router.indexer
    assert sum(index.worker_blocks(w) for w in work.worker_ids) == work.blocks, "workload stored a block twice"
    indexed_blocks, distinct = work.blocks, index.distinct_blocks
    del batches

    print("measuring memory ...", file=sys.stderr, flush=True)
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    probe = KvIndexer()
    for worker, parent, blocks in work.runs:
        fresh = [KvBlock(_fresh_int(b.block_hash), b.token_ids) for b in blocks]
        probe.apply_stored(worker, None if parent is None else _fresh_int(parent), fresh)
    del fresh
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del probe
    removals = [(worker, [b.block_hash for b in blocks]) for worker, _, blocks in work.runs]
    # The generated events are millions of GC-tracked objects a frontend never holds at
    # once; keeping them would make every full collection during the queries walk them.
    work.runs = []
    gc.collect()

    print("matching ...", file=sys.stderr, flush=True)
    typical_best, typical_all, typical_matched = _time_matches(index, work.typical_prompts, args.block_size, args.repeat)
    full_queries = [work.full_prompts[i % len(work.full_prompts)] for i in range(args.queries)] if work.full_prompts else []
    full_best, full_all, full_matched = _time_matches(index, full_queries, args.block_size, args.repeat)
    assert not work.full_prompts or min(full_matched) == args.prompt_tokens // args.block_size
    hash_ms, decision_ms, decision_all = [], [], []
    for i, tokens in enumerate(work.typical_prompts):
        request = PreprocessedRequest(request_id=f"q{i}", model="bench", token_ids=tokens,
                                      stop=StopConditions(max_tokens=16))
        hashing, deciding = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            prompt_block_hashes(tokens, args.block_size)
            t1 = time.perf_counter()
            worker = router.select_worker(request, workers)
            t2 = time.perf_counter()
            router.on_request_finished(request.request_id, worker, 16)
            hashing.append((t1 - t0) * 1e3)
            deciding.append((t2 - t1) * 1e3)
        hash_ms.append(min(hashing))
        decision_ms.append(min(deciding))
        decision_all += deciding

    print("removing ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    for worker, hashes in removals:
        index.apply_removed(worker, hashes)
    remove_s = time.perf_counter() - started
    assert index.distinct_blocks == 0

    return Result(
        workers=args.workers,
        indexed_blocks=indexed_blocks,
        distinct_blocks=distinct,
        apply_blocks_per_s=indexed_blocks / apply_s,
        remove_blocks_per_s=indexed_blocks / remove_s,
        match_typical_p50_ms=percentile(typical_best, 50),
        match_typical_p99_ms=percentile(typical_best, 99),
        match_typical_raw_p99_ms=percentile(typical_all, 99),
        matched_typical_mean_blocks=sum(typical_matched) / len(typical_matched),
        match_full_p50_ms=percentile(full_best, 50) if full_best else math.nan,
        match_full_p99_ms=percentile(full_best, 99) if full_best else math.nan,
        match_full_raw_p99_ms=percentile(full_all, 99) if full_all else math.nan,
        hash_p50_ms=percentile(hash_ms, 50),
        hash_p99_ms=percentile(hash_ms, 99),
        decision_p50_ms=percentile(decision_ms, 50),
        decision_p99_ms=percentile(decision_ms, 99),
        decision_raw_p99_ms=percentile(decision_all, 99),
        bytes_per_indexed_block=(after - before) / indexed_blocks,
        bytes_per_distinct_block=(after - before) / distinct,
    )


ROWS = [
    ("workers", "workers", "d"),
    ("indexed_blocks", "indexed (worker, block) entries", ","),
    ("distinct_blocks", "distinct blocks", ","),
    ("apply_blocks_per_s", "apply `stored` events, blocks/s", ",.0f"),
    ("remove_blocks_per_s", "apply `removed` events, blocks/s", ",.0f"),
    ("match_typical_p50_ms", "find_matches p50, typical prompt (ms)", ".3f"),
    ("match_typical_p99_ms", "find_matches p99, typical prompt (ms)", ".3f"),
    ("match_typical_raw_p99_ms", "find_matches p99, typical prompt, every timing (ms)", ".3f"),
    ("matched_typical_mean_blocks", "typical prompt: mean leading blocks matched", ".0f"),
    ("match_full_p50_ms", "find_matches p50, prompt held whole (ms)", ".3f"),
    ("match_full_p99_ms", "find_matches p99, prompt held whole (ms)", ".3f"),
    ("match_full_raw_p99_ms", "find_matches p99, prompt held whole, every timing (ms)", ".3f"),
    ("hash_p50_ms", "hash the prompt p50 (ms)", ".3f"),
    ("hash_p99_ms", "hash the prompt p99 (ms)", ".3f"),
    ("decision_p50_ms", "select_worker p50, all workers priced (ms)", ".3f"),
    ("decision_p99_ms", "select_worker p99, all workers priced (ms)", ".3f"),
    ("decision_raw_p99_ms", "select_worker p99, every timing (ms)", ".3f"),
    ("bytes_per_indexed_block", "memory per indexed entry (bytes)", ".0f"),
    ("bytes_per_distinct_block", "memory per distinct block (bytes)", ".0f"),
]


def markdown(result: Result, args: argparse.Namespace) -> str:
    values = asdict(result)
    lines = [
        f"Python {platform.python_version()} on {platform.processor() or platform.machine()}; "
        f"block size {args.block_size}, prompt {args.prompt_tokens} tokens, {args.documents} shared prefixes",
        "",
        "| measure | value |",
        "| --- | ---: |",
    ]
    lines += [f"| {label} | {format(values[key], spec)} |" for key, label, spec in ROWS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--blocks", type=int, default=1_000_000, help="(worker, block) entries in all (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=8192, help="query prompt length (default: %(default)s)")
    p.add_argument("--documents", type=int, default=500, help="shared prefixes (default: %(default)s)")
    p.add_argument("--doc-blocks", type=int, default=256, help="longest shared prefix, in blocks (default: %(default)s)")
    p.add_argument("--tail-blocks", type=int, default=128, help="longest unique continuation, in blocks (default: %(default)s)")
    p.add_argument("--full-hit-workers", type=int, default=8, help="workers that also hold whole prompts (default: %(default)s)")
    p.add_argument("--queries", type=int, default=2000, help="prompts per latency measure (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=5,
                   help="timings per prompt; the p50/p99 rows use each prompt's best (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    if args.blocks < args.workers or args.prompt_tokens < args.block_size:
        p.error("need at least one block per worker and a prompt of at least one block")
    result = run(args)
    print(markdown(result, args))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"args": vars(args), "result": asdict(result)}, f, indent=2)


if __name__ == "__main__":
    main()
