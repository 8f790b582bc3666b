"""What the router counts per worker between load reports."""

from __future__ import annotations

import pytest

from dynamo_core.protocols.kv_events import LoadMetrics
from dynamo_router_kv.load import PEER_REQUEST_MAX_AGE_S, LoadTracker


def _report(worker: str, active_blocks: int) -> LoadMetrics:
    return LoadMetrics(worker_id=worker, running_requests=1, waiting_requests=0,
                       active_kv_blocks=active_blocks, total_kv_blocks=1000)


def test_prefill_is_released_at_the_first_token_and_decode_at_the_end():
    loads = LoadTracker()
    loads.add_worker("a")
    loads.routed("r1", "a", prefill_tokens=40, decode_blocks=11, now=0.0)
    assert (loads.load("a").prefill_tokens, loads.load("a").active_decode_blocks) == (40, 11)
    loads.first_token("r1", now=0.0)
    loads.first_token("r1", now=0.0)  # once only
    assert (loads.load("a").prefill_tokens, loads.load("a").active_decode_blocks) == (0, 11)
    loads.finished("r1")
    assert (loads.load("a").prefill_tokens, loads.load("a").active_decode_blocks) == (0, 0)


def test_request_failing_before_its_first_token_releases_everything():
    loads = LoadTracker()
    loads.routed("r1", "a", prefill_tokens=40, decode_blocks=11, now=0.0)
    loads.finished("r1")
    loads.finished("r1")  # a second end is ignored
    assert (loads.load("a").prefill_tokens, loads.load("a").decode_blocks) == (0, 0)


def test_a_retried_request_is_counted_once_on_its_last_worker():
    loads = LoadTracker()
    loads.routed("r1", "a", prefill_tokens=40, decode_blocks=11, now=0.0)
    loads.routed("r1", "b", prefill_tokens=40, decode_blocks=11, now=0.0)
    assert loads.load("a").decode_blocks == 0 and loads.load("b").decode_blocks == 11
    assert loads.requests_in_flight == 1


def test_report_counts_plus_what_was_sent_since():
    loads = LoadTracker()
    loads.add_worker("a")
    loads.routed("r1", "a", prefill_tokens=8, decode_blocks=10, now=0.0)
    loads.reported(_report("a", 500))  # includes r1 and other frontends' requests
    assert loads.load("a").active_decode_blocks == 500
    loads.routed("r2", "a", prefill_tokens=8, decode_blocks=20, now=0.0)
    assert loads.load("a").active_decode_blocks == 520
    loads.finished("r1")
    assert loads.load("a").active_decode_blocks == 510


def test_own_tracking_is_the_floor_when_a_report_lags_a_burst():
    loads = LoadTracker()
    loads.add_worker("a")
    loads.reported(_report("a", 0))
    for i in range(5):
        loads.routed(f"r{i}", "a", prefill_tokens=8, decode_blocks=10, now=0.0)
    loads.reported(_report("a", 12))  # the engine shares the prompt's blocks between them
    assert loads.load("a").active_decode_blocks == 50


def test_reports_of_unknown_workers_and_ends_on_removed_workers_are_ignored():
    loads = LoadTracker()
    loads.reported(_report("ghost", 100))
    assert loads.load("ghost").active_decode_blocks == 0 and loads.worker_count == 0
    loads.add_worker("a")
    loads.routed("r1", "a", prefill_tokens=8, decode_blocks=10, now=0.0)
    loads.remove_worker("a")
    loads.first_token("r1", now=0.0)
    loads.finished("r1")
    assert loads.requests_in_flight == 0 and loads.worker_count == 0


def test_running_requests_count_only_requests_past_their_first_token():
    loads = LoadTracker()
    loads.add_worker("a")
    for i in range(3):
        loads.routed(f"r{i}", "a", prefill_tokens=40, decode_blocks=3, now=0.0)
    # Waiting for their first tokens they are queued prefill, not (yet) the decode batch.
    assert loads.load("a").running_requests == 0 and loads.load("a").prefill_tokens == 120
    loads.first_token("r0", now=0.1)
    assert loads.load("a").running_requests == 1
    loads.finished("r1")  # failed before its first token: it never decoded
    assert loads.load("a").running_requests == 1
    loads.reported(LoadMetrics(worker_id="a", running_requests=4, waiting_requests=9,
                               active_kv_blocks=10, total_kv_blocks=1000))
    assert loads.load("a").running_requests == 4  # the report's batch; its waiting ones are queued
    loads.first_token("r2", now=0.2)
    assert loads.load("a").running_requests == 5


def test_now_is_keyword_only():
    loads = LoadTracker()
    with pytest.raises(TypeError):
        loads.routed("r1", "a", 40, 3, 12.5)  # type: ignore[misc]
    loads.routed("r1", "a", 40, 3, now=12.5)
    with pytest.raises(TypeError):
        loads.first_token("r1", 13.0)  # type: ignore[misc]


def test_peer_expiry_visits_only_the_head_of_the_queue():
    loads = LoadTracker()
    for i in range(1000):
        loads.peer_routed("p", f"r{i}", "a", prefill_tokens=1, decode_blocks=1, now=float(i))
    for i in range(1, 1000):
        loads.peer_finished("p", f"r{i}")  # r0's end was lost
    loads.expire_peer_requests(now=10.0)
    assert loads.peer_requests_in_flight == 1 and loads.peer_expiry_queue_length == 1000  # r0 is live
    loads.expire_peer_requests(now=PEER_REQUEST_MAX_AGE_S + 0.5)
    # r0 lapsed; the finished entries behind it were dropped as they reached the head.
    assert loads.peer_requests_in_flight == 0 and loads.peer_expiry_queue_length == 0
    assert loads.load("a").decode_blocks == 0
    # A request routed again keeps its newer entry: the older one is stale when it expires.
    loads.peer_routed("p", "x", "a", prefill_tokens=1, decode_blocks=1, now=1000.0)
    loads.peer_routed("p", "x", "b", prefill_tokens=1, decode_blocks=1, now=1500.0)
    loads.expire_peer_requests(now=1000.0 + PEER_REQUEST_MAX_AGE_S + 1)
    assert loads.peer_requests_in_flight == 1 and loads.load("b").decode_blocks == 1
