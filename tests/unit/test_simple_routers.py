"""The built-in routing policies."""

from __future__ import annotations

import argparse
from collections import Counter

from dynamo_core.plugins import get_registry
from dynamo_core.protocols.engine import PreprocessedRequest, StopConditions
from dynamo_core.protocols.kv_events import LoadMetrics
from dynamo_core.routers.base import RouterContext, WorkerState


def _request(i: int = 0) -> PreprocessedRequest:
    return PreprocessedRequest(request_id=f"r{i}", model="m", token_ids=[1, 2, 3], stop=StopConditions(max_tokens=4))


def _router(name: str, **options):
    spec = get_registry().get("router", name)
    return spec.create(RouterContext(model="m", block_size=16, options=argparse.Namespace(**options)))


def test_round_robin_visits_every_worker_in_turn():
    router = _router("round-robin")
    workers = [WorkerState("a"), WorkerState("b"), WorkerState("c")]
    picks = [router.select_worker(_request(i), workers) for i in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_random_spreads_over_all_workers():
    router = _router("random", router_seed=1)
    workers = [WorkerState("a"), WorkerState("b")]
    counts = Counter(router.select_worker(_request(i), workers) for i in range(400))
    assert set(counts) == {"a", "b"} and min(counts.values()) > 150


def test_least_loaded_prefers_fewest_requests_then_fewest_active_blocks():
    router = _router("least-loaded")
    busy, idle = WorkerState("busy", in_flight=3), WorkerState("idle", in_flight=0)
    assert router.select_worker(_request(), [busy, idle]) == "idle"
    # Equal request counts: the worker reporting fewer active KV blocks wins.
    full = WorkerState("full", load=LoadMetrics(worker_id="full", running_requests=1, waiting_requests=0, active_kv_blocks=900, total_kv_blocks=1000))
    light = WorkerState("light", load=LoadMetrics(worker_id="light", running_requests=1, waiting_requests=0, active_kv_blocks=10, total_kv_blocks=1000))
    assert router.select_worker(_request(), [full, light]) == "light"
    # A worker's own report counts requests from other frontends too.
    shared = WorkerState("shared", in_flight=0, load=LoadMetrics(worker_id="shared", running_requests=5, waiting_requests=2, active_kv_blocks=0, total_kv_blocks=1000))
    mine = WorkerState("mine", in_flight=2)
    assert router.select_worker(_request(), [shared, mine]) == "mine"
