"""What the router counts per worker between load reports."""

from __future__ import annotations

from dynamo_core.protocols.kv_events import LoadMetrics
from dynamo_router_kv.load import LoadTracker


def _report(worker: str, active_blocks: int) -> LoadMetrics:
    return LoadMetrics(worker_id=worker, running_requests=1, waiting_requests=0,
                       active_kv_blocks=active_blocks, total_kv_blocks=1000)


def test_prefill_is_released_at_the_first_token_and_decode_at_the_end():
    loads = LoadTracker()
    loads.add_worker("a")
    loads.routed("r1", "a", prefill_tokens=40, decode_blocks=11)
    assert (loads.load("a").prefill_tokens, loads.load("a").active_decode_blocks) == (40, 11)
    loads.first_token("r1")
    loads.first_token("r1")  # once only
    assert (loads.load("a").prefill_tokens, loads.load("a").active_decode_blocks) == (0, 11)
    loads.finished("r1")
    assert (loads.load("a").prefill_tokens, loads.load("a").active_decode_blocks) == (0, 0)


def test_request_failing_before_its_first_token_releases_everything():
    loads = LoadTracker()
    loads.routed("r1", "a", prefill_tokens=40, decode_blocks=11)
    loads.finished("r1")
    loads.finished("r1")  # a second end is ignored
    assert (loads.load("a").prefill_tokens, loads.load("a").decode_blocks) == (0, 0)


def test_a_retried_request_is_counted_once_on_its_last_worker():
    loads = LoadTracker()
    loads.routed("r1", "a", prefill_tokens=40, decode_blocks=11)
    loads.routed("r1", "b", prefill_tokens=40, decode_blocks=11)
    assert loads.load("a").decode_blocks == 0 and loads.load("b").decode_blocks == 11
    assert loads.requests_in_flight == 1


def test_report_counts_plus_what_was_sent_since():
    loads = LoadTracker()
    loads.add_worker("a")
    loads.routed("r1", "a", prefill_tokens=8, decode_blocks=10)
    loads.reported(_report("a", 500))  # includes r1 and other frontends' requests
    assert loads.load("a").active_decode_blocks == 500
    loads.routed("r2", "a", prefill_tokens=8, decode_blocks=20)
    assert loads.load("a").active_decode_blocks == 520
    loads.finished("r1")
    assert loads.load("a").active_decode_blocks == 510


def test_own_tracking_is_the_floor_when_a_report_lags_a_burst():
    loads = LoadTracker()
    loads.add_worker("a")
    loads.reported(_report("a", 0))
    for i in range(5):
        loads.routed(f"r{i}", "a", prefill_tokens=8, decode_blocks=10)
    loads.reported(_report("a", 12))  # the engine shares the prompt's blocks between them
    assert loads.load("a").active_decode_blocks == 50


def test_reports_of_unknown_workers_and_ends_on_removed_workers_are_ignored():
    loads = LoadTracker()
    loads.reported(_report("ghost", 100))
    assert loads.load("ghost").active_decode_blocks == 0 and loads.worker_count == 0
    loads.add_worker("a")
    loads.routed("r1", "a", prefill_tokens=8, decode_blocks=10)
    loads.remove_worker("a")
    loads.first_token("r1")
    loads.finished("r1")
    assert loads.requests_in_flight == 0 and loads.worker_count == 0
