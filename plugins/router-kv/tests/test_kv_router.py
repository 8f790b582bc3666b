"""The kv router's decisions, observability and plugin registration."""

from __future__ import annotations

import argparse
import logging
import random
from collections import Counter

import msgspec
from prometheus_client import REGISTRY

from dynamo_core.protocols.engine import DisaggParams, KvTransferParams, PreprocessedRequest, StopConditions
from dynamo_core.protocols.kv_events import KvBlock, KvEventBatch, KvSnapshot, KvStored, LoadMetrics
from dynamo_core.routers.base import RouterContext, WorkerState
from dynamo_router_kv import plugin
from dynamo_router_kv.config import KvRouterConfig
from dynamo_router_kv.router import KvRouter

BLOCK = 4
PROMPT = list(range(40))  # 10 blocks
WORKERS = [WorkerState("a"), WorkerState("b")]


def _router(model: str = "router-test", workers=WORKERS, **config) -> KvRouter:
    context = RouterContext(model=model, block_size=BLOCK, options=argparse.Namespace())
    router = KvRouter(context, KvRouterConfig(**config), rng=random.Random(0))
    for w in workers:
        router.on_worker_added(w)
        router.on_kv_snapshot(KvSnapshot(worker_id=w.worker_id, event_id=0, stored=[]))
    return router


def _req(i, tokens) -> PreprocessedRequest:
    return PreprocessedRequest(request_id=f"r{i}", model="m", token_ids=list(tokens), stop=StopConditions(max_tokens=8))


def _store(router: KvRouter, worker: str, event_id: int, tokens: list[int], first_hash: int = 1000) -> None:
    blocks = [KvBlock(first_hash + i, tokens[i * BLOCK : (i + 1) * BLOCK]) for i in range(len(tokens) // BLOCK)]
    router.on_kv_events(KvEventBatch(worker_id=worker, event_id=event_id,
                                     events=[KvStored(parent_hash=None, blocks=blocks)]))


def test_request_goes_to_the_worker_holding_its_prefix():
    router = _router()
    _store(router, "b", 1, PROMPT[:32])
    assert router.select_worker(_req(0, PROMPT + [1, 2]), WORKERS) == "b"


def test_longer_cached_prefix_wins():
    workers = [WorkerState("a"), WorkerState("b"), WorkerState("c")]
    router = _router(workers=workers)
    _store(router, "a", 1, PROMPT[:12])
    _store(router, "b", 1, PROMPT[:28])
    assert router.select_worker(_req(0, PROMPT), workers) == "b"


def test_load_spreads_evenly_when_prefixes_are_unique():
    workers = [WorkerState(w) for w in "abcd"]
    router = _router(workers=workers)
    picks = Counter(router.select_worker(_req(i, [i * 100 + t for t in range(40)]), workers) for i in range(40))
    assert picks == Counter({w: 10 for w in "abcd"})


def test_block_cost_spreads_a_burst_of_identical_requests_once_load_accrues():
    router = _router(overlap_weight=1.0)
    _store(router, "a", 1, PROMPT)
    picks = [router.select_worker(_req(i, PROMPT), WORKERS) for i in range(8)]
    assert picks[0] == "a"  # the cache hit first
    assert 3 <= picks.count("b") <= 5, picks  # then a's tracked load outweighs it
    for i, w in enumerate(picks):
        router.on_first_token(f"r{i}", w)
        router.on_request_finished(f"r{i}", w, 8)
    assert router.select_worker(_req(99, PROMPT), WORKERS) == "a"  # load released: back to the cache


def test_block_cost_counts_worker_reported_load_against_it():
    router = _router(overlap_weight=1.0)
    _store(router, "a", 1, PROMPT)
    router.on_load(LoadMetrics(worker_id="a", running_requests=50, waiting_requests=0,
                               active_kv_blocks=500, total_kv_blocks=1000))
    assert router.select_worker(_req(0, PROMPT), WORKERS) == "b"


def test_zero_overlap_weight_routes_by_load_alone():
    router = _router(overlap_weight=0.0)
    _store(router, "a", 1, PROMPT)
    router.loads.routed("other", "a", prefill_tokens=1, decode_blocks=1, now=0.0)
    assert router.select_worker(_req(0, PROMPT), WORKERS) == "b"


def test_debug_scores_show_overlap_cost_and_chosen_worker_without_routing():
    router = _router(overlap_weight=1.0)
    _store(router, "b", 1, PROMPT[:32])
    scores = router.debug_scores(_req(0, PROMPT), WORKERS)
    assert scores["b"]["overlap_blocks"] == 8 and scores["a"]["overlap_blocks"] == 0
    assert scores["b"]["blocks_to_prefill"] == 2 and scores["a"]["cost"] == 10.0 and scores["b"]["cost"] == 2.0
    assert scores["b"]["chosen"] and not scores["a"]["chosen"]
    assert scores["b"]["probability"] == 1.0 and scores["a"]["prompt_blocks"] == 10
    assert router.loads.requests_in_flight == 0


def test_metrics_count_decisions_and_requested_and_matched_blocks():
    model = "metrics-test"
    router = _router(model)
    _store(router, "a", 1, PROMPT[:20])
    router.select_worker(_req(0, PROMPT + [1]), WORKERS)  # 10 full blocks, 5 cached on a

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, {"model": model, **labels})

    assert value("dynamo_router_kv_decisions_total", worker="a") == 1
    assert value("dynamo_router_kv_requested_blocks_total") == 10
    assert value("dynamo_router_kv_matched_blocks_total") == 5
    assert value("dynamo_router_kv_indexed_blocks") == 5
    assert value("dynamo_router_kv_workers") == 2
    assert value("dynamo_router_kv_events_total", kind="stored") == 1
    assert value("dynamo_router_kv_decision_seconds_count") == 1
    router.on_worker_removed("a")
    assert value("dynamo_router_kv_decisions_total", worker="a") is None
    assert value("dynamo_router_kv_workers") == 1 and value("dynamo_router_kv_indexed_blocks") == 0


def test_routers_of_several_models_share_the_metrics():
    first, second = _router("model-one"), _router("model-two")
    first.select_worker(_req(0, PROMPT), WORKERS)
    second.select_worker(_req(0, PROMPT), WORKERS)
    second.select_worker(_req(1, PROMPT), WORKERS)
    assert REGISTRY.get_sample_value("dynamo_router_kv_requested_blocks_total", {"model": "model-one"}) == 10
    assert REGISTRY.get_sample_value("dynamo_router_kv_requested_blocks_total", {"model": "model-two"}) == 20


def test_each_decision_is_logged_with_its_scores_at_debug(caplog):
    router = _router()
    with caplog.at_level(logging.DEBUG, logger="dynamo_router_kv"):
        router.select_worker(_req(0, PROMPT), WORKERS)
    [record] = [r for r in caplog.records if r.name == "dynamo_router_kv"]
    assert "r0" in record.getMessage() and "cost=" in record.getMessage()


def test_plugin_offers_the_kv_router_and_its_options():
    [spec] = plugin.dynamo_routers()
    assert spec.name == "kv"
    parser = argparse.ArgumentParser()
    plugin.dynamo_router_options(router="round-robin", group=parser.add_argument_group("router options"))
    assert parser.parse_args([]) == argparse.Namespace()
    plugin.dynamo_router_options(router="kv", group=parser.add_argument_group("kv"))
    defaults = parser.parse_args([])
    assert (defaults.kv_overlap_weight, defaults.router_temperature, defaults.no_kv_events, defaults.router_ttl) == (
        None, 0.0, False, 120.0)
    options = parser.parse_args(["--kv-overlap-weight", "2", "--router-temperature", "0.5",
                                 "--no-kv-events", "--router-ttl", "30"])
    router = spec.create(RouterContext(model="plugin-test", block_size=16, options=options))
    assert router.config == KvRouterConfig(overlap_weight=2.0, temperature=0.5, use_kv_events=False, ttl_s=30.0)
    assert not router.wants_kv_events()
    assert spec.create(RouterContext(model="plugin-test", block_size=16, options=defaults)).wants_kv_events()


def test_a_decode_request_with_transferred_kv_adds_no_queued_prefill_to_its_worker():
    """In disaggregated serving the decode pool's router sees the whole prompt, but its KV
    comes from the prefill worker: the decode worker computes at most the last token."""
    router = _router()
    kv = KvTransferParams(worker_id="p1", hold_id="h", num_tokens=len(PROMPT), block_size=BLOCK)
    decode = msgspec.structs.replace(_req(0, PROMPT), disagg=DisaggParams(phase="decode", kv=kv))
    chosen = router.select_worker(decode, WORKERS)
    load = router.loads.load(chosen)
    assert load.prefill_tokens == 1 and load.active_decode_blocks == 11  # its KV does occupy the worker
    # A request served whole on the same router still queues its prompt as prefill work.
    other = "b" if chosen == "a" else "a"
    router.loads.routed("x", chosen, prefill_tokens=0, decode_blocks=50, now=0.0)  # steer the next one away
    assert router.select_worker(_req(1, PROMPT), WORKERS) == other
    assert router.loads.load(other).prefill_tokens == len(PROMPT)
