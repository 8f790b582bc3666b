"""The engine's request loop, output mapping, load and disaggregation, around stand-ins shaped
as TensorRT-LLM's own classes (TensorRT-LLM cannot be installed here: see the README).

Stand-ins, each mirroring a class of TensorRT-LLM's source (as of the releases the README names):
- `Logprob`, `CompletionOutput`: `tensorrt_llm/executor/result.py` (same fields; `token_ids`
  and `logprobs` cumulative; `finish_reason` 'stop'|'length'|'timeout'|'cancelled', and
  'not_finished' for a context-only request).
- `StandInResult`: `GenerationResult` / `RequestOutput` (`executor/result.py`,
  `llmapi/llm.py`): one object that `async for` returns updated in place after each step,
  `finished`, `prompt_token_ids`, `cached_tokens`, `abort()`, awaitable (`aresult`).
- `DisaggregatedParams`: `tensorrt_llm/disaggregated_params.py` (later
  `executor/params/disaggregation.py`; a kw-only dataclass whose `__post_init__` refuses unknown
  request types). `first_gen_log_probs` holds, per first token, `{token_id: Logprob}` (or a
  float), and a generation-only request's first token takes its logprob from there: without
  it the stand-in fails as `GenerationResultBase._handle_sequence`'s length check does.
- `IterationResult` (`executor/result.py`) and `StandInLLM`: `LLM.generate_async`,
  `get_kv_cache_events_async` and `get_stats_async` (`llmapi/llm.py`, `executor/executor.py`:
  the same `IterationResult` each call, JSON strings decoded as it yields them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from dynamo_core.engines.base import EngineContext, KvEventSink
from dynamo_core.protocols.engine import (
    GuidedDecoding,
    DisaggParams,
    FinishReason,
    KvPullReport,
    OutputOptions,
    PreprocessedRequest,
    StopConditions,
)
from dynamo_core.protocols.kv_events import KvBlock, KvStored
from dynamo_trtllm import disagg
from dynamo_trtllm.engine import TrtllmEngine
from dynamo_trtllm.options import llm_arguments
from dynamo_trtllm.outputs import TIMEOUT_ERROR


@dataclass(slots=True)
class Logprob:
    logprob: float
    rank: int | None = None


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: list = field(default_factory=list)
    prompt_logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    disaggregated_params: Any = None
    request_perf_metrics: Any = None


@dataclass(slots=True, kw_only=True)
class DisaggregatedParams:
    request_type: str | None = None
    first_gen_tokens: list[int] | None = None
    ctx_request_id: int | None = None
    opaque_state: bytes | None = None
    draft_tokens: list[int] | None = None
    disagg_request_id: int | None = None
    ctx_dp_rank: int | None = None
    ctx_info_endpoint: str | None = None
    first_gen_log_probs: list | None = None

    def __post_init__(self):
        if self.request_type not in (None, "context_only", "generation_only", "context_and_generation"):
            raise ValueError(f"Unknown request type: {self.request_type}")


OPAQUE = bytes(range(256)) * 4  # not UTF-8, not JSON: must travel as bytes


class StandInResult:
    """Steps through `steps`: each a list of new token ids; the last finishes with `reason`."""

    def __init__(self, request_id: int, prompt: list[int], params: dict, steps: list[list[int]], reason: str,
                 disaggregated: DisaggregatedParams | None, cached: int, logprob_top: int | None,
                 kv_arrived: asyncio.Event | None = None):
        self.request_id, self.prompt_token_ids, self.params = request_id, prompt, params
        self.outputs = [CompletionOutput(0)]
        self.cached_tokens = cached
        self.finished = False
        self.aborted = False
        self._steps, self._reason, self._disaggregated, self._top = list(steps), reason, disaggregated, logprob_top
        # A generation-only request's first update waits for its KV (set: it has arrived).
        self._kv_arrived = kv_arrived
        self.aborted_before_kv = False

    def _step(self) -> None:
        out = self.outputs[0]
        new = self._steps.pop(0)
        first = not out.token_ids
        out.token_ids.extend(new)
        if self._top:
            generation_only = self._disaggregated is not None and self._disaggregated.request_type == "generation_only"
            if first and generation_only:
                # The context's first token, with the logprob the context computed.
                out.logprobs.extend(self._disaggregated.first_gen_log_probs or [])
                new = new[1:]
            out.logprobs.extend({t: Logprob(-0.5, 1), t + 1: Logprob(-1.5, 2)} for t in new)
            assert len(out.logprobs) == len(out.token_ids), "logprobs and tokens differ in length"
        if not self._steps:
            self.finished = True
            out.finish_reason = self._reason
            if self._disaggregated is not None and self._disaggregated.request_type == "context_only":
                out.disaggregated_params = DisaggregatedParams(
                    request_type="context_only", first_gen_tokens=list(new), ctx_request_id=self.request_id,
                    opaque_state=OPAQUE, draft_tokens=None,
                    first_gen_log_probs=list(out.logprobs) if self._top else None)

    def abort(self) -> None:
        self.aborted = True
        if self._kv_arrived is not None and not self._kv_arrived.is_set():
            self.aborted_before_kv = True

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.finished:
            raise StopAsyncIteration
        if self._kv_arrived is not None:
            await self._kv_arrived.wait()
        await asyncio.sleep(0)
        self._step()
        return self

    async def aresult(self):
        while not self.finished:
            await asyncio.sleep(0)
            self._step()
        return self

    def __await__(self):
        return self.aresult().__await__()


class IterationResult:
    """`executor/result.py:IterationResult`: one per queue, handed out again by every
    `get_*_async(timeout)` call; a read that times out marks it done, and it stays done until
    `mark_undone()` (which the executor calls when a request is submitted)."""

    def __init__(self, items: list[dict] | None):
        self.queue: asyncio.Queue = asyncio.Queue()
        for item in items or ():
            self.queue.put_nowait(json.dumps(item))
        self._done, self._timeout = False, 2.0

    def set_timeout(self, timeout: float) -> None:
        self._timeout = timeout

    def mark_undone(self) -> None:
        self._done = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._done:
            raise StopAsyncIteration
        try:
            return json.loads(await asyncio.wait_for(self.queue.get(), self._timeout))
        except asyncio.TimeoutError:
            self._done = True
            raise StopAsyncIteration


class StandInLLM:
    def __init__(self, steps: list[list[int]], reason: str = "length", cached: int = 0, refuse: str | None = None,
                 kv_events: list[dict] | None = None, stats: list[dict] | None = None,
                 kv_arrived: asyncio.Event | None = None):
        self.steps, self.reason, self.cached, self.refuse = steps, reason, cached, refuse
        self.kv_arrived = kv_arrived
        self.kv_events, self.stats = IterationResult(kv_events), IterationResult(stats)
        self.calls: list[dict] = []
        self.results: list[StandInResult] = []

    def generate_async(self, inputs, sampling_params=None, streaming=False, disaggregated_params=None, **_):
        if self.refuse:
            raise ValueError(self.refuse)
        self.calls.append({"inputs": inputs, "params": sampling_params, "streaming": streaming,
                           "disaggregated_params": disaggregated_params})
        steps = self.steps[:1] if disaggregated_params and disaggregated_params.request_type == "context_only" else self.steps
        generation_only = disaggregated_params is not None and disaggregated_params.request_type == "generation_only"
        result = StandInResult(len(self.calls), inputs["prompt_token_ids"], sampling_params, steps, self.reason,
                               disaggregated_params, self.cached, sampling_params.get("logprobs"),
                               self.kv_arrived if generation_only else None)
        self.results.append(result)
        return result

    def get_kv_cache_events_async(self, timeout: float = 2):
        self.kv_events.set_timeout(timeout)
        return self.kv_events

    def get_stats_async(self, timeout: float = 2):
        self.stats.set_timeout(timeout)
        return self.stats

    def shutdown(self) -> None:
        pass


class Sink(KvEventSink):
    def __init__(self):
        self.published: list = []

    def publish(self, events):
        self.published.extend(events)


def engine_with(llm: StandInLLM, role: str = "agg", block_size: int = 4) -> TrtllmEngine:
    options = argparse.Namespace(trtllm_tokens_per_block=block_size, trtllm_event_buffer_max_size=16)
    context = EngineContext(model_path="/m", served_name="m", options=options, role=role, worker_id="W", kv_events=Sink())
    engine = TrtllmEngine(context, llm_arguments(options, "/m", role))
    engine.bind(llm, lambda **kwargs: kwargs, DisaggregatedParams, Logprob)
    return engine


def request(max_tokens: int = 8, prompt: list[int] | None = None, **kwargs) -> PreprocessedRequest:
    return PreprocessedRequest(request_id="req-1", model="m", token_ids=prompt or [1, 2, 3, 4, 5],
                               stop=StopConditions(max_tokens=max_tokens, stop_token_ids=[2]), **kwargs)


async def collect(engine, req):
    return [o async for o in engine.generate(req)]


async def test_cumulative_outputs_become_deltas_with_counts_on_the_first():
    llm = StandInLLM(steps=[[10], [], [11, 12], [13]], cached=4)
    outputs = await collect(engine_with(llm), request())
    assert [o.token_ids for o in outputs] == [[10], [11, 12], [13]]  # the empty step emits nothing
    assert (outputs[0].prompt_tokens, outputs[0].cached_tokens) == (5, 4)
    assert outputs[1].prompt_tokens is None and outputs[-1].finish_reason is FinishReason.LENGTH
    call = llm.calls[0]
    assert call["inputs"] == {"prompt_token_ids": [1, 2, 3, 4, 5]} and call["streaming"] is True
    assert call["params"]["end_id"] == 2 and call["params"]["max_tokens"] == 8
    assert call["disaggregated_params"] is None and not llm.results[0].aborted


@pytest.mark.parametrize("reason, ours", [("stop", FinishReason.STOP), ("length", FinishReason.LENGTH),
                                          ("cancelled", FinishReason.CANCELLED), ("timeout", FinishReason.ERROR),
                                          ("not_finished", FinishReason.LENGTH), ("a-later-one", FinishReason.STOP)])
async def test_finish_reasons_map(reason, ours):
    outputs = await collect(engine_with(StandInLLM(steps=[[10], [11]], reason=reason)), request())
    assert outputs[-1].finish_reason is ours
    assert outputs[-1].error == (TIMEOUT_ERROR if reason == "timeout" else None)
    assert all(o.finish_reason is None for o in outputs[:-1])


async def test_logprobs_follow_each_delta_with_the_top_alternatives():
    llm = StandInLLM(steps=[[10], [11, 12]])
    outputs = await collect(engine_with(llm), request(output=OutputOptions(logprobs=1)))
    assert llm.calls[0]["params"]["logprobs"] == 1
    assert [o.logprobs for o in outputs] == [[-0.5], [-0.5, -0.5]]
    assert [[a.token_id for a in alts] for alts in outputs[1].top_logprobs] == [[11], [12]]


async def test_closing_the_stream_aborts_the_request():
    llm = StandInLLM(steps=[[i] for i in range(1000)])
    engine = engine_with(llm)
    stream = engine.generate(request(1000))
    await stream.__anext__()
    assert engine.load_metrics("W").waiting_requests + engine.load_metrics("W").running_requests == 1
    await stream.aclose()
    assert llm.results[0].aborted and engine._load.in_flight == 0


async def test_cancelling_the_consumer_aborts_the_request():
    llm = StandInLLM(steps=[[i] for i in range(10**5)])
    engine = engine_with(llm)

    async def consume():
        async for _ in engine.generate(request(10**5)):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert llm.results[0].aborted and engine._load.in_flight == 0


async def test_a_finished_request_is_not_aborted():
    llm = StandInLLM(steps=[[10], [11]])
    await collect(engine_with(llm), request())
    assert not llm.results[0].aborted


async def test_a_request_trtllm_refuses_ends_with_an_error_delta():
    outputs = await collect(engine_with(StandInLLM(steps=[[1]], refuse="prompt is longer than max_seq_len")), request())
    assert len(outputs) == 1 and outputs[0].finish_reason is FinishReason.ERROR
    assert "max_seq_len" in outputs[0].error


async def test_a_request_the_adapter_cannot_express_never_reaches_trtllm():
    llm = StandInLLM(steps=[[1]])
    bad = request(guided=GuidedDecoding(regex="[0-9]+"))
    outputs = await collect(engine_with(llm), bad)
    assert outputs[0].finish_reason is FinishReason.ERROR and "structured output" in outputs[0].error and llm.calls == []


async def test_iteration_stats_become_load_capped_by_requests_in_flight():
    # Shaped as the C++ IterationStats JSON that get_stats_async yields.
    stats = {"iter": 7, "numActiveRequests": 3, "numQueuedRequests": 0, "maxNumActiveRequests": 64,
             "kvCacheStats": {"maxNumBlocks": 500, "freeNumBlocks": 460, "usedNumBlocks": 40, "tokensPerBlock": 4}}
    llm = StandInLLM(steps=[[i] for i in range(100)], stats=[stats])
    engine = engine_with(llm)
    await engine._drain_stats(0.01)
    assert engine.load_metrics("W").active_kv_blocks == 0  # nothing in flight here
    stream = engine.generate(request(100))
    await stream.__anext__()
    load = engine.load_metrics("W")
    assert (load.running_requests, load.waiting_requests, load.active_kv_blocks, load.total_kv_blocks) == (1, 0, 40, 500)
    await stream.aclose()


async def test_kv_events_are_published_and_mirrored_for_snapshots():
    # Shaped as KVCacheEventSerializer writes them (tensorrt_llm/_utils.py).
    def block(h, tokens):
        return {"type": "stored_block", "block_hash": h, "cache_level": 0, "priority": 35,
                "tokens": [{"type": "unique_token", "token_id": t, "token_extra_id": 0} for t in tokens]}

    events = [
        {"event_id": 0, "window_size": 4096, "data": {"type": "created", "num_blocks_per_cache_level": [500, 0]}},
        {"event_id": 1, "window_size": 4096, "data": {"type": "stored", "parent_hash": None,
                                                      "blocks": [block(11, [1, 2, 3, 4]), block(12, [5, 6, 7, 8])]}},
        {"event_id": 2, "window_size": 4096, "data": {"type": "removed", "block_hashes": [12]}},
    ]
    engine = engine_with(StandInLLM(steps=[[1]], kv_events=events))
    from dynamo_trtllm.kv_events import KvEventTranslator

    engine._translator = KvEventTranslator(4)
    await engine._drain_kv_events(0.01)
    assert engine._translator.kv_capacity_blocks == 500
    assert len(engine._context.kv_events.published) == 2
    assert engine.kv_snapshot() == [KvStored(parent_hash=None, blocks=[KvBlock(11, [1, 2, 3, 4])])]


async def test_prefill_and_decode_carry_the_context_state_as_bytes_through_dynamo():
    prefill_llm = StandInLLM(steps=[[42]], reason="not_finished")
    prefill = engine_with(prefill_llm, role="prefill")
    ask = request(1)
    ask.disagg = DisaggParams(phase="prefill")
    [answer] = await collect(prefill, ask)
    call = prefill_llm.calls[0]
    assert call["disaggregated_params"].request_type == "context_only" and call["streaming"] is False
    assert answer.token_ids == [42] and answer.finish_reason is FinishReason.LENGTH
    kv = answer.kv_transfer
    assert (kv.worker_id, kv.hold_id, kv.num_tokens, kv.block_size, kv.decode_samples_first_token) == ("W", "req-1", 5, 4, False)

    # The frontend's decode request: the prompt plus the first token, one token fewer; it
    # crosses the request plane as msgpack.
    follow = request(3, prompt=[1, 2, 3, 4, 5, 42])
    follow.disagg = DisaggParams(phase="decode", kv=kv)
    follow = msgspec.msgpack.decode(msgspec.msgpack.encode(follow), type=PreprocessedRequest)
    decode_llm = StandInLLM(steps=[[42], [43], [44, 45]])  # generation-only output starts with the first token
    outputs = await collect(engine_with(decode_llm, role="decode"), follow)
    call = decode_llm.calls[0]
    params = call["disaggregated_params"]
    assert params.request_type == "generation_only" and params.first_gen_tokens == [42]
    assert params.opaque_state == OPAQUE and params.ctx_request_id == 1
    assert call["inputs"] == {"prompt_token_ids": [1, 2, 3, 4, 5]} and call["params"]["max_tokens"] == 4
    assert [o.token_ids for o in outputs] == [[43], [44, 45]]
    report = outputs[0].kv_pull
    assert (report.blocks, report.bytes, report.recomputed) == (2, 0, None) and outputs[1].kv_pull is None


async def test_a_decode_request_without_context_state_computes_its_prompt_and_says_why():
    llm = StandInLLM(steps=[[7], [8]])
    follow = request(2, prompt=[1, 2, 3, 4, 5, 42])
    follow.disagg = DisaggParams(phase="decode", kv=None)
    outputs = await collect(engine_with(llm, role="decode"), follow)
    assert llm.calls[0]["disaggregated_params"] is None
    assert llm.calls[0]["inputs"] == {"prompt_token_ids": [1, 2, 3, 4, 5, 42]}
    assert [o.token_ids for o in outputs] == [[7], [8]] and "no TensorRT-LLM context state" in outputs[0].kv_pull.recomputed


async def _decode_request_waiting_for_kv(kv_arrived: asyncio.Event):
    """A decode worker's engine and a consumer of one of its generation-only requests whose KV
    has not arrived yet."""
    kv = disagg.prefill_result(DisaggregatedParams(request_type="context_only", first_gen_tokens=[42], opaque_state=b"x"),
                               worker_id="P", request_id="r", prompt_tokens=5, block_size=4)
    follow = request(100, prompt=[1, 2, 3, 4, 5, 42])
    follow.disagg = DisaggParams(phase="decode", kv=kv)
    llm = StandInLLM(steps=[[42]] + [[i] for i in range(10**5)], kv_arrived=kv_arrived)
    engine = engine_with(llm, role="decode")

    async def consume():
        async for _ in engine.generate(follow):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    return engine, llm, task


async def test_a_decode_request_cancelled_while_its_kv_is_in_flight_is_aborted_once_it_arrives():
    kv_arrived = asyncio.Event()
    engine, llm, task = await _decode_request_waiting_for_kv(kv_arrived)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0.01)
    result = llm.results[0]
    # Not while the transfer runs; until then the request still holds its slot: it is in flight.
    assert not result.aborted and engine._load.in_flight == 1
    assert engine.load_metrics("w").waiting_requests + engine.load_metrics("w").running_requests == 1
    kv_arrived.set()
    await asyncio.sleep(0.01)
    assert result.aborted and not result.aborted_before_kv and not engine._deferred_aborts
    assert engine._load.in_flight == 0


async def test_a_decode_request_cancelled_after_its_kv_arrived_is_aborted_at_once():
    kv_arrived = asyncio.Event()
    kv_arrived.set()
    engine, llm, task = await _decode_request_waiting_for_kv(kv_arrived)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert llm.results[0].aborted and not engine._deferred_aborts


async def test_stopping_the_engine_ends_the_aborts_that_wait_for_kv():
    engine, llm, task = await _decode_request_waiting_for_kv(asyncio.Event())
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(engine._deferred_aborts) == 1 and engine._load.in_flight == 1
    await engine.stop()
    assert not engine._deferred_aborts and not llm.results[0].aborted_before_kv
    assert engine._load.in_flight == 0


def test_a_decode_request_that_does_not_continue_the_prefill_token_is_computed_whole():
    kv = disagg.prefill_result(DisaggregatedParams(request_type="context_only", first_gen_tokens=[42], opaque_state=b"x"),
                               worker_id="P", request_id="r", prompt_tokens=3, block_size=4)
    follow = request(2, prompt=[1, 2, 3, 99])
    follow.disagg = DisaggParams(phase="decode", kv=kv)
    plan = disagg.decode_plan(follow)
    assert plan.state is None and plan.prompt == [1, 2, 3, 99] and "does not continue" in plan.reason


def test_generation_params_pass_only_fields_the_prefill_set():
    state = disagg.context_state(DisaggregatedParams(request_type="context_only", first_gen_tokens=[5],
                                                     ctx_request_id=9, opaque_state=b"\x00\xff"))
    kwargs = disagg.generation_params_kwargs(state)
    assert kwargs == {"request_type": "generation_only", "first_gen_tokens": [5], "ctx_request_id": 9,
                      "opaque_state": b"\x00\xff"}
    DisaggregatedParams(**kwargs)  # what TensorRT-LLM's dataclass accepts
    assert disagg.context_state(None) is None and disagg.context_state(DisaggregatedParams()) is None


def test_cached_tokens_are_the_results_count_at_most_the_prompt():
    from types import SimpleNamespace

    from dynamo_trtllm.outputs import cached_tokens

    prompt = list(range(100))
    assert cached_tokens(SimpleNamespace(outputs=[CompletionOutput(0)], prompt_token_ids=prompt, cached_tokens=64), 32) == 64
    # The executor's count can cover more than the request's prompt (multimodal expansion).
    assert cached_tokens(SimpleNamespace(outputs=[CompletionOutput(0)], prompt_token_ids=prompt, cached_tokens=130), 32) == 100
    # A release before GenerationResultBase.cached_tokens: the perf metrics' reused blocks.
    metrics = SimpleNamespace(kv_cache_metrics=SimpleNamespace(num_reused_blocks=3, num_missed_blocks=1))
    old = SimpleNamespace(outputs=[CompletionOutput(0, request_perf_metrics=metrics)], prompt_token_ids=prompt)
    assert cached_tokens(old, 32) == 96
    assert cached_tokens(SimpleNamespace(outputs=[CompletionOutput(0)], prompt_token_ids=prompt), 32) == 0


async def test_a_decode_worker_reports_the_prefill_workers_cached_tokens():
    prefill_llm = StandInLLM(steps=[[42]], reason="not_finished", cached=4)
    ask = request(1)
    ask.disagg = DisaggParams(phase="prefill")
    [answer] = await collect(engine_with(prefill_llm, role="prefill"), ask)
    assert answer.cached_tokens == 4 and answer.kv_transfer.engine_params["cached_tokens"] == 4
    follow = request(3, prompt=[1, 2, 3, 4, 5, 42])
    follow.disagg = DisaggParams(phase="decode", kv=answer.kv_transfer)
    follow = msgspec.msgpack.decode(msgspec.msgpack.encode(follow), type=PreprocessedRequest)
    # TensorRT-LLM counts a generation-only request's whole transferred prompt as cached.
    decode_llm = StandInLLM(steps=[[42], [43]], cached=5)
    outputs = await collect(engine_with(decode_llm, role="decode"), follow)
    assert (outputs[0].prompt_tokens, outputs[0].cached_tokens) == (5, 4)


async def test_the_first_tokens_logprobs_travel_from_prefill_to_decode():
    prefill_llm = StandInLLM(steps=[[42]], reason="not_finished")
    ask = request(1, output=OutputOptions(logprobs=2))
    ask.disagg = DisaggParams(phase="prefill")
    [answer] = await collect(engine_with(prefill_llm, role="prefill"), ask)
    assert answer.logprobs == [-0.5]
    follow = request(3, prompt=[1, 2, 3, 4, 5, 42], output=OutputOptions(logprobs=2))
    follow.disagg = DisaggParams(phase="decode", kv=answer.kv_transfer)
    follow = msgspec.msgpack.decode(msgspec.msgpack.encode(follow), type=PreprocessedRequest)
    decode_llm = StandInLLM(steps=[[42], [43]])
    outputs = await collect(engine_with(decode_llm, role="decode"), follow)
    params = decode_llm.calls[0]["disaggregated_params"]
    assert params.first_gen_log_probs == [{42: Logprob(-0.5, 1), 43: Logprob(-1.5, 2)}]
    assert [o.token_ids for o in outputs] == [[43]] and outputs[0].logprobs == [-0.5]


def test_simple_first_token_logprobs_pass_as_floats_and_need_no_logprob_class():
    state = disagg.context_state(DisaggregatedParams(request_type="context_only", first_gen_tokens=[5],
                                                     first_gen_log_probs=[-0.25]))
    state = msgspec.convert(msgspec.to_builtins(state, builtin_types=(bytes,)), disagg.ContextState)
    assert disagg.generation_params_kwargs(state)["first_gen_log_probs"] == [-0.25]


class StartedLLM(StandInLLM):
    """With what `LLM` exposes once built: `args` (the validated `TorchLlmArgs`: its
    `kv_cache_config.tokens_per_block`, `max_seq_len`) and, in later releases,
    `get_kv_cache_capacity()` (`{"maxNumBlocks", "tokensPerBlock", "maxNumTokens"}`)."""

    def __init__(self, capacity: dict | None, **kwargs):
        super().__init__(steps=[[1]], **kwargs)
        from types import SimpleNamespace

        self.args = SimpleNamespace(kv_cache_config=SimpleNamespace(tokens_per_block=32), max_seq_len=2048)
        if capacity is not None:
            self.get_kv_cache_capacity = lambda: capacity
        self.shut = False

    def shutdown(self) -> None:
        self.shut = True


@pytest.fixture(autouse=True)
def short_startup_wait(monkeypatch):
    monkeypatch.setattr("dynamo_trtllm.engine.CREATED_EVENTS_TIMEOUT_S", 0.05)


async def test_started_engine_reports_trtllms_block_size_capacity_and_context_length():
    llm = StartedLLM({"maxNumBlocks": 900, "tokensPerBlock": 64, "maxNumTokens": 57600})
    engine = engine_with(llm)
    info = await engine.started(llm, lambda **kw: kw, DisaggregatedParams)
    assert (info.block_size, info.kv_capacity_blocks, info.context_length) == (64, 900, 2048)
    assert len(engine._tasks) == 2  # the stats and KV event readers
    await engine.stop()
    assert llm.shut and engine._tasks == []


async def test_without_get_kv_cache_capacity_the_created_events_give_it():
    created = {"event_id": 0, "window_size": 2048, "data": {"type": "created", "num_blocks_per_cache_level": [700, 0]}}
    llm = StartedLLM(None, kv_events=[created])
    engine = engine_with(llm)
    info = await engine.started(llm, lambda **kw: kw, DisaggregatedParams)
    assert (info.block_size, info.kv_capacity_blocks) == (32, 700)
    await engine.stop()


async def test_events_that_come_after_a_drain_timed_out_are_read_by_the_next_one():
    def stored(h):
        return {"event_id": h, "window_size": 64, "data": {"type": "stored", "parent_hash": None, "blocks": [
            {"type": "stored_block", "block_hash": h, "cache_level": 0, "priority": 35,
             "tokens": [{"type": "unique_token", "token_id": t, "token_extra_id": 0} for t in range(4)]}]}}

    llm = StandInLLM(steps=[[1]], kv_events=[stored(1)])
    engine = engine_with(llm)
    from dynamo_trtllm.kv_events import KvEventTranslator

    engine._translator = KvEventTranslator(4)
    await engine._drain_kv_events(0.01)  # reads the first, then times out: the iterable is done
    llm.kv_events.queue.put_nowait(json.dumps(stored(2)))  # a block stored with no new request
    await engine._drain_kv_events(0.01)
    assert [e.blocks[0].block_hash for e in engine._context.kv_events.published] == [1, 2]


async def test_a_reader_whose_iterable_ends_at_once_does_not_spin_the_loop(monkeypatch):
    # The executor returns an empty async iterable when a queue is off (executor.py).
    monkeypatch.setattr("dynamo_trtllm.engine.POLL_TIMEOUT_S", 0.05)
    calls = []

    async def drain(timeout):
        calls.append(timeout)
        return 0

    engine = engine_with(StandInLLM(steps=[[1]]))
    task = asyncio.create_task(engine._poll(drain))
    await asyncio.sleep(0.3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert 2 <= len(calls) <= 8


def test_kv_bytes_per_block_follow_the_models_shape_and_kv_dtype():
    llama = {"num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 4, "hidden_size": 1024,
             "torch_dtype": "bfloat16"}
    assert disagg.kv_bytes_per_block(llama, 32) == 2 * 8 * 4 * 64 * 2 * 32
    assert disagg.kv_bytes_per_block(llama, 32, "fp8") == 2 * 8 * 4 * 64 * 1 * 32
    assert disagg.kv_bytes_per_block({**llama, "head_dim": 128}, 32) == 2 * 8 * 4 * 128 * 2 * 32
    assert disagg.kv_bytes_per_block({}, 32) == 0
    plan = disagg.DecodePlan([1] * 70, 1, disagg.ContextState(first_gen_tokens=[5]))
    assert disagg.pull_report(plan, 32, 1000) == KvPullReport(blocks=3, bytes=3000, seconds=None)
