"""Routers of several frontends share their in-flight requests (`RouterContext.share` on one
side, `Router.on_peer_request` on the other): a second router does not undo the first one's
placement, and a gone peer's requests stop counting."""

from __future__ import annotations

import argparse
import random

import msgspec

from dynamo_core.protocols.engine import PreprocessedRequest, StopConditions
from dynamo_core.protocols.kv_events import KvSnapshot
from dynamo_core.protocols.routing import PeerRequest
from dynamo_core.routers.base import RouterContext, WorkerState
from dynamo_router_kv.load import PEER_REQUEST_MAX_AGE_S
from dynamo_router_kv.router import KvRouter

WORKERS = [WorkerState("a"), WorkerState("b")]


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _pair(clock: Clock) -> tuple[KvRouter, KvRouter]:
    """Two routers whose shared changes reach each other, stamped as a peer plane does."""
    routers: list[KvRouter] = []

    def deliver_from(name: str):
        def share(request: PeerRequest) -> None:
            other = routers[1] if name == "one" else routers[0]
            other.on_peer_request(msgspec.structs.replace(request, frontend_id=name))
        return share

    for name in ("one", "two"):
        context = RouterContext(model="m", block_size=16, options=argparse.Namespace(), share=deliver_from(name))
        router = KvRouter(context, clock=clock, rng=random.Random(0))
        for w in WORKERS:
            router.on_worker_added(w)
            router.on_kv_snapshot(KvSnapshot(worker_id=w.worker_id, event_id=0, stored=[]))
        routers.append(router)
    return routers[0], routers[1]


def _req(i: int) -> PreprocessedRequest:
    return PreprocessedRequest(request_id=f"r{i}", model="m", token_ids=[i * 1000 + t for t in range(400)],
                               stop=StopConditions(max_tokens=8))


def test_a_peer_routes_around_the_other_routers_queued_prefill_and_forgets_it_when_done():
    clock = Clock()
    one, two = _pair(clock)
    first = one.select_worker(_req(1), WORKERS)
    assert two.loads.load(first).prefill_tokens == 400
    assert two.select_worker(_req(2), WORKERS) != first
    one.on_first_token("r1", first)
    assert two.loads.load(first).prefill_tokens == 0 and two.loads.load(first).running_requests == 1
    one.on_request_finished("r1", first, 8)
    assert two.loads.load(first).running_requests == 0 and two.loads.peer_requests_in_flight == 0


def test_a_gone_peers_requests_stop_counting():
    clock = Clock()
    one, two = _pair(clock)
    for i in range(3):
        one.select_worker(_req(i), WORKERS)
    assert two.loads.peer_requests_in_flight == 3
    two.on_peer_gone("one")
    assert two.loads.peer_requests_in_flight == 0
    assert all(two.loads.load(w.worker_id).prefill_tokens == 0 for w in WORKERS)


def test_a_peer_request_whose_end_was_lost_lapses_after_the_maximum_age():
    clock = Clock()
    one, two = _pair(clock)
    one.select_worker(_req(1), WORKERS)
    clock.now += PEER_REQUEST_MAX_AGE_S + 1
    one.select_worker(_req(2), WORKERS)  # any peer message sweeps the stale ones
    assert two.loads.peer_requests_in_flight == 1
