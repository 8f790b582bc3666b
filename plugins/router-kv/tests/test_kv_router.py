"""The kv router's decisions, event handling, resynchronisation and approximate mode."""

from __future__ import annotations

import argparse
import random
from collections import Counter

from dynamo_core.protocols.engine import PreprocessedRequest, StopConditions
from dynamo_core.protocols.kv_events import KvBlock, KvEventBatch, KvRemoved, KvSnapshot, KvStored, LoadMetrics
from dynamo_core.routers.base import RouterContext, WorkerState
from dynamo_router_kv.hashing import prompt_block_hashes
from dynamo_router_kv.router import KvRouter, KvRouterConfig

BLOCK = 4


def _router(resyncs=None, clock=None, **config) -> KvRouter:
    context = RouterContext(model="m", block_size=BLOCK, options=argparse.Namespace(),
                            request_resync=(resyncs.append if resyncs is not None else lambda w: None))
    kwargs = {"clock": clock} if clock else {}
    router = KvRouter(context, KvRouterConfig(**config), rng=random.Random(0), **kwargs)
    for w in ("a", "b"):
        router.on_worker_added(WorkerState(w))
        router.on_kv_snapshot(KvSnapshot(worker_id=w, event_id=0, stored=[]))
    return router


def _req(i, tokens) -> PreprocessedRequest:
    return PreprocessedRequest(request_id=f"r{i}", model="m", token_ids=list(tokens), stop=StopConditions(max_tokens=8))


WORKERS = [WorkerState("a"), WorkerState("b")]
PROMPT = list(range(40))  # 10 blocks


def _store(router, worker, event_id, tokens, parent=None, first_hash=1000):
    blocks = [KvBlock(first_hash + i, tokens[i * BLOCK:(i + 1) * BLOCK]) for i in range(len(tokens) // BLOCK)]
    router.on_kv_events(KvEventBatch(worker_id=worker, event_id=event_id, events=[KvStored(parent_hash=parent, blocks=blocks)]))


def test_request_goes_to_the_worker_holding_its_prefix():
    router = _router()
    _store(router, "b", 1, PROMPT[:32])
    assert router.select_worker(_req(0, PROMPT), WORKERS) == "b"
    scores = router.debug_scores(_req(1, PROMPT), WORKERS)
    assert scores["b"]["overlap_blocks"] == 8 and scores["a"]["overlap_blocks"] == 0


def test_load_spreads_when_prefixes_are_unique():
    router = _router()
    picks = Counter(router.select_worker(_req(i, [i * 100 + t for t in range(40)]), WORKERS) for i in range(20))
    assert picks["a"] == picks["b"] == 10


def test_burst_of_identical_requests_spreads_once_load_accrues():
    router = _router()
    _store(router, "a", 1, PROMPT)
    picks = [router.select_worker(_req(i, PROMPT), WORKERS) for i in range(6)]
    assert picks[0] == "a" and "b" in picks  # a's tracked load eventually outweighs the cache hit
    for i, w in enumerate(picks):
        router.on_request_finished(f"r{i}", w, 8)
    assert router.select_worker(_req(99, PROMPT), WORKERS) == "a"  # load released: back to the cache


def test_reported_load_counts_against_a_worker():
    router = _router()
    router.on_load(LoadMetrics(worker_id="a", running_requests=50, waiting_requests=0, active_kv_blocks=500, total_kv_blocks=1000))
    _store(router, "a", 1, PROMPT)
    assert router.select_worker(_req(0, PROMPT), WORKERS) == "b"


def test_event_gap_drops_the_workers_index_and_asks_for_a_snapshot():
    resyncs = []
    router = _router(resyncs)
    _store(router, "a", 1, PROMPT)
    _store(router, "a", 3, list(range(100, 140)), first_hash=2000)  # event 2 was lost
    assert resyncs == ["a"]
    assert router.indexer.find_matches(prompt_block_hashes(PROMPT, BLOCK)) == {}
    _store(router, "a", 4, PROMPT)  # ignored until the snapshot arrives
    assert router.indexer.worker_block_count("a") == 0
    blocks = [KvBlock(1000 + i, PROMPT[i * BLOCK:(i + 1) * BLOCK]) for i in range(10)]
    router.on_kv_snapshot(KvSnapshot(worker_id="a", event_id=4, stored=[KvStored(parent_hash=None, blocks=blocks)]))
    assert router.select_worker(_req(0, PROMPT), WORKERS) == "a"
    _store(router, "a", 5, list(range(200, 204)), first_hash=3000)
    assert resyncs == ["a"]  # in order again


def test_removed_events_unindex_blocks():
    router = _router()
    _store(router, "a", 1, PROMPT)
    router.on_kv_events(KvEventBatch(worker_id="a", event_id=2, events=[KvRemoved(block_hashes=[1000 + i for i in range(10)])]))
    assert router.debug_scores(_req(0, PROMPT), WORKERS)["a"]["overlap_blocks"] == 0


def test_approximate_mode_assumes_routed_prefixes_until_the_ttl_expires():
    now = [0.0]
    router = _router(clock=lambda: now[0], use_kv_events=False, ttl_s=10.0)
    assert not router.wants_kv_events()
    first = router.select_worker(_req(0, PROMPT), WORKERS)
    router.on_request_finished("r0", first, 8)
    now[0] = 5.0
    assert router.select_worker(_req(1, PROMPT), WORKERS) == first  # assumed cached
    router.on_request_finished("r1", first, 8)
    now[0] = 14.0  # the second routing refreshed the TTL to 15
    assert router.debug_scores(_req(2, PROMPT), WORKERS)[first]["overlap_blocks"] == 10
    now[0] = 15.5
    assert router.debug_scores(_req(3, PROMPT), WORKERS)[first]["overlap_blocks"] == 0


def test_temperature_samples_in_proportion_to_normalised_cost():
    router = _router(temperature=1.0)
    _store(router, "a", 1, PROMPT)
    picks = Counter()
    for i in range(400):
        w = router.select_worker(_req(i, PROMPT), WORKERS)
        picks[w] += 1
        router.on_request_finished(f"r{i}", w, 8)
    # a is cheaper: picked more often, but b still gets a share (exp(-1) ≈ 0.37 relative weight)
    assert picks["a"] > picks["b"] > 50
