"""The frontend's rendezvous handoff (SGLang's disaggregation) with workers in process: which
requests go to both sides at once, what each side is sent, and when the request is served
whole instead. Real mocker workers, file discovery, the TCP request plane and tcp transfer."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from prometheus_client import REGISTRY

from dynamo_core.frontend.disagg import DisaggregatingClient
from dynamo_core.frontend.engine_client import EngineClient
from dynamo_core.frontend.served_model import ServedModel
from dynamo_core.protocols.engine import PreprocessedRequest, SamplingOptions, StopConditions
from dynamo_core.runtime.discovery import DiscoveryConfig
from dynamo_core.worker.worker import Worker, WorkerConfig
from in_process import start_frontend_registry

PROMPT = [(i * 7919) % 30000 + 1 for i in range(100)]


def _request(request_id: str, tokens=PROMPT, max_tokens: int = 6) -> PreprocessedRequest:
    return PreprocessedRequest(request_id=request_id, model="mocker", token_ids=list(tokens),
                               stop=StopConditions(max_tokens=max_tokens), sampling=SamplingOptions(seed=5))


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": "mocker", **labels}) or 0.0


@contextlib.asynccontextmanager
async def _deployment(tmp_path, prefill: dict, decode: dict | None = None):
    """One prefill and one decode mocker worker, and a frontend's registry and client."""
    config = DiscoveryConfig(file_dir=str(tmp_path), poll_interval_s=0.05)
    base = dict(speedup_ratio=200.0, kv_bytes_per_token=64)
    workers = [
        Worker(WorkerConfig(engine="mocker", role="prefill", discovery_config=config,
                            engine_options=argparse.Namespace(**base, **prefill))),
        Worker(WorkerConfig(engine="mocker", role="decode", discovery_config=config,
                            engine_options=argparse.Namespace(**base, **(decode or {})))),
    ]
    for worker in workers:
        await worker.start()
    registry, clients, discovery = await start_frontend_registry(config)
    client = DisaggregatingClient(EngineClient(clients), clients, min_prompt_tokens=32)
    try:
        for _ in range(100):
            if (model := registry.models.get("mocker")) is not None and len(model.workers) == 2:
                break
            await asyncio.sleep(0.05)
        yield workers, model, client
    finally:
        await client.close()
        await registry.stop()
        await clients.close()
        await discovery.close()
        for worker in workers:
            await worker.stop()


async def _tokens(client: DisaggregatingClient, model: ServedModel, request: PreprocessedRequest) -> list[int]:
    return [t async for out in client.generate(model, request) for t in out.token_ids]


async def test_the_registry_exposes_each_prefill_instances_bootstrap(tmp_path):
    async with _deployment(tmp_path, prefill=dict(disagg_bootstrap=True)) as (workers, model, _):
        prefill, decode = (model.workers[w.worker_id] for w in workers)
        assert set(prefill.disagg_bootstrap) == {"bootstrap_host", "bootstrap_port"}
        assert decode.disagg_bootstrap is None
        assert [s.worker_id for s in model.bootstrap_prefill_states()] == [workers[0].worker_id]


async def test_a_long_prompt_goes_to_both_sides_at_once_and_the_decode_side_streams_every_token(tmp_path):
    async with _deployment(tmp_path, prefill=dict(disagg_bootstrap=True)) as (workers, model, client):
        seen: list[PreprocessedRequest] = []
        for worker in workers:  # what each side was sent, as its engine got it
            engine = worker.engine
            engine.generate = _recording(engine.generate, seen)
        before = _count("dynamo_frontend_disagg_requests_total")
        tokens = await _tokens(client, model, _request("r1"))
        assert len(tokens) == 6
        assert _count("dynamo_frontend_disagg_requests_total") == before + 1
        prefill_req, decode_req = sorted(seen, key=lambda r: r.disagg.phase, reverse=True)
        assert (prefill_req.disagg.phase, decode_req.disagg.phase) == ("prefill", "decode")
        assert prefill_req.disagg.kv == decode_req.disagg.kv  # the same request, the same room
        assert prefill_req.token_ids == decode_req.token_ids == PROMPT
        assert prefill_req.stop == decode_req.stop
        kv = decode_req.disagg.kv
        assert (kv.worker_id, kv.hold_id, kv.num_tokens, kv.block_size) == (workers[0].worker_id, "r1", 100, 16)
        room = kv.engine_params.pop("bootstrap_room")
        assert 0 <= room < 2**63
        assert kv.engine_params == model.workers[workers[0].worker_id].disagg_bootstrap
        # The prefill's KV is let go of once the decode worker has it.
        for _ in range(50):
            if not workers[0].engine.held:
                break
            await asyncio.sleep(0.02)
        assert not workers[0].engine.held


def _recording(generate, seen: list[PreprocessedRequest]):
    def record(request: PreprocessedRequest):
        seen.append(request)
        return generate(request)
    return record


async def test_a_prefill_that_fails_is_served_whole_on_the_decode_worker(tmp_path):
    # The prefill worker's cache cannot hold the prompt: it refuses, the decode worker serves it.
    async with _deployment(tmp_path, prefill=dict(disagg_bootstrap=True, num_gpu_blocks=4)) as (_, model, client):
        before = _count("dynamo_frontend_disagg_fallbacks_total", reason="prefill_failed")
        errors = _count("dynamo_frontend_disagg_prefill_errors_total")
        assert len(await _tokens(client, model, _request("r1"))) == 6
        assert _count("dynamo_frontend_disagg_fallbacks_total", reason="prefill_failed") == before + 1
        assert _count("dynamo_frontend_disagg_prefill_errors_total") == errors + 1


async def test_a_decode_worker_that_gets_no_kv_in_time_falls_back_and_cancels_the_prefill(tmp_path):
    # A slow prefill, and a room that answers "no KV" after 0.2 s.
    prefill = dict(disagg_bootstrap=True, bootstrap_timeout=0.2, prefill_tokens_per_s=1.0)
    async with _deployment(tmp_path, prefill=prefill) as (workers, model, client):
        before = _count("dynamo_frontend_disagg_fallbacks_total", reason="decode_kv_failed")
        assert len(await _tokens(client, model, _request("r1"))) == 6
        assert _count("dynamo_frontend_disagg_fallbacks_total", reason="decode_kv_failed") == before + 1
        for _ in range(50):
            if not workers[0].engine.scheduler.has_work():
                break
            await asyncio.sleep(0.02)
        assert not workers[0].engine.scheduler.has_work() and not workers[0].engine.held


async def test_without_a_bootstrap_prefill_answers_first_and_short_prompts_are_served_whole(tmp_path):
    async with _deployment(tmp_path, prefill={}) as (workers, model, client):
        assert model.bootstrap_prefill_states() == []
        seen: list[PreprocessedRequest] = []
        workers[1].engine.generate = _recording(workers[1].engine.generate, seen)
        assert len(await _tokens(client, model, _request("r1"))) == 6
        [decode_req] = seen
        # The answer-first protocol: the decode side continues after the prefill's token.
        assert decode_req.disagg.kv.region is not None and len(decode_req.token_ids) == len(PROMPT) + 1
        short = _count("dynamo_frontend_disagg_fallbacks_total", reason="short_prompt")
        assert len(await _tokens(client, model, _request("r2", PROMPT[:8]))) == 6
        assert seen[-1].disagg is None
        assert _count("dynamo_frontend_disagg_fallbacks_total", reason="short_prompt") == short + 1


async def test_with_a_bootstrap_short_and_one_token_requests_split_too(tmp_path):
    # SGLang's decode workers take only bootstrapped requests: nothing may be served whole there.
    async with _deployment(tmp_path, prefill=dict(disagg_bootstrap=True)) as (workers, model, client):
        seen: list[PreprocessedRequest] = []
        workers[1].engine.generate = _recording(workers[1].engine.generate, seen)
        short = _count("dynamo_frontend_disagg_fallbacks_total", reason="short_prompt")
        assert len(await _tokens(client, model, _request("r1", PROMPT[:8]))) == 6
        assert len(await _tokens(client, model, _request("r2", max_tokens=1))) == 1
        assert [r.disagg.phase for r in seen] == ["decode", "decode"]
        assert all(r.disagg.kv.engine_params["bootstrap_room"] is not None for r in seen)
        assert _count("dynamo_frontend_disagg_fallbacks_total", reason="short_prompt") == short
