"""The default cost, estimated time to first token: prefix homes hold under load, hot prefixes
spread, and the speeds the router observes shape the choice. Each test states a placement the
block cost (``--kv-overlap-weight 1``) gets wrong; ``test_the_block_cost_gets_these_wrong``
runs the same scenarios against it."""

from __future__ import annotations

import argparse
import logging
import random

import pytest

from dynamo_core.protocols.engine import PreprocessedRequest, StopConditions
from dynamo_core.protocols.kv_events import KvBlock, KvEventBatch, KvSnapshot, KvStored
from dynamo_core.routers.base import RouterContext, WorkerState
from dynamo_router_kv.config import KvRouterConfig
from dynamo_router_kv.router import KvRouter
from dynamo_router_kv.speed import LinearFit, WorkerSpeeds

BLOCK = 16
PREFIX = list(range(700))  # a shared system prompt: 43 full blocks
WORKERS = [WorkerState(w) for w in "abcd"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _router(clock: Clock, workers=WORKERS, **config) -> KvRouter:
    context = RouterContext(model="cost-test", block_size=BLOCK, options=argparse.Namespace())
    router = KvRouter(context, KvRouterConfig(**config), clock=clock, rng=random.Random(0))
    for w in workers:
        router.on_worker_added(w)
        router.on_kv_snapshot(KvSnapshot(worker_id=w.worker_id, event_id=0, stored=[]))
    return router


def _store(router: KvRouter, worker: str, tokens: list[int]) -> None:
    blocks = [KvBlock(5000 + i, tokens[i * BLOCK:(i + 1) * BLOCK]) for i in range(len(tokens) // BLOCK)]
    router.on_kv_events(KvEventBatch(worker_id=worker, event_id=1, events=[KvStored(parent_hash=None, blocks=blocks)]))


def _req(i: int, tokens: list[int]) -> PreprocessedRequest:
    return PreprocessedRequest(request_id=f"r{i}", model="m", token_ids=tokens, stop=StopConditions(max_tokens=8))


def _user(i: int) -> list[int]:
    """A 40-token user message after the shared prefix, unique per request."""
    return PREFIX + [100_000 + i * 40 + t for t in range(40)]


def _busy_home_keeps_its_prefix(router: KvRouter, clock: Clock) -> str:
    """Worker a holds the prefix and decodes 3 earlier requests of it; where does the next go?"""
    _store(router, "a", PREFIX)
    for i in range(3):
        router.loads.routed(f"e{i}", "a", prefill_tokens=44, decode_blocks=48, now=clock.now)
        clock.now += 0.01
        router.on_first_token(f"e{i}", "a")
    return router.select_worker(_req(9, _user(9)), WORKERS)


def test_a_busy_worker_keeps_the_prefix_it_holds_while_its_wait_is_shorter():
    clock = Clock()
    assert _busy_home_keeps_its_prefix(_router(clock), clock) == "a"


def _hot_prefix_picks(router: KvRouter, n: int) -> list[str]:
    """n requests of one prefix held by a, arriving faster than any first token."""
    _store(router, "a", PREFIX)
    return [router.select_worker(_req(i, _user(i)), WORKERS) for i in range(n)]


def test_a_hot_prefix_stays_home_until_the_queue_there_outweighs_prefilling_it_elsewhere():
    picks = _hot_prefix_picks(_router(Clock()), 40)
    # Each request queues its 44 uncached tokens (40 + the partial block) at a; prefilling the
    # whole 740-token prompt on an idle worker is cheaper once ~16 of them wait there.
    home = picks.index(next(w for w in picks if w != "a"))
    assert 14 <= home <= 18, picks
    assert set(picks) == set("abcd"), picks  # then the prefix spreads to every worker


def test_first_tokens_release_the_queue_and_the_prefix_returns_home():
    clock = Clock()
    router = _router(clock)
    picks = _hot_prefix_picks(router, 40)
    for i, w in enumerate(picks):
        clock.now += 0.001
        router.on_first_token(f"r{i}", w)
    assert router.select_worker(_req(99, _user(99)), WORKERS[:1] + WORKERS[2:]) == "a"


def _observe(router: KvRouter, clock: Clock, worker: str, tokens: int, seconds: float, i: int) -> None:
    request = _req(1000 + i, [200_000 + i * 1000 + t for t in range(tokens)])
    only = [w for w in WORKERS if w.worker_id == worker]
    router.select_worker(request, only)
    clock.now += seconds
    router.on_first_token(request.request_id, worker)
    router.on_request_finished(request.request_id, worker, 1)


def _slow_worker_gets_fewer(router: KvRouter, clock: Clock) -> list[str]:
    """a and b have shown their speeds (b: 3× slower); then 8 unique 400-token prompts."""
    for i in range(12):
        tokens = 100 + 50 * i
        _observe(router, clock, "a", tokens, 0.002 + tokens / 10_000, i)
        _observe(router, clock, "b", tokens, 0.002 + tokens / 3_333, 100 + i)
    pair = WORKERS[:2]
    return [router.select_worker(_req(i, [300_000 + i * 1000 + t for t in range(400)]), pair) for i in range(8)]


def test_a_worker_that_has_shown_slower_prefill_gets_less_prefill_work():
    clock = Clock()
    picks = _slow_worker_gets_fewer(_router(clock), clock)
    assert picks.count("a") == 6, picks  # 3×: b takes its first when a's queue is ~3 prompts


def test_the_observed_prefill_speed_is_what_the_cost_uses():
    clock = Clock()
    router = _router(clock)
    for i in range(12):
        tokens = 100 + 50 * i
        _observe(router, clock, "a", tokens, 0.002 + tokens / 10_000, i)
    scores = router.debug_scores(_req(0, list(range(320))), WORKERS[:1])["a"]
    assert scores["prefill_tokens_per_s"] == pytest.approx(10_000, rel=1e-6)
    assert scores["prefill_overhead_s"] == pytest.approx(0.002, rel=1e-6)
    assert scores["prefill_s"] == pytest.approx(0.002 + 320 / 10_000, rel=1e-6)


def _decode_heavy_worker_loses(router: KvRouter, clock: Clock) -> str:
    """Steps have shown to grow 1 ms per running sequence; a runs 30 sequences, b runs 2, and
    a holds one block more of the prompt than b."""
    speeds: WorkerSpeeds = router.speeds
    for batch in (1, 4, 8, 16, 32):
        for _ in range(4):
            speeds.observed_decode(batch, 0.005 + 0.001 * batch)
    for _ in range(20):
        speeds.observed_first_token("a", 100, 0.01)
        speeds.observed_first_token("b", 100, 0.01)
    _store(router, "a", PREFIX[:32])
    _store(router, "b", PREFIX[:16])
    for w, n in (("a", 30), ("b", 2)):
        for i in range(n):
            router.loads.routed(f"{w}{i}", w, prefill_tokens=0, decode_blocks=1, now=0.0)
            router.loads.first_token(f"{w}{i}", now=0.0)  # decoding now
    return router.select_worker(_req(0, PREFIX[:48]), WORKERS[:2])


def test_the_running_batch_slows_decode_and_counts_against_its_worker():
    clock = Clock()
    router = _router(clock)
    assert _decode_heavy_worker_loses(router, clock) == "b"
    scores = router.debug_scores(_req(1, PREFIX[:48]), WORKERS[:2])
    assert scores["a"]["running_requests"] == 30 and scores["a"]["decode_s"] == pytest.approx(0.030, rel=1e-6)
    assert scores["a"]["cost"] == pytest.approx(scores["a"]["prefill_s"] + scores["a"]["decode_s"])


def test_the_block_cost_gets_these_wrong():
    """The same scenarios under ``--kv-overlap-weight 1``: the tests above would fail on it."""
    clock = Clock()
    assert _busy_home_keeps_its_prefix(_router(clock, overlap_weight=1.0), clock) != "a"
    picks = _hot_prefix_picks(_router(Clock(), overlap_weight=1.0), 40)
    assert picks.index(next(w for w in picks if w != "a")) < 14
    clock = Clock()
    assert _slow_worker_gets_fewer(_router(clock, overlap_weight=1.0), clock).count("a") == 4


def test_debug_scores_and_log_show_the_time_terms(caplog):
    clock = Clock()
    router = _router(clock)
    _store(router, "b", PREFIX)
    scores = router.debug_scores(_req(0, _user(0)), WORKERS)
    b = scores["b"]
    assert b["cost_model"] == "ttft" and b["chosen"]
    assert (b["overlap_blocks"], b["uncached_tokens"], b["queued_prefill_tokens"]) == (43, 740 - 43 * BLOCK, 0)
    assert scores["a"]["uncached_tokens"] == 740 and scores["a"]["prefill_s"] > b["prefill_s"]
    with caplog.at_level(logging.DEBUG, logger="dynamo_router_kv"):
        router.select_worker(_req(0, _user(0)), WORKERS)
    [record] = [r for r in caplog.records if r.name == "dynamo_router_kv"]
    message = record.getMessage()
    for term in ("uncached=", "queued=", "speed=", "prefill=", "running=", "decode="):
        assert term in message, message


def test_linear_fit_recovers_overhead_and_slope_and_falls_back_through_the_origin():
    fit = LinearFit()
    assert fit.line() is None
    for x in (100, 300, 500, 700):
        fit.add(x, 0.004 + x * 0.0002)
    intercept, slope = fit.line()
    assert intercept == pytest.approx(0.004) and slope == pytest.approx(0.0002)
    same = LinearFit()
    for _ in range(5):
        same.add(200, 0.05)
    assert same.line() == pytest.approx((0.0, 0.05 / 200))


def test_a_worker_without_samples_of_its_own_uses_the_fit_over_all_workers():
    speeds = WorkerSpeeds(default_prefill_tokens_per_s=1000.0)
    assert speeds.prefill_line("new") == (0.0, 0.001)
    for x in (100, 200, 300, 400):
        for _ in range(3):
            speeds.observed_first_token("a", x, 0.01 + x / 5000)
    assert speeds.prefill_line("new") == pytest.approx((0.01, 1 / 5000))
