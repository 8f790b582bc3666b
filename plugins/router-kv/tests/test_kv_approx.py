"""Approximate mode: routed prefixes are assumed cached for a TTL, without KV events."""

from __future__ import annotations

import argparse
import random

from dynamo_core.protocols.engine import PreprocessedRequest, StopConditions
from dynamo_core.protocols.kv_events import KvBlock, KvEventBatch, KvSnapshot, KvStored
from dynamo_core.routers.base import RouterContext, WorkerState
from dynamo_router_kv.config import KvRouterConfig
from dynamo_router_kv.router import KvRouter

BLOCK = 4
PROMPT = list(range(40))  # 10 blocks
WORKERS = [WorkerState("a"), WorkerState("b")]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _router(clock: FakeClock, ttl_s: float = 10.0, capacity: int = 0) -> KvRouter:
    context = RouterContext(model="approx-test", block_size=BLOCK, options=argparse.Namespace())
    router = KvRouter(context, KvRouterConfig(use_kv_events=False, ttl_s=ttl_s), clock=clock, rng=random.Random(0))
    for w in WORKERS:
        router.on_worker_added(WorkerState(w.worker_id, kv_capacity_blocks=capacity))
    return router


def _req(i: int, tokens: list[int]) -> PreprocessedRequest:
    return PreprocessedRequest(request_id=f"r{i}", model="m", token_ids=tokens, stop=StopConditions(max_tokens=8))


def _overlaps(router: KvRouter, tokens: list[int]) -> dict[str, int]:
    return {w: s["overlap_blocks"] for w, s in router.debug_scores(_req(-1, tokens), WORKERS).items()}


def test_approximate_mode_does_not_want_kv_events_and_ignores_them():
    router = _router(FakeClock())
    assert not router.wants_kv_events()
    blocks = [KvBlock(i, PROMPT[i * BLOCK : (i + 1) * BLOCK]) for i in range(10)]
    router.on_kv_snapshot(KvSnapshot(worker_id="a", event_id=0, stored=[KvStored(parent_hash=None, blocks=blocks)]))
    router.on_kv_events(KvEventBatch(worker_id="a", event_id=1, events=[KvStored(parent_hash=None, blocks=blocks)]))
    assert _overlaps(router, PROMPT) == {"a": 0, "b": 0}


def test_routed_prefix_is_assumed_cached_until_the_ttl_expires():
    clock = FakeClock()
    router = _router(clock, ttl_s=10.0)
    first = router.select_worker(_req(0, PROMPT), WORKERS)
    router.on_request_finished("r0", first, 8)
    clock.now += 9.9
    assert _overlaps(router, PROMPT)[first] == 10
    assert router.select_worker(_req(1, PROMPT + [1, 2]), WORKERS) == first
    router.on_request_finished("r1", first, 8)
    clock.now += 9.9  # renewed by the second routing: 19.8 s after the first, 9.9 after it
    assert _overlaps(router, PROMPT)[first] == 10
    clock.now += 0.2
    assert _overlaps(router, PROMPT) == {"a": 0, "b": 0}
    assert router.indexer.distinct_blocks == 0


def test_renewing_a_longer_prompt_keeps_only_the_shared_prefix_alive_longer():
    clock = FakeClock()
    router = _router(clock, ttl_s=10.0)
    long_prompt = PROMPT + list(range(500, 520))  # 15 blocks
    w = router.select_worker(_req(0, long_prompt), WORKERS)
    router.on_request_finished("r0", w, 8)
    clock.now += 5
    router.on_request_finished("r1", router.select_worker(_req(1, PROMPT), WORKERS), 8)
    clock.now += 6  # the long prompt's own tail expired, the shared 10 blocks were renewed
    assert _overlaps(router, long_prompt)[w] == 10


def test_capacity_evicts_the_prefixes_routed_longest_ago():
    clock = FakeClock()
    router = _router(clock, ttl_s=100.0, capacity=15)
    other = list(range(1000, 1040))
    w = router.select_worker(_req(0, PROMPT), WORKERS)
    router.on_request_finished("r0", w, 8)
    # Force the second prompt onto the same worker by making the other one look busy.
    router.loads.routed("busy", "b" if w == "a" else "a", prefill_tokens=10_000, decode_blocks=10_000, now=0.0)
    assert router.select_worker(_req(1, other), WORKERS) == w
    overlaps = _overlaps(router, PROMPT)
    # 20 blocks assumed, 15 fit: 5 of the first prompt's are gone, from its tail.
    assert overlaps[w] == 5 and _overlaps(router, other)[w] == 10
