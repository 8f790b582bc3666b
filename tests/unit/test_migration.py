"""The continuation a migrated request is sent as, and which requests may not migrate."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from dynamo_core.frontend.errors import EngineError
from dynamo_core.frontend.migration import Migration
from dynamo_core.protocols.engine import (
    DisaggParams,
    EngineOutput,
    GuidedDecoding,
    KvTransferParams,
    PreprocessedRequest,
    StopConditions,
)


def _request(**kwargs) -> PreprocessedRequest:
    return PreprocessedRequest(request_id="r1", model="m", token_ids=[1, 2, 3],
                               stop=StopConditions(max_tokens=10, min_tokens=4), **kwargs)


def test_continuation_carries_prompt_and_streamed_tokens_and_drops_repeated_prompt_usage():
    migration = Migration(_request(), limit=2)
    first = EngineOutput(token_ids=[7, 8], prompt_tokens=3, cached_tokens=0)
    migration.on_output(first)
    assert first.prompt_tokens == 3  # the first worker's counts stand
    continuation = migration.continuation()
    assert continuation.token_ids == [1, 2, 3, 7, 8]
    assert (continuation.stop.max_tokens, continuation.stop.min_tokens, continuation.resumed_tokens) == (8, 2, 2)
    assert continuation.request_id == "r1"
    again = EngineOutput(token_ids=[9], prompt_tokens=5, cached_tokens=5)
    migration.on_output(again)
    assert again.prompt_tokens is None and again.cached_tokens is None  # counted once
    second = migration.continuation()
    assert second.token_ids == [1, 2, 3, 7, 8, 9] and second.stop.max_tokens == 7 and second.resumed_tokens == 3
    assert migration.refusal() is not None  # the limit of 2 moves is used up


def test_a_decode_phase_continues_as_a_whole_request_after_the_prefill_token():
    kv = KvTransferParams(worker_id="p", hold_id="h", num_tokens=3, block_size=16)
    # The decode phase's prompt is the prompt plus the prefill worker's token (4).
    decode = PreprocessedRequest(request_id="r1", model="m", token_ids=[1, 2, 3, 4], stop=StopConditions(max_tokens=9),
                                 disagg=DisaggParams(phase="decode", kv=kv))
    migration = Migration(decode, limit=1)
    migration.on_output(EngineOutput(token_ids=[5]))
    continuation = migration.continuation()
    assert continuation.disagg is None and continuation.token_ids == [1, 2, 3, 4, 5]
    assert continuation.resumed_tokens == 2 and continuation.stop.max_tokens == 8


def test_every_token_streamed_needs_no_continuation():
    migration = Migration(_request(), limit=1)
    migration.on_output(EngineOutput(token_ids=list(range(10))))
    assert migration.continuation() is None


def test_structured_output_prefill_phases_and_limit_zero_do_not_migrate():
    assert "structured" in Migration(_request(guided=GuidedDecoding(json_object=True)), 3).refusal()
    assert "prefill" in Migration(_request(disagg=DisaggParams(phase="prefill")), 3).refusal()
    assert "off" in Migration(_request(), 0).refusal()
    assert Migration(_request(), 3).refusal() is None


def test_next_attempt_counts_a_move_refuses_past_the_limit_and_ends_a_finished_stream():
    def moved() -> float:
        return REGISTRY.get_sample_value("dynamo_frontend_migrations_total", {"model": "m", "reason": "stalled"}) or 0.0

    before = moved()
    migration = Migration(_request(), limit=1)
    migration.on_output(EngineOutput(token_ids=[7]))
    cause = TimeoutError("no output")
    continuation = migration.next_attempt("m", "stalled", "worker w failed mid-stream", cause, "elsewhere")
    assert continuation is migration.request and continuation.token_ids == [1, 2, 3, 7]
    assert moved() == before + 1
    with pytest.raises(EngineError) as refused:
        migration.next_attempt("m", "stalled", "worker v failed mid-stream", cause, "elsewhere")
    assert refused.value.message.startswith("worker v failed mid-stream; the request cannot move: it already moved 1")
    assert refused.value.__cause__ is cause and moved() == before + 1
    done = Migration(_request(), limit=1)
    done.on_output(EngineOutput(token_ids=list(range(10))))
    assert done.next_attempt("m", "stalled", "worker w failed", cause, "elsewhere") is None
