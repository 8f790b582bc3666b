"""`SglangEngine.generate` over SGLang's recorded streams: deltas out, abort on a closed stream,
bootstrap parameters in, whole requests refused by prefill/decode workers.

SGLang cannot run here (cp312 CUDA wheels), so `sglang.Engine` is stood in for by a replay of
what `async_generate(stream=True)` yielded on the GPU (fixtures/sglang_0.5.15.json); what the
adapter passes to it and what it asks of the tokenizer manager are recorded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dynamo_core.engines.base import EngineContext
from dynamo_core.protocols.engine import (
    DisaggParams,
    FinishReason,
    KvTransferParams,
    PreprocessedRequest,
    StopConditions,
)
from dynamo_sglang.engine import SglangEngine

RECORDED = json.loads((Path(__file__).parent / "fixtures" / "sglang_0.5.15.json").read_text())


class ReplayTokenizerManager:
    def __init__(self) -> None:
        self.aborted: list[str] = []

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        self.aborted.append(rid)


class ReplayEngine:
    """Yields a recorded stream's chunks for every request."""

    def __init__(self, stream: str):
        self.chunks = RECORDED[stream]["chunks"]
        self.tokenizer_manager = ReplayTokenizerManager()
        self.calls: list[dict] = []

    async def async_generate(self, **kwargs):
        self.calls.append(kwargs)

        async def stream():
            for chunk in self.chunks:
                yield chunk

        return stream()


def engine(stream: str, role: str = "agg") -> tuple[SglangEngine, ReplayEngine]:
    context = EngineContext(model_path="/m", served_name="m", options=argparse.Namespace(), role=role)
    adapter = SglangEngine(context, ["--grammar-backend", "none"], {"--grammar-backend"})
    adapter._engine = ReplayEngine(stream)
    return adapter, adapter._engine


def request(**fields) -> PreprocessedRequest:
    fields.setdefault("stop", StopConditions(max_tokens=8, ignore_eos=True))
    return PreprocessedRequest(request_id="r1", model="m", token_ids=RECORDED["stream_cached"]["input_ids"], **fields)


async def test_a_whole_stream_becomes_deltas_and_aborts_nothing():
    adapter, replay = engine("stream_cached")
    outs = [o async for o in adapter.generate(request())]
    assert sum(len(o.token_ids) for o in outs) == 8 and outs[-1].finish_reason == FinishReason.LENGTH
    assert replay.calls[0]["input_ids"] == RECORDED["stream_cached"]["input_ids"] and replay.calls[0]["rid"] == "r1"
    assert replay.calls[0]["stream"] is True and replay.calls[0]["sampling_params"]["max_new_tokens"] == 8
    assert replay.tokenizer_manager.aborted == [] and adapter._in_flight == 0


async def test_a_stream_closed_early_is_aborted_in_sglang():
    adapter, replay = engine("stream_cached")
    stream = adapter.generate(request())
    await stream.__anext__()
    await stream.aclose()
    assert replay.tokenizer_manager.aborted == ["r1"] and adapter._in_flight == 0


async def test_both_halves_carry_the_bootstrap_room():
    params = {"bootstrap_host": "127.0.0.1", "bootstrap_port": 25001, "bootstrap_room": 12345}
    kv = KvTransferParams(worker_id="p", hold_id="r1", num_tokens=40, block_size=16, engine_params=params)
    for role in ("prefill", "decode"):
        adapter, replay = engine("stream_cached", role=role)
        [o async for o in adapter.generate(request(disagg=DisaggParams(phase=role, kv=kv)))]
        assert {k: replay.calls[0][k] for k in params} == params


async def test_prefill_and_decode_workers_decline_whole_requests():
    for role in ("prefill", "decode"):
        adapter, replay = engine("stream_cached", role=role)
        outs = [o async for o in adapter.generate(request())]
        assert len(outs) == 1 and outs[0].retry_elsewhere and outs[0].finish_reason == FinishReason.ERROR
        assert replay.calls == []


async def test_a_request_sglang_cannot_express_is_an_error_before_sglang():
    adapter, replay = engine("stream_cached")
    outs = [o async for o in adapter.generate(request(stop=StopConditions(max_tokens=8, min_tokens=2)))]
    assert outs[0].finish_reason == FinishReason.ERROR and "min_tokens=2" in outs[0].error and replay.calls == []


async def test_the_decode_sides_first_delta_reports_the_pages_it_got():
    params = {"bootstrap_host": "127.0.0.1", "bootstrap_port": 25001, "bootstrap_room": 7}
    kv = KvTransferParams(worker_id="p", hold_id="r1", num_tokens=40, block_size=16, engine_params=params)
    adapter, _ = engine("stream_cached", role="decode")
    outs = [o async for o in adapter.generate(request(disagg=DisaggParams(phase="decode", kv=kv)))]
    assert outs[0].kv_pull is not None and outs[0].kv_pull.blocks == 3 and outs[0].kv_pull.failed is None
    assert all(o.kv_pull is None for o in outs[1:])


async def test_a_decode_side_that_got_no_kv_says_so_before_any_token():
    """SGLang aborts a decode request whose transfer failed: the frontend then serves it whole."""
    params = {"bootstrap_host": "127.0.0.1", "bootstrap_port": 25001, "bootstrap_room": 7}
    kv = KvTransferParams(worker_id="p", hold_id="r1", num_tokens=40, block_size=16, engine_params=params)
    adapter, replay = engine("stream_abort", role="decode")
    replay.chunks = [dict(replay.chunks[-1], output_ids=[])]  # the abort alone, as a failed transfer ends
    outs = [o async for o in adapter.generate(request(disagg=DisaggParams(phase="decode", kv=kv)))]
    assert len(outs) == 1 and outs[0].finish_reason == FinishReason.ERROR
    assert outs[0].kv_pull is not None and outs[0].kv_pull.failed == "SGLang aborted the request: Aborted"
