"""Workers in process, with real file discovery and the TCP request plane: a draining worker
declines new requests (the frontend's engine client routes them elsewhere), and the transfer
agent is started only for engines that use it."""

from __future__ import annotations

import argparse
import asyncio

from prometheus_client import REGISTRY

from dynamo_core.frontend.engine_client import EngineClient
from dynamo_core.protocols.engine import PreprocessedRequest, StopConditions
from dynamo_core.runtime.discovery import DiscoveryConfig
from dynamo_core.worker.worker import Worker, WorkerConfig
from in_process import start_frontend_registry


async def test_requests_sent_to_a_draining_worker_are_served_by_another(tmp_path):
    # A slow watch: the frontend keeps listing the stopping worker for a second, the window
    # in which it still routes requests there.
    config = DiscoveryConfig(file_dir=str(tmp_path), poll_interval_s=1.0)
    options = argparse.Namespace(echo_delay_ms=50)
    workers = [Worker(WorkerConfig(engine="echo", discovery_config=config, engine_options=options, drain_timeout_s=5))
               for _ in range(2)]
    for worker in workers:
        await worker.start()
    registry, clients, discovery = await start_frontend_registry(config)
    try:
        for _ in range(50):
            if (model := registry.models.get("echo")) is not None and len(model.workers) == 2:
                break
            await asyncio.sleep(0.1)
        engine = EngineClient(clients)
        # Keep one request in flight on the first worker, so that its drain lasts.
        busy = PreprocessedRequest(request_id="busy", model="echo", token_ids=list(range(65, 90)),
                                   stop=StopConditions(max_tokens=25))
        first_output = asyncio.Event()

        async def consume_busy() -> int:
            count = 0
            async for output in engine.generate(model, busy):
                count += len(output.token_ids)
                first_output.set()
            return count

        rerouted_before = sum(
            REGISTRY.get_sample_value("dynamo_frontend_reroutes_total", {"model": "echo", "reason": r}) or 0
            for r in ("declined", "connection_lost"))
        busy_task = asyncio.create_task(consume_busy())
        await first_output.wait()
        stopping = asyncio.create_task(workers[0].stop())
        await asyncio.sleep(0.05)
        assert workers[0].worker_id in model.workers  # the frontend has not noticed yet
        for i in range(4):  # round-robin sends every other one to the stopping worker
            request = PreprocessedRequest(request_id=f"r{i}", model="echo", token_ids=[72, 105],
                                          stop=StopConditions(max_tokens=2))
            outputs = [o async for o in engine.generate(model, request)]
            assert all(o.error is None for o in outputs), outputs
            assert sum(len(o.token_ids) for o in outputs) == 2
        assert await busy_task == 25  # the in-flight request finished during the drain
        # Round-robin sent at least every other one there first: declined while it drained, or
        # refused at the connection once it had stopped.
        rerouted = sum(REGISTRY.get_sample_value("dynamo_frontend_reroutes_total", {"model": "echo", "reason": r}) or 0
                       for r in ("declined", "connection_lost"))
        assert rerouted - rerouted_before >= 2
        await stopping
    finally:
        await registry.stop()
        await clients.close()
        await discovery.close()
        for worker in workers[1:]:
            await worker.stop()


async def test_a_worker_starts_no_transfer_agent_for_an_engine_that_brings_its_own(tmp_path):
    from dynamo_core.engines.base import EngineSpec
    from dynamo_core.engines.mocker.engine import MockerEngine

    class OwnTransferEngine(MockerEngine):
        """Stands for an engine like vLLM, whose connector moves the KV itself."""

        uses_transfer_agent = False

        async def start(self):  # as an aggregated mocker: no arena, no agent needed
            self.role = "agg"
            return await super().start()

    config = DiscoveryConfig(file_dir=str(tmp_path))
    own = Worker(WorkerConfig(engine="mocker", role="prefill", discovery_config=config))
    own._engine_spec = EngineSpec("own", lambda context: OwnTransferEngine.from_context(context))
    mocker = Worker(WorkerConfig(engine="mocker", role="prefill", discovery_config=config))
    try:
        assert (await own.start()).model.transfer == "" and own.transfer is None
        assert (await mocker.start()).model.transfer == "tcp" and mocker.transfer is not None
    finally:
        await own.stop()
        await mocker.stop()


async def test_the_frontend_freezes_a_tokenizer_once_however_often_its_model_comes_back(tmp_path, monkeypatch):
    """Freezing collects on the loop and pins what in-flight requests hold: a model whose last
    worker left and came back (a restart) reuses its cached tokenizer, so no second freeze."""
    from dynamo_core.frontend import model_registry

    freezes: list[str] = []
    monkeypatch.setattr(model_registry, "freeze_heap", freezes.append)
    config = DiscoveryConfig(file_dir=str(tmp_path), poll_interval_s=0.1)
    registry, clients, discovery = await start_frontend_registry(config)

    async def until(served: bool) -> None:
        for _ in range(100):
            if ("echo" in registry.models) == served:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"model 'echo' served={not served} still")

    try:
        for _ in range(2):
            worker = Worker(WorkerConfig(engine="echo", discovery_config=config, engine_options=argparse.Namespace()))
            await worker.start()
            await until(served=True)
            await worker.stop()
            await until(served=False)
        assert len(freezes) == 1, freezes
    finally:
        await registry.stop()
        await clients.close()
        await discovery.close()
