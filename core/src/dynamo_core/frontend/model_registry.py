"""The frontend's view of what is served: models, their workers and their routers.

It watches discovery for worker instances. The first instance of a model brings the model in
(tokenizer, chat template, router); the last one to leave takes it out. For each instance it
keeps one event-plane subscription that feeds the model's router with KV events and load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec

from dynamo_core.frontend.served_model import ServedModel, WorkerHandle
from dynamo_core.protocols.discovery import InstanceRecord
from dynamo_core.protocols.kv_events import KvEventBatch, KvSnapshot, LoadMetrics
from dynamo_core.protocols.names import MODEL_FILES_ENDPOINT
from dynamo_core.protocols.routing import PeerRequest
from dynamo_core.routers.base import Router, RouterContext, WorkerState
from dynamo_core.runtime.discovery import DiscoveryBackend, WatchEventKind
from dynamo_core.runtime.gc_heap import freeze_heap
from dynamo_core.runtime.model_files import fetch_model_files, local_copy_matches
from dynamo_core.runtime.request_plane import RequestPlaneError
from dynamo_core.runtime.transports import TransportClients
from dynamo_core.tokenizer import BUILTIN_TOKENIZER, load_tokenizer

log = logging.getLogger(__name__)

_record_decoder = msgspec.msgpack.Decoder(InstanceRecord)
RESUBSCRIBE_DELAY_S = 0.5


class ModelRegistry:
    def __init__(
        self,
        discovery: DiscoveryBackend,
        client: TransportClients,
        namespace: str,
        router_factory: Callable[[RouterContext], Router],
        router_options,
        share: Callable[[PeerRequest], None] = lambda request: None,
    ):
        self._share = share
        self._discovery = discovery
        self._client = client
        self._prefix = f"{namespace}/backend/generate/"
        self._router_factory = router_factory
        self._router_options = router_options
        self.models: dict[str, ServedModel] = {}
        self._model_of_worker: dict[str, str] = {}
        self._watch_task: asyncio.Task | None = None
        self._frozen_sources: set[str] = set()  # tokenizer sources whose objects are frozen
        # The last worker to leave (id, model, wall-clock time), for /health to say so.
        self.last_departure: tuple[str, str, float] | None = None

    async def start(self) -> None:
        self._watch_task = asyncio.create_task(self._watch(), name="discovery-watch")

    async def stop(self) -> None:
        tasks = [self._watch_task] if self._watch_task else []
        for model in self.models.values():
            tasks += [h.subscription for h in model.workers.values() if h.subscription]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def on_peer_request(self, request: PeerRequest) -> None:
        """Another frontend's request: to the router of its model and pool, if we serve it."""
        model = self.models.get(request.model)
        if model is not None:
            model.router_of(request.pool).on_peer_request(request)

    def on_peer_gone(self, frontend_id: str) -> None:
        for model in self.models.values():
            for router in (model.router, model.prefill_router):
                if router is not None:
                    router.on_peer_gone(frontend_id)

    async def _watch(self) -> None:
        while True:
            try:
                async for event in self._discovery.watch(self._prefix):
                    if event.kind is WatchEventKind.PUT:
                        await self._on_put(_record_decoder.decode(event.value))
                    else:
                        self._on_delete(event.key.rsplit("/", 1)[-1])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("discovery watch failed; watching again")
                await asyncio.sleep(1.0)

    async def _on_put(self, record: InstanceRecord) -> None:
        card = record.model
        if card is None:
            return
        worker_id = record.instance_id
        model = self.models.get(card.served_name)
        if model is None:
            model = await self._add_model(record)
            if model is None:
                return
        elif (card.tokenizer_digest or card.tokenizer) != (model.card.tokenizer_digest or model.card.tokenizer):
            log.warning(
                "worker %s serves '%s' with tokenizer %s, but the model uses %s; ignoring the worker",
                worker_id, card.served_name, card.tokenizer, model.card.tokenizer,
            )
            return
        if worker_id in model.workers:
            model.update_worker(worker_id, record)
            return
        state = WorkerState(worker_id=worker_id, kv_capacity_blocks=card.kv_capacity_blocks)
        handle = WorkerHandle(record=record, state=state)
        model.add_worker(handle)
        self._model_of_worker[worker_id] = model.name
        model.router_of(handle.role).on_worker_added(state)
        handle.subscription = asyncio.create_task(self._subscribe(model, handle), name=f"events-{worker_id}")
        log.info("%s worker %s joined model '%s' at %s (%d worker(s))",
                 handle.role, worker_id, model.name, record.address, len(model.workers))

    async def _tokenizer_source(self, record: InstanceRecord) -> str:
        """A local directory holding the model's tokenizer: the card's own path when this host
        has an identical copy, else files fetched from the worker into the cache."""
        card = record.model
        assert card is not None
        if card.tokenizer == BUILTIN_TOKENIZER or not card.tokenizer_digest:
            return card.tokenizer
        if await asyncio.to_thread(local_copy_matches, card.tokenizer, card.tokenizer_digest):
            return card.tokenizer
        log.info("fetching the tokenizer of '%s' from worker %s", card.served_name, record.instance_id)
        chunks = self._client.call(record, MODEL_FILES_ENDPOINT, b"")
        return str(await fetch_model_files(chunks, card.tokenizer_digest))

    async def _add_model(self, record: InstanceRecord) -> ServedModel | None:
        card = record.model
        assert card is not None
        try:
            source = await self._tokenizer_source(record)
            tokenizer = await asyncio.to_thread(load_tokenizer, source)
        except Exception as exc:
            log.error("cannot load the tokenizer of model '%s' from %s: %s", card.served_name, card.tokenizer, exc)
            return None
        tokenizer = tokenizer.with_chat_template(card.chat_template)
        await asyncio.to_thread(lambda: tokenizer.prefix_cache)  # its probe encodes, off the loop
        context = RouterContext(
            model=card.served_name,
            block_size=card.block_size,
            options=self._router_options,
            request_resync=lambda worker_id: self._resync(worker_id),
            share=self._share,
        )
        model = ServedModel(card.served_name, card, tokenizer, self._router_factory(context), tokenizer_source=source,
                            router_context=context, router_factory=self._router_factory)
        self.models[card.served_name] = model
        log.info("model '%s' is now served (tokenizer %s, context %d)", card.served_name, card.tokenizer, card.context_length)
        if source not in self._frozen_sources:
            # A new tokenizer and its templates live as long as the process. Once per source:
            # a model that returns after its workers left reuses them (load_tokenizer caches),
            # and each freeze collects on the loop and pins what in-flight requests hold.
            self._frozen_sources.add(source)
            freeze_heap(f"model '{card.served_name}' loaded")
        return model

    def _on_delete(self, worker_id: str) -> None:
        name = self._model_of_worker.pop(worker_id, None)
        model = self.models.get(name) if name else None
        if model is None:
            return
        handle = model.remove_worker(worker_id)
        if handle is not None:
            self._client.worker_gone(handle.record)
            if handle.subscription:
                handle.subscription.cancel()
        if handle is not None:
            model.router_of(handle.role).on_worker_removed(worker_id)
        log.info("worker %s left model '%s' (%d worker(s) left)", worker_id, model.name, len(model.workers))
        self.last_departure = (worker_id, model.name, time.time())
        if not model.workers:
            del self.models[model.name]
            log.info("model '%s' has no workers left and is no longer served", model.name)

    def _resync(self, worker_id: str) -> None:
        """Restart a worker's subscription: it begins again with a full snapshot."""
        name = self._model_of_worker.get(worker_id)
        model = self.models.get(name) if name else None
        handle = model.workers.get(worker_id) if model else None
        if model is None or handle is None:
            return
        if handle.subscription:
            handle.subscription.cancel()
        handle.subscription = asyncio.create_task(self._subscribe(model, handle), name=f"events-{worker_id}")

    async def _subscribe(self, model: ServedModel, handle: WorkerHandle) -> None:
        router, state = model.router_of(handle.role), handle.state
        load_only = not router.wants_kv_events()
        while handle.state.worker_id in model.workers:
            try:
                async for message in self._client.events(handle.record, load_only):
                    if isinstance(message, LoadMetrics):
                        if handle.stalled:
                            log.info("worker %s reports again after stalling; it is routed to again", state.worker_id)
                            handle.stalled = False
                        state.load = message
                        router.on_load(message)
                    elif isinstance(message, KvEventBatch):
                        router.on_kv_events(message)
                    elif isinstance(message, KvSnapshot):
                        router.on_kv_snapshot(message)
            except asyncio.CancelledError:
                raise
            except RequestPlaneError as exc:
                log.debug("event subscription to %s ended: %s", handle.record.address, exc)
            except Exception:
                log.exception("event subscription to %s failed", handle.record.address)
            await asyncio.sleep(RESUBSCRIBE_DELAY_S)
