"""The contract between the frontend and a routing policy."""

from __future__ import annotations

import abc
import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dynamo_core.protocols.engine import PreprocessedRequest
from dynamo_core.protocols.kv_events import KvEventBatch, KvSnapshot, LoadMetrics
from dynamo_core.protocols.routing import PeerRequest


class NoWorkerAvailableError(RuntimeError):
    """No live worker can take the request (the frontend answers 503)."""


@dataclass
class WorkerState:
    """What the frontend knows of one worker instance; routers read it, the frontend writes it."""

    worker_id: str
    kv_capacity_blocks: int = 0
    in_flight: int = 0  # requests this frontend has routed there and not yet finished
    load: LoadMetrics | None = None  # the latest report from the worker itself


@dataclass
class RouterContext:
    """What a router factory receives: one router serves one model."""

    model: str
    block_size: int
    options: argparse.Namespace = field(default_factory=argparse.Namespace)
    # Ask the frontend to fetch a fresh `KvSnapshot` from a worker (after an event-id gap);
    # it arrives later through `Router.on_kv_snapshot`.
    request_resync: Callable[[str], None] = lambda worker_id: None
    # "prefill" for the router of a prefill pool, else "agg" (whole requests and decode phases).
    pool: str = "agg"
    # Tell the other frontends (routing peers) about a request of ours; they receive it through
    # `Router.on_peer_request`. A no-op without peers (no NATS event plane).
    share: Callable[[PeerRequest], None] = lambda request: None


class Router(abc.ABC):
    """Picks a worker for each request.

    The frontend calls ``select_worker`` once per request (and again, excluding failed
    workers, if a retry is needed), then exactly one of ``on_request_finished`` for that
    request. Worker changes, KV events and load metrics arrive through the ``on_*`` methods,
    all on the frontend's event loop: implementations need no locks but must not block.
    """

    @abc.abstractmethod
    def select_worker(self, request: PreprocessedRequest, workers: Sequence[WorkerState]) -> str:
        """Return the ``worker_id`` of one of ``workers`` (never empty) for ``request``."""

    def on_request_finished(self, request_id: str, worker_id: str, output_tokens: int) -> None:
        """The request routed to ``worker_id`` ended (finished, failed or cancelled)."""

    def on_first_token(self, request_id: str, worker_id: str) -> None:
        """The request's prefill is done on ``worker_id``: it now only decodes."""

    def on_worker_added(self, worker: WorkerState) -> None:
        pass

    def on_worker_removed(self, worker_id: str) -> None:
        pass

    def on_kv_events(self, batch: KvEventBatch) -> None:
        pass

    def on_kv_snapshot(self, snapshot: KvSnapshot) -> None:
        pass

    def on_load(self, metrics: LoadMetrics) -> None:
        pass

    def on_peer_request(self, request: PeerRequest) -> None:
        """Another frontend's router shared one of its requests (see `RouterContext.share`)."""

    def on_peer_gone(self, frontend_id: str) -> None:
        """Frontend ``frontend_id`` stopped sending heartbeats: drop what it had in flight."""

    def wants_kv_events(self) -> bool:
        """Whether the frontend should subscribe to workers' KV events for this router."""
        return False

    def debug_scores(self, request: PreprocessedRequest, workers: Sequence[WorkerState]) -> dict:
        """Per-worker details behind a decision, for the routing debug endpoint."""
        return {}


@dataclass(frozen=True)
class RouterSpec:
    """What the ``dynamo_routers`` hook returns for each policy."""

    name: str
    create: Callable[[RouterContext], Router]
    description: str = ""
