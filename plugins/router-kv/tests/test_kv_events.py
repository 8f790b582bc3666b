"""Following workers' KV event streams: snapshots, lost batches and resynchronisation."""

from __future__ import annotations

import argparse
import random

from dynamo_core.protocols.kv_events import KvBlock, KvCleared, KvEventBatch, KvRemoved, KvSnapshot, KvStored
from dynamo_core.routers.base import RouterContext, WorkerState
from dynamo_router_kv.config import KvRouterConfig
from dynamo_router_kv.hashing import prompt_block_hashes
from dynamo_router_kv.router import KvRouter

BLOCK = 4
PROMPT = list(range(40))  # 10 blocks
OTHER = list(range(100, 140))


def _router(resyncs: list[str]) -> KvRouter:
    context = RouterContext(model="events-test", block_size=BLOCK, options=argparse.Namespace(),
                            request_resync=resyncs.append)
    router = KvRouter(context, KvRouterConfig(), rng=random.Random(0))
    for w in ("a", "b"):
        router.on_worker_added(WorkerState(w))
    return router


def _run(tokens: list[int], first_hash: int, parent: int | None = None) -> KvStored:
    blocks = [KvBlock(first_hash + i, tokens[i * BLOCK : (i + 1) * BLOCK]) for i in range(len(tokens) // BLOCK)]
    return KvStored(parent_hash=parent, blocks=blocks)


def _batch(worker: str, event_id: int, *events) -> KvEventBatch:
    return KvEventBatch(worker_id=worker, event_id=event_id, events=list(events))


def _matches(router: KvRouter, tokens: list[int]) -> dict[str, int]:
    return router.indexer.find_matches(prompt_block_hashes(tokens, BLOCK))


def test_batches_before_the_first_snapshot_are_ignored():
    router = _router([])
    router.on_kv_events(_batch("a", 1, _run(PROMPT, 1000)))
    assert _matches(router, PROMPT) == {}
    router.on_kv_snapshot(KvSnapshot(worker_id="a", event_id=1, stored=[_run(PROMPT, 1000)]))
    assert _matches(router, PROMPT) == {"a": 10}
    router.on_kv_events(_batch("a", 2, KvRemoved(block_hashes=[1009])))
    assert _matches(router, PROMPT) == {"a": 9}


def test_event_id_gap_drops_the_worker_and_asks_for_a_snapshot_that_restores_it():
    resyncs: list[str] = []
    router = _router(resyncs)
    router.on_kv_snapshot(KvSnapshot(worker_id="a", event_id=0, stored=[]))
    router.on_kv_snapshot(KvSnapshot(worker_id="b", event_id=0, stored=[]))
    router.on_kv_events(_batch("a", 1, _run(PROMPT, 1000)))
    router.on_kv_events(_batch("b", 1, _run(PROMPT, 5000)))
    router.on_kv_events(_batch("a", 3, _run(OTHER, 2000)))  # batch 2 was lost
    assert resyncs == ["a"]
    assert _matches(router, PROMPT) == {"b": 10}  # a dropped, b untouched
    router.on_kv_events(_batch("a", 4, _run(OTHER, 2000)))  # ignored until the snapshot
    assert _matches(router, OTHER) == {} and resyncs == ["a"]
    router.on_kv_snapshot(KvSnapshot(worker_id="a", event_id=4, stored=[_run(PROMPT, 1000), _run(OTHER, 2000)]))
    assert _matches(router, PROMPT) == {"a": 10, "b": 10} and _matches(router, OTHER) == {"a": 10}
    router.on_kv_events(_batch("a", 5, KvRemoved(block_hashes=[2000])))  # in step again
    assert _matches(router, OTHER) == {} and resyncs == ["a"]


def test_stored_run_under_an_unknown_parent_is_a_lost_event():
    resyncs: list[str] = []
    router = _router(resyncs)
    router.on_kv_snapshot(KvSnapshot(worker_id="a", event_id=0, stored=[_run(PROMPT, 1000)]))
    router.on_kv_events(_batch("a", 1, _run(OTHER[:8], 3000, parent=424242)))
    assert resyncs == ["a"] and _matches(router, PROMPT) == {}


def test_duplicate_batches_are_skipped_without_resync():
    resyncs: list[str] = []
    router = _router(resyncs)
    router.on_kv_snapshot(KvSnapshot(worker_id="a", event_id=5, stored=[_run(PROMPT, 1000)]))
    router.on_kv_events(_batch("a", 5, KvCleared()))  # already covered by the snapshot
    router.on_kv_events(_batch("a", 3, KvCleared()))
    assert resyncs == [] and _matches(router, PROMPT) == {"a": 10}


def test_snapshot_replaces_what_the_worker_held():
    router = _router([])
    router.on_kv_snapshot(KvSnapshot(worker_id="a", event_id=0, stored=[_run(PROMPT, 1000)]))
    router.on_kv_snapshot(KvSnapshot(worker_id="a", event_id=7, stored=[_run(OTHER, 2000)]))
    assert _matches(router, PROMPT) == {} and _matches(router, OTHER) == {"a": 10}
    assert router.indexer.worker_blocks("a") == 10


def test_cleared_event_empties_the_worker():
    router = _router([])
    router.on_kv_snapshot(KvSnapshot(worker_id="a", event_id=0, stored=[_run(PROMPT, 1000)]))
    router.on_kv_events(_batch("a", 1, KvCleared(), _run(OTHER, 2000)))
    assert _matches(router, PROMPT) == {} and _matches(router, OTHER) == {"a": 10}


def test_removed_worker_loses_its_blocks_and_its_late_events_are_ignored():
    resyncs: list[str] = []
    router = _router(resyncs)
    router.on_kv_snapshot(KvSnapshot(worker_id="a", event_id=0, stored=[_run(PROMPT, 1000)]))
    router.on_worker_removed("a")
    assert _matches(router, PROMPT) == {} and router.indexer.distinct_blocks == 0
    router.on_kv_events(_batch("a", 1, _run(PROMPT, 1000)))
    router.on_kv_snapshot(KvSnapshot(worker_id="a", event_id=1, stored=[_run(PROMPT, 1000)]))
    assert _matches(router, PROMPT) == {} and resyncs == []
