"""The frontend's rendezvous handoff (SGLang's disaggregation) with workers in process: which
requests go to both sides at once, what each side is sent, and when the request is served
whole instead. Real mocker workers, file discovery, the TCP request plane and tcp transfer."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import msgspec
import pytest
from prometheus_client import REGISTRY

from dynamo_core.engines.mocker.engine import output_token_pool
from dynamo_core.frontend.errors import BadRequestError, ServiceUnavailableError

from dynamo_core.frontend import disagg
from dynamo_core.frontend.disagg import DisaggregatingClient
from dynamo_core.frontend.engine_client import EngineClient
from dynamo_core.frontend.served_model import ServedModel
from dynamo_core.protocols.engine import (
    EngineOutput,
    FinishReason,
    GuidedDecoding,
    KvPullReport,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo_core.runtime.discovery import DiscoveryConfig
from dynamo_core.worker.worker import Worker, WorkerConfig
from in_process import start_frontend_registry

PROMPT = [(i * 7919) % 30000 + 1 for i in range(100)]


def _request(request_id: str, tokens=PROMPT, max_tokens: int = 6) -> PreprocessedRequest:
    return PreprocessedRequest(request_id=request_id, model="mocker", token_ids=list(tokens),
                               stop=StopConditions(max_tokens=max_tokens), sampling=SamplingOptions(seed=5))


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": "mocker", **labels}) or 0.0


async def _counted(name: str, expected: float, **labels: str) -> bool:
    """Whether the count reaches `expected` within a second: a split whose decode side failed
    first is counted once the prefill's verdict is in (`_PREFILL_VERDICT_S` at most), not before."""
    for _ in range(50):
        if _count(name, **labels) == expected:
            return True
        await asyncio.sleep(0.02)
    return _count(name, **labels) == expected


@contextlib.asynccontextmanager
async def _deployment(tmp_path, prefill: dict, decode: dict | None = None, extra: tuple[tuple[str, dict], ...] = (),
                      migration_limit: int = 3, drain_timeout_s: float = 30.0):
    """One prefill and one decode mocker worker (and the `extra` (role, options) ones), and a
    frontend's registry and client."""
    config = DiscoveryConfig(file_dir=str(tmp_path), poll_interval_s=0.05)
    base = dict(speedup_ratio=200.0, kv_bytes_per_token=64)
    roles = (("prefill", prefill), ("decode", decode or {}), *extra)
    workers = [
        Worker(WorkerConfig(engine="mocker", role=role, discovery_config=config, drain_timeout_s=drain_timeout_s,
                            engine_options=argparse.Namespace(**{**base, **options})))
        for role, options in roles
    ]
    for worker in workers:
        await worker.start()
    registry, clients, discovery = await start_frontend_registry(config)
    client = DisaggregatingClient(EngineClient(clients, migration_limit), clients, min_prompt_tokens=32)
    try:
        for _ in range(100):
            if (model := registry.models.get("mocker")) is not None and len(model.workers) == len(workers):
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


async def test_a_prefill_that_keeps_failing_is_tried_again_with_fresh_rooms_then_served_whole(tmp_path):
    # The prefill worker's cache cannot hold the prompt: it refuses every time; the decode
    # worker (without --disagg-bootstrap) can compute a whole request, so it serves it at last.
    async with _deployment(tmp_path, prefill=dict(disagg_bootstrap=True, num_gpu_blocks=4)) as (workers, model, client):
        seen: list[PreprocessedRequest] = []
        workers[0].engine.generate = _recording(workers[0].engine.generate, seen)
        before = _count("dynamo_frontend_disagg_fallbacks_total", reason="prefill_failed")
        rerouted = _count("dynamo_frontend_reroutes_total", reason="prefill_failed")
        errors = _count("dynamo_frontend_disagg_prefill_errors_total")
        assert len(await _tokens(client, model, _request("r1"))) == 6
        # The first split and --migration-limit (3) more, each in a room of its own.
        assert len({r.disagg.kv.engine_params["bootstrap_room"] for r in seen}) == len(seen) == 4
        assert await _counted("dynamo_frontend_reroutes_total", rerouted + 3, reason="prefill_failed")
        assert _count("dynamo_frontend_disagg_prefill_errors_total") == errors + 4
        assert await _counted("dynamo_frontend_disagg_fallbacks_total", before + 1, reason="prefill_failed")


async def test_a_failing_prefill_worker_is_replaced_by_another_in_a_fresh_room(tmp_path):
    # Two prefill workers, one whose cache cannot hold the prompt; each split that round-robin
    # routing sends there is tried again on the other worker, in a fresh room.
    extra = (("prefill", dict(disagg_bootstrap=True)),)
    async with _deployment(tmp_path, prefill=dict(disagg_bootstrap=True, num_gpu_blocks=4),
                           decode=dict(disagg_bootstrap=True), extra=extra) as (workers, model, client):
        seen: list[PreprocessedRequest] = []
        for worker in (workers[0], workers[2]):
            worker.engine.generate = _recording(worker.engine.generate, seen)
        split = _count("dynamo_frontend_disagg_requests_total")
        rerouted = _count("dynamo_frontend_reroutes_total", reason="prefill_failed")
        for request_id in ("r1", "r2", "r3"):
            assert len(await _tokens(client, model, _request(request_id))) == 6
        assert _count("dynamo_frontend_disagg_requests_total") == split + 3
        bad, good = workers[0].worker_id, workers[2].worker_id
        on_bad = [r for r in seen if r.disagg.kv.worker_id == bad]
        assert on_bad and await _counted("dynamo_frontend_reroutes_total", rerouted + len(on_bad), reason="prefill_failed")
        for failed in on_bad:  # each tried once there, then on the other worker in another room
            [retried] = [r for r in seen if r.request_id == failed.request_id and r.disagg.kv.worker_id == good]
            assert retried.disagg.kv.engine_params["bootstrap_room"] != failed.disagg.kv.engine_params["bootstrap_room"]
        assert len(seen) == 3 + len(on_bad)


async def test_with_rendezvous_only_workers_a_request_no_split_can_serve_gets_a_503_naming_the_way_out(tmp_path):
    # The decode worker, like SGLang's, takes only split requests; the prefill always fails.
    async with _deployment(tmp_path, prefill=dict(disagg_bootstrap=True, num_gpu_blocks=4),
                           decode=dict(disagg_bootstrap=True), migration_limit=1) as (workers, model, client):
        started = asyncio.get_running_loop().time()
        with pytest.raises(ServiceUnavailableError) as failed:
            await _tokens(client, model, _request("r1"))
        assert asyncio.get_running_loop().time() - started < 5  # the failed room ends the decode side at once
        assert failed.value.status_code == 503
        assert "2 split(s) failed" in failed.value.message
        assert "start a prefill worker for this model, or an aggregated one" in failed.value.message
        # No prefill worker at all: the same way out.
        await workers.pop(0).stop()  # (popped: the deployment stops the others)
        for _ in range(100):
            if not model.has_role("prefill"):
                break
            await asyncio.sleep(0.05)
        with pytest.raises(ServiceUnavailableError) as failed:
            await _tokens(client, model, _request("r2"))
        assert "it has no prefill worker" in failed.value.message and "an aggregated one" in failed.value.message
        # No worker at all (the decode worker left after the request was routed): just that.
        stream = client.generate(model, _request("r3"))
        await workers.pop(0).stop()
        for _ in range(100):
            if not model.workers:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(ServiceUnavailableError) as failed:
            await anext(stream)
        assert failed.value.message == "no worker is serving model 'mocker' right now"


async def test_without_rendezvous_prefill_workers_a_request_gets_the_engine_clients_own_stream(tmp_path):
    # An answer-first deployment whose prefill worker left: its decode worker serves whole
    # requests, with no layer of the rendezvous's in between.
    async with _deployment(tmp_path, prefill={}) as (workers, model, client):
        await workers.pop(0).stop()  # (popped: the deployment stops the others)
        for _ in range(100):
            if not model.has_role("prefill"):
                break
            await asyncio.sleep(0.05)
        stream = client.generate(model, _request("r1"))
        assert stream.__qualname__ == "EngineClient.generate"
        assert len([t async for out in stream for t in out.token_ids]) == 6


async def test_a_decode_worker_that_fails_mid_stream_continues_split_without_resending_tokens(tmp_path):
    # Two rendezvous decode workers at real speed (7 ms a token); the one streaming leaves with
    # a short drain timeout and hands the request back after some tokens reached the client.
    slow = dict(disagg_bootstrap=True, speedup_ratio=1.0)
    async with _deployment(tmp_path, prefill=dict(disagg_bootstrap=True), decode=slow, extra=(("decode", slow),),
                           drain_timeout_s=0.1) as (workers, model, client):
        seen: list[PreprocessedRequest] = []
        workers[0].engine.generate = _recording(workers[0].engine.generate, seen)
        moved = _count("dynamo_frontend_migrations_total", reason="draining")
        tokens: list[int] = []
        stopping = None
        async for output in client.generate(model, _request("r1", max_tokens=150)):
            tokens += output.token_ids
            if stopping is None and len(tokens) >= 5:
                serving = next(w for w in workers[1:] if w.engine.scheduler.running)
                workers.remove(serving)  # (the deployment stops the others)
                stopping = asyncio.ensure_future(serving.stop())
        await stopping
        pool = output_token_pool(None)
        assert tokens == [pool[(5 + i) % len(pool)] for i in range(150)]  # seed 5: one unbroken cycle
        assert _count("dynamo_frontend_migrations_total", reason="draining") == moved + 1
        first, again = seen
        assert again.token_ids[:len(PROMPT)] == PROMPT and len(again.token_ids) > len(PROMPT)
        assert again.resumed_tokens == len(again.token_ids) - len(PROMPT)
        assert again.disagg.kv.engine_params["bootstrap_room"] != first.disagg.kv.engine_params["bootstrap_room"]


async def test_a_decode_worker_that_gets_no_kv_in_time_is_retried_and_the_prefill_cancelled(tmp_path):
    # A slow prefill, and a room that answers "no KV" after 0.2 s: each split fails that way.
    prefill = dict(disagg_bootstrap=True, bootstrap_timeout=0.2, prefill_tokens_per_s=1.0)
    async with _deployment(tmp_path, prefill=prefill, migration_limit=1) as (workers, model, client):
        before = _count("dynamo_frontend_disagg_fallbacks_total", reason="decode_kv_failed")
        rerouted = _count("dynamo_frontend_reroutes_total", reason="decode_kv_failed")
        assert len(await _tokens(client, model, _request("r1"))) == 6
        assert await _counted("dynamo_frontend_reroutes_total", rerouted + 1, reason="decode_kv_failed")
        assert await _counted("dynamo_frontend_disagg_fallbacks_total", before + 1, reason="decode_kv_failed")
        for _ in range(50):
            if not workers[0].engine.scheduler.has_work():
                break
            await asyncio.sleep(0.02)
        assert not workers[0].engine.scheduler.has_work() and not workers[0].engine.held


async def test_a_decode_side_without_the_kv_is_tried_again_at_once_and_named_by_the_prefills_verdict_later():
    """The decode side reports it could not get the KV while the prefill still runs: the split
    fails at once (no wait for the prefill), and the prefill's verdict, within its window,
    names the failure afterwards; a prefill that says nothing in time is cancelled."""
    loop = asyncio.get_running_loop()
    for prefill_says, expected in (("boom", ("prefill_failed", "boom")), (None, ("decode_kv_failed", "no KV"))):
        decoded = loop.create_future()
        decoded.set_result(EngineOutput(finish_reason=FinishReason.ERROR, kv_pull=KvPullReport(failed="no KV")))
        prefill = asyncio.ensure_future(asyncio.sleep(0.03 if prefill_says else 60, prefill_says))
        started = loop.time()
        first, failure = await disagg._first_decode_output(_request("r1"), decoded, prefill)
        assert loop.time() - started < disagg._PREFILL_VERDICT_S / 2  # it waited for no verdict
        assert first is None and (failure.reason, failure.detail) == ("decode_kv_failed", "no KV")
        named: list[tuple[str, str]] = []
        failure.when_settled(lambda reason, detail: named.append((reason, detail)))
        assert named == [] and await failure.settled() == expected
        await asyncio.sleep(0)
        assert named == [expected]
        await asyncio.gather(prefill, return_exceptions=True)
        assert prefill.cancelled() == (prefill_says is None)


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


async def test_structured_output_splits_when_every_card_supports_it_else_a_400_names_the_workers(tmp_path):
    async with _deployment(tmp_path, prefill=dict(disagg_bootstrap=True),
                           decode=dict(disagg_bootstrap=True)) as (workers, model, client):
        seen: list[PreprocessedRequest] = []
        for worker in workers:
            worker.engine.generate = _recording(worker.engine.generate, seen)
        constrained = msgspec.structs.replace(_request("r1"), guided=GuidedDecoding(regex="[a-z ]+"))
        # The mocker's cards say it applies no grammar: a 400 that names both workers.
        with pytest.raises(BadRequestError) as refused:
            await _tokens(client, model, constrained)
        assert refused.value.status_code == 400 and not seen
        for worker in workers:
            assert f"worker {worker.worker_id} (engine 'mocker')" in refused.value.message
        # Cards that say they do (as SGLang's with a grammar backend, registered again): split,
        # both halves constrained.
        for worker in workers:
            record = model.workers[worker.worker_id].record
            card = msgspec.structs.replace(record.model, structured_output=True)
            model.update_worker(worker.worker_id, msgspec.structs.replace(record, model=card))
        fallbacks = _count("dynamo_frontend_disagg_fallbacks_total", reason="structured_output")
        assert len(await _tokens(client, model, constrained)) == 6
        assert sorted(r.disagg.phase for r in seen) == ["decode", "prefill"]
        assert all(r.guided == constrained.guided for r in seen)
        assert _count("dynamo_frontend_disagg_fallbacks_total", reason="structured_output") == fallbacks


async def _until(condition, what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


async def test_workers_that_join_and_leave_change_how_a_request_is_served(tmp_path):
    # Each decision reads counts kept as workers come and go: an aggregated worker lets a
    # constrained request be served whole; once it leaves, the 400 again; once the rendezvous
    # prefill worker leaves, nothing is split (the decode worker declines whole requests).
    config = DiscoveryConfig(file_dir=str(tmp_path), poll_interval_s=0.05)
    async with _deployment(tmp_path, prefill=dict(disagg_bootstrap=True),
                           decode=dict(disagg_bootstrap=True)) as (workers, model, client):
        constrained = msgspec.structs.replace(_request("r1"), guided=GuidedDecoding(regex="[a-z ]+"))
        with pytest.raises(BadRequestError):
            client.generate(model, constrained)
        agg = Worker(WorkerConfig(engine="mocker", discovery_config=config,
                                  engine_options=argparse.Namespace(speedup_ratio=200.0)))
        await agg.start()
        try:
            await _until(lambda: model.has_role("agg"), "the aggregated worker joined")
            whole = _count("dynamo_frontend_disagg_fallbacks_total", reason="structured_output")
            assert len(await _tokens(client, model, constrained)) == 6
            assert _count("dynamo_frontend_disagg_fallbacks_total", reason="structured_output") == whole + 1
        finally:
            await agg.stop()
        await _until(lambda: not model.has_role("agg"), "the aggregated worker left")
        with pytest.raises(BadRequestError):
            client.generate(model, constrained)
        assert len(await _tokens(client, model, _request("r2"))) == 6  # split
        await workers.pop(0).stop()  # the prefill worker (popped: the deployment stops the others)
        await _until(lambda: not model.bootstrap_prefill_states(), "the prefill worker left")
        with pytest.raises(ServiceUnavailableError) as failed:
            await _tokens(client, model, _request("r3"))
        assert "it has no prefill worker" in failed.value.message
