"""The engine's request stream around vLLM's `AsyncLLM.generate`, with a stand-in for vLLM.

The stand-in behaves as vLLM 0.26's `generate` does: an async generator of delta outputs that
aborts the request when it is closed or cancelled before the end. Checked: deltas map through,
closing dynamo's stream (the client went away) closes vLLM's and so aborts the request, errors
become an error delta, and the in-flight count that feeds load reports returns to zero.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field

from dynamo_core.engines.base import EngineContext
from dynamo_core.protocols.engine import FinishReason, PreprocessedRequest, StopConditions
from dynamo_vllm.engine import VllmEngine


@dataclass
class Completion:
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: None = None


@dataclass
class Output:
    outputs: list[Completion]
    prompt_token_ids: list[int] = field(default_factory=lambda: [1, 2, 3])
    num_cached_tokens: int = 2
    kv_transfer_params: dict | None = None


class StandInLLM:
    def __init__(self, tokens: int, fail_after: int | None = None):
        self.tokens, self.fail_after = tokens, fail_after
        self.aborted: list[str] = []
        self.requests: list[tuple] = []

    async def generate(self, prompt, params, request_id):
        self.requests.append((prompt, params, request_id))
        try:
            for i in range(self.tokens):
                if self.fail_after is not None and i == self.fail_after:
                    raise ValueError("prompt too long")
                await asyncio.sleep(0)
                last = i == self.tokens - 1
                # vLLM answers a prefill request (do_remote_decode) with where its blocks are.
                held = last and (params.get("extra_args") or {}).get("kv_transfer_params", {}).get("do_remote_decode")
                yield Output([Completion([100 + i], "length" if last else None)],
                             kv_transfer_params=dict(VLLM_PARAMS) if held else None)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise


VLLM_PARAMS = {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [[4, 5, 6]],
               "remote_engine_id": "e1", "remote_request_id": "req-1", "remote_host": "10.0.0.1", "remote_port": 5601,
               "tp_size": 1, "remote_num_tokens": 3}


def engine_with(llm: StandInLLM, role: str = "agg") -> VllmEngine:
    context = EngineContext(model_path="/m", served_name="m", options=argparse.Namespace(), role=role, worker_id="W")
    engine = VllmEngine(context, [], kv_events=False)
    engine._block_size, engine._bytes_per_block = 16, 1000
    engine._llm = llm
    engine._vllm = {"params": lambda **kw: kw, "prompt": lambda prompt_token_ids: prompt_token_ids, "delta": "DELTA"}
    return engine


def request(max_tokens: int = 4) -> PreprocessedRequest:
    return PreprocessedRequest(request_id="req-1", model="m", token_ids=[1, 2, 3], stop=StopConditions(max_tokens=max_tokens))


async def test_deltas_stream_through_with_counts_on_the_first():
    llm = StandInLLM(tokens=3)
    engine = engine_with(llm)
    outputs = [o async for o in engine.generate(request())]
    assert [o.token_ids for o in outputs] == [[100], [101], [102]]
    assert (outputs[0].prompt_tokens, outputs[0].cached_tokens) == (3, 2)
    assert outputs[1].prompt_tokens is None and outputs[-1].finish_reason is FinishReason.LENGTH
    prompt, params, request_id = llm.requests[0]
    assert prompt == [1, 2, 3] and request_id == "req-1"
    assert params["output_kind"] == "DELTA" and params["detokenize"] is False and params["max_tokens"] == 4
    assert llm.aborted == [] and engine.load_metrics("w").waiting_requests == 0


async def test_closing_the_stream_aborts_the_request_in_vllm():
    llm = StandInLLM(tokens=1000)
    engine = engine_with(llm)
    stream = engine.generate(request(1000))
    await stream.__anext__()
    assert engine._load.in_flight == 1
    await stream.aclose()
    assert llm.aborted == ["req-1"] and engine._load.in_flight == 0


async def test_cancelling_the_consumer_aborts_the_request_in_vllm():
    llm = StandInLLM(tokens=10**6)
    engine = engine_with(llm)

    async def consume():
        async for _ in engine.generate(request(10**6)):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert llm.aborted == ["req-1"] and engine._load.in_flight == 0


async def test_a_failure_inside_vllm_ends_the_stream_with_an_error_delta():
    engine = engine_with(StandInLLM(tokens=5, fail_after=2))
    outputs = [o async for o in engine.generate(request())]
    assert [o.token_ids for o in outputs[:2]] == [[100], [101]]
    assert outputs[-1].finish_reason is FinishReason.ERROR and "prompt too long" in outputs[-1].error
    assert engine._load.in_flight == 0


async def test_prefill_and_decode_carry_vllms_transfer_parameters_through_dynamos():
    from dynamo_core.protocols.engine import DisaggParams

    prefill_llm = StandInLLM(tokens=1)
    prefill = engine_with(prefill_llm, role="prefill")
    ask = request(1)
    ask.disagg = DisaggParams(phase="prefill")
    [answer] = [o async for o in prefill.generate(ask)]
    assert prefill_llm.requests[0][1]["extra_args"] == {"kv_transfer_params": {"do_remote_decode": True}}
    kv = answer.kv_transfer
    assert (kv.worker_id, kv.hold_id, kv.num_tokens, kv.block_size) == ("W", "req-1", 3, 16)
    assert kv.engine_params == VLLM_PARAMS and kv.decode_samples_first_token

    decode_llm = StandInLLM(tokens=3)
    decode = engine_with(decode_llm, role="decode")
    follow = request(3)
    follow.disagg = DisaggParams(phase="decode", kv=kv)
    outputs = [o async for o in decode.generate(follow)]
    assert decode_llm.requests[0][1]["extra_args"] == {"kv_transfer_params": VLLM_PARAMS}
    report = outputs[0].kv_pull
    assert (report.blocks, report.bytes, report.seconds, report.recomputed) == (3, 3000, None, None)
    assert all(o.kv_pull is None and o.kv_transfer is None for o in outputs[1:])
