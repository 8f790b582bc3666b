"""A worker process: hosts one engine, serves `generate` and `events`, registers in discovery."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from dynamo_core.engines.base import Engine, EngineContext
from dynamo_core.errors import WorkerConfigError
from dynamo_core.plugins import get_registry
from dynamo_core.protocols.discovery import InstanceRecord, ModelCard
from dynamo_core.protocols.engine import EngineInfo, EngineOutput, FinishReason, PreprocessedRequest
from dynamo_core.runtime.discovery import DiscoveryBackend, DiscoveryConfig
from dynamo_core.protocols.names import (
    BACKEND_COMPONENT,
    EVENTS_ENDPOINT,
    GENERATE_ENDPOINT,
    KV_RELEASE_ENDPOINT,
    MODEL_FILES_ENDPOINT,
    ROLES,
)
from dynamo_core.runtime.event_plane import EventPublisher
from dynamo_core.runtime.gc_heap import freeze_heap
from dynamo_core.runtime.model_files import serve_model_files, tokenizer_digest
from dynamo_core.runtime.plane import PlaneConfig, Unpublish
from dynamo_core.runtime.transports import event_plane_spec, request_plane
from dynamo_core.tokenizer import BUILTIN_TOKENIZER

log = logging.getLogger(__name__)

LOAD_REPORT_INTERVAL_S = 0.05
LOAD_HEARTBEAT_S = 1.0
HANDOFF_WAIT_S = 1.0  # after the drain timeout: how long streams get to hand their requests back

_request_decoder = msgspec.msgpack.Decoder(PreprocessedRequest)
_output_encoder = msgspec.msgpack.Encoder()


@dataclass
class WorkerConfig:
    engine: str = "mocker"
    model_path: str | None = None
    model_name: str | None = None
    chat_template: str | None = None  # replaces the model directory's template (in the card)
    reasoning_parser: str | None = None  # published in the model card; the frontend applies it
    tool_call_parser: str | None = None  # likewise
    namespace: str = "dynamo"
    role: str = "agg"  # agg | prefill | decode
    transfer: str = "tcp"  # KV-transfer backend of prefill and decode workers
    discovery: str = "file"
    discovery_config: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    host: str = "127.0.0.1"
    port: int = 0
    engine_options: argparse.Namespace = field(default_factory=argparse.Namespace)
    drain_timeout_s: float = 30.0
    request_plane: str = "tcp"  # tcp | nats
    event_plane: str = "tcp"  # tcp | nats
    nats_url: str | None = None
    health_port: int | None = None  # HTTP /health and /live for probes; None: no such server


def served_model_name(config: WorkerConfig) -> str:
    if config.model_name:
        return config.model_name
    if config.model_path:
        return Path(config.model_path).resolve().name
    return config.engine  # `--engine mocker` with no model serves a model named "mocker"


class Worker:
    def __init__(self, config: WorkerConfig, discovery: DiscoveryBackend | None = None):
        self.config = config
        # Safe in file paths, etcd keys and NATS subject tokens.
        host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())
        self.worker_id = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        registry = get_registry()
        self._engine_spec = registry.get("engine", config.engine)
        self._discovery = discovery or registry.get("discovery", config.discovery).create(
            config.discovery_config
        )
        self._owns_discovery = discovery is None
        self._plane_config = PlaneConfig(
            host=config.host, port=config.port, nats_url=config.nats_url, namespace=config.namespace,
            worker_id=self.worker_id,
        )
        self._server = request_plane(config.request_plane).create_server(self._plane_config)
        self._event_plane = event_plane_spec(config.event_plane)
        if config.role not in ROLES:
            raise WorkerConfigError(f"unknown worker mode '{config.role}' ({', '.join(ROLES)})")
        self._unpublish: Unpublish | None = None  # stops the event plane's publishing
        self.transfer = None  # the KV-transfer agent of prefill and decode workers
        self.engine: Engine | None = None
        self.events: EventPublisher | None = None
        self.record: InstanceRecord | None = None
        self._registered = False  # the record is in discovery: the worker is ready
        self._active: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self._handing_off = False  # the drain timed out: streams hand their requests back
        self._load_task: asyncio.Task | None = None

    async def start(self) -> InstanceRecord:
        config = self.config
        name = served_model_name(config)
        # The publisher needs the engine for snapshots, and the engine needs the publisher.
        self.events = EventPublisher(self.worker_id, lambda: self.engine.kv_snapshot() if self.engine else [])
        if config.role != "agg":
            self.transfer = self._make_transfer_agent()
        context = EngineContext(
            model_path=config.model_path,
            served_name=name,
            options=config.engine_options,
            kv_events=self.events,
            worker_id=self.worker_id,
            role=config.role,
            host=config.host,
            transfer=self.transfer,
        )
        self.engine = self._engine_spec.create(context)
        if config.role != "agg" and not self.engine.supports_disaggregation:
            raise WorkerConfigError(f"engine '{config.engine}' cannot run as a {config.role} worker (no disaggregated serving)")
        if self.transfer is not None:
            if self.engine.uses_transfer_agent:
                await self.transfer.start()
                log.info("KV transfer agent %s (%s) started", self.transfer.agent_name, config.transfer)
            else:
                context.transfer = self.transfer = None  # the engine moves KV its own way
        try:
            info = await self.engine.start()
        except BaseException:
            if self.transfer is not None:  # its listener and tasks would outlive the failed start
                await self.transfer.close()
            raise
        try:
            return await self._serve_and_register(name, info)
        except BaseException:
            # The engine is up (its processes, its GPU memory, its sockets): it must not outlive
            # a start that failed later (request plane, event plane, discovery).
            try:
                await self.stop()
            except Exception:  # noqa: BLE001 - the start's own error is the one to raise
                log.exception("stopping the worker after its failed start failed too")
            raise

    async def _serve_and_register(self, name: str, info: EngineInfo) -> InstanceRecord:
        """The late steps of `start`: serve the endpoints, publish events, put the record."""
        config = self.config
        assert self.engine is not None and self.events is not None
        self._server.register(GENERATE_ENDPOINT, self._generate)
        self._server.register(EVENTS_ENDPOINT, self.events.serve_subscription)
        self._server.register(KV_RELEASE_ENDPOINT, self._release_kv)
        if config.model_path:
            self._server.register(MODEL_FILES_ENDPOINT, serve_model_files(config.model_path))
        address = await self._server.start()
        self._unpublish = await self._event_plane.publish(self.events, self._plane_config)
        card = ModelCard(
            served_name=name,
            tokenizer=str(Path(config.model_path).resolve()) if config.model_path else BUILTIN_TOKENIZER,
            context_length=info.context_length,
            block_size=info.block_size,
            kv_capacity_blocks=info.kv_capacity_blocks,
            role=config.role,
            transfer=self.transfer.name if self.transfer is not None else "",
            engine=config.engine,
            wants_last_message_tokens=self.engine.wants_last_message_tokens,
            tokenizer_digest=tokenizer_digest(config.model_path) if config.model_path else "",
            chat_template=config.chat_template,
            reasoning_parser=config.reasoning_parser,
            tool_call_parser=config.tool_call_parser,
            structured_output=self.engine.supports_structured_output,
            prompt_logprobs=self.engine.supports_prompt_logprobs,
            disagg_bootstrap=info.disagg_bootstrap if config.role == "prefill" else None,
        )
        record = InstanceRecord(
            instance_id=self.worker_id,
            namespace=config.namespace,
            component=BACKEND_COMPONENT,
            endpoint=GENERATE_ENDPOINT,
            address=address,
            transport=config.request_plane,
            event_plane=config.event_plane,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            model=card,
        )
        # Ready (`health_status`) only once the record is in discovery, where frontends find it.
        try:
            await self._discovery.put(record.path, msgspec.msgpack.encode(record))
        finally:
            self.record = record  # also when the put failed half-way: `stop` deletes what may be there
        self._registered = True
        self._load_task = asyncio.create_task(self._report_load(), name="worker-load-report")
        log.info(
            "worker ready: engine=%s model=%s role=%s instance=%s address=%s block_size=%d kv_blocks=%d",
            config.engine, name, config.role, self.worker_id, address, info.block_size, info.kv_capacity_blocks,
        )
        freeze_heap("worker ready")  # the engine's whole stack is loaded by now
        return self.record

    def _make_transfer_agent(self):
        from dynamo_core.transfer import TransferConfig, create_transfer_agent

        # Peers reach the agent where they reach the worker (`--host`). Not started yet: the
        # engine may not use it.
        return create_transfer_agent(self.config.transfer, TransferConfig(host=self.config.host))

    async def _release_kv(self, payload: bytes) -> AsyncIterator[bytes]:
        assert self.engine is not None
        self.engine.release_kv(payload.decode())
        yield b""

    async def _generate(self, payload: bytes) -> AsyncIterator[bytes]:
        assert self.engine is not None
        request = _request_decoder.decode(payload)
        if self._stopping.is_set():
            yield _output_encoder.encode(
                EngineOutput(finish_reason=FinishReason.ERROR, error="worker is shutting down", retry_elsewhere=True)
            )
            return
        task = asyncio.current_task()
        assert task is not None
        self._active.add(task)
        stream = self.engine.generate(request)
        try:
            async for output in stream:
                yield _output_encoder.encode(output)
                if self._handing_off and output.finish_reason is None:
                    # The drain timed out: the frontend continues the request elsewhere.
                    yield _output_encoder.encode(EngineOutput(retry_elsewhere=True, error="worker drained"))
                    return
        finally:
            self._active.discard(task)
            await stream.aclose()

    async def _report_load(self) -> None:
        assert self.engine is not None and self.events is not None
        since_forced = 0.0
        while True:
            await asyncio.sleep(LOAD_REPORT_INTERVAL_S)
            since_forced += LOAD_REPORT_INTERVAL_S
            force = since_forced >= LOAD_HEARTBEAT_S
            if force:
                since_forced = 0.0
            self.events.publish_load(self.engine.load_metrics(self.worker_id), force=force)

    async def stop(self) -> None:
        """Leave discovery first (no new requests), let in-flight requests finish within the
        drain timeout, hand the rest back to the frontend (which migrates them), then stop."""
        self._stopping.set()
        if self.record is not None:
            with contextlib.suppress(Exception):
                await self._discovery.delete(self.record.path)
        if self._active:
            log.info("draining %d in-flight request(s) for up to %.1f s", len(self._active), self.config.drain_timeout_s)
            await asyncio.wait(set(self._active), timeout=self.config.drain_timeout_s)
        if self._active:
            # Each stream hands its request back at its next delta; one still waiting for its
            # first token is cut below, and the frontend routes it again all the same.
            log.info("handing %d request(s) back to the frontend to continue elsewhere", len(self._active))
            self._handing_off = True
            await asyncio.wait(set(self._active), timeout=HANDOFF_WAIT_S)
        if self._load_task is not None:
            self._load_task.cancel()
        await self._server.stop()
        if self.engine is not None:
            await self.engine.stop()
        if self.transfer is not None:
            await self.transfer.close()
        if self._unpublish is not None:
            await self._unpublish()
        if self._owns_discovery:
            await self._discovery.close()

    def health_status(self) -> str:
        if self._stopping.is_set():
            return "draining"
        return "ok" if self._registered else "starting"

    async def run_until_signalled(self) -> None:
        health = None
        if self.config.health_port is not None:
            from dynamo_core.worker.health import HealthServer

            # Up before the engine loads, so that /live answers through a long model load.
            health = HealthServer(self.config.host, self.config.health_port, self.health_status)
            log.info("worker health on http://%s:%d (/health, /live)", self.config.host, await health.start())
        try:
            await self.start()
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            log.info("worker %s stopping", self.worker_id)
            await self.stop()
        finally:
            if health is not None:
                await health.stop()
