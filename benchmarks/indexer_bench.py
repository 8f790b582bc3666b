"""Benchmark of the kv router's prefix index: event apply rate, match latency, memory.

    python -m benchmarks.indexer_bench --workers 64 --blocks 1000000 --block-size 16

Builds an index of `--blocks` (worker, block) entries over `--workers` workers with realistic
sharing: sequences start from one of `--documents` shared document prefixes (system prompts,
documents, earlier turns) and continue with unique blocks. Measures, on one core:
- applying `stored` events (blocks per second, router hashing included, as in production);
- `find_matches` for an 8k-token prompt (512 blocks at block size 16) whose prefix is indexed,
  p50/p99 over many queries, and the hashing of that prompt separately;
- memory per indexed block (tracemalloc: the index's own allocations).
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

from dynamo_core.protocols.kv_events import KvBlock
from dynamo_router_kv.hashing import prompt_block_hashes
from dynamo_router_kv.indexer import KvIndexer

from benchmarks.common import markdown_table, percentile


def make_events(args, rng: random.Random):
    """Per worker, runs of (parent engine hash, blocks) that sum to `--blocks` in total."""
    size = args.block_size
    documents = [[[rng.randrange(32000) for _ in range(size)] for _ in range(rng.randint(4, args.doc_blocks))]
                 for _ in range(args.documents)]
    per_worker = args.blocks // args.workers
    engine_hash = iter(range(1, 1 << 62))
    events = []  # (worker, parent, [KvBlock])
    sequences = []  # token lists, for queries
    for w in range(args.workers):
        worker = f"worker-{w}"
        stored = 0
        while stored < per_worker:
            doc = rng.choice(documents)
            tail = [[rng.randrange(32000) for _ in range(size)] for _ in range(rng.randint(4, args.tail_blocks))]
            blocks = (doc + tail)[: per_worker - stored]
            kv = [KvBlock(next(engine_hash), tokens) for tokens in blocks]
            events.append((worker, None, kv))
            stored += len(kv)
            if len(sequences) < 2000:
                sequences.append([t for b in blocks for t in b])
    return events, sequences


def run(args) -> dict:
    rng = random.Random(args.seed)
    print(f"generating {args.blocks:,} blocks for {args.workers} workers ...", flush=True)
    events, sequences = make_events(args, rng)
    gc.collect()
    index = KvIndexer()
    started = time.perf_counter()
    for worker, parent, blocks in events:
        index.apply_stored(worker, parent, blocks)
    apply_s = time.perf_counter() - started
    total = sum(len(b) for _, _, b in events)
    # Memory in a second pass over a tenth of the events: tracemalloc slows allocation, so
    # it must stay off while the apply rate is timed.
    sample = events[: max(1, len(events) // 10)]
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    probe = KvIndexer()
    for worker, parent, blocks in sample:
        probe.apply_stored(worker, parent, blocks)
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sample_blocks = sum(len(b) for _, _, b in sample)
    del probe

    prompt_len = args.prompt_tokens
    queries = []
    for _ in range(args.queries):
        seq = rng.choice(sequences)
        extra = [rng.randrange(32000) for _ in range(max(0, prompt_len - len(seq)))]
        queries.append((seq + extra)[:prompt_len])
    hash_ms, match_ms, matched = [], [], []
    for tokens in queries:
        t0 = time.perf_counter()
        hashes = prompt_block_hashes(tokens, args.block_size)
        t1 = time.perf_counter()
        found = index.find_matches(hashes)
        t2 = time.perf_counter()
        hash_ms.append((t1 - t0) * 1000)
        match_ms.append((t2 - t1) * 1000)
        matched.append(max(found.values(), default=0))
    return {
        "workers": args.workers,
        "indexed_blocks": total,
        "distinct_blocks": index.distinct_blocks,
        "apply_blocks_per_s": total / apply_s,
        "match_p50_ms": percentile(match_ms, 50),
        "match_p99_ms": percentile(match_ms, 99),
        "hash_p50_ms": percentile(hash_ms, 50),
        "hash_p99_ms": percentile(hash_ms, 99),
        "mean_matched_blocks": sum(matched) / len(matched),
        "bytes_per_block": (after - before) / sample_blocks,
    }


COLUMNS = [
    ("workers", "workers", "d"),
    ("indexed_blocks", "indexed (worker, block)", ","),
    ("distinct_blocks", "distinct blocks", ","),
    ("apply_blocks_per_s", "apply blocks/s", ",.0f"),
    ("match_p50_ms", "find_matches p50 ms", ".3f"),
    ("match_p99_ms", "find_matches p99 ms", ".3f"),
    ("hash_p50_ms", "hash 8k prompt p50 ms", ".3f"),
    ("hash_p99_ms", "hash 8k prompt p99 ms", ".3f"),
    ("mean_matched_blocks", "mean matched blocks", ".0f"),
    ("bytes_per_block", "bytes / indexed block", ".0f"),
]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--blocks", type=int, default=1_000_000, help="(worker, block) entries in total")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--documents", type=int, default=500, help="shared prefixes")
    p.add_argument("--doc-blocks", type=int, default=256, help="longest shared prefix, in blocks")
    p.add_argument("--tail-blocks", type=int, default=128, help="longest unique continuation, in blocks")
    p.add_argument("--prompt-tokens", type=int, default=8192)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    row = run(args)
    print(markdown_table([row], COLUMNS))


if __name__ == "__main__":
    main()
