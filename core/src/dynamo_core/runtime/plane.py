"""The request-plane and event-plane contract, as discovery and transfer have theirs.

A *request plane* carries a call (endpoint name + payload bytes) from a frontend to one worker
and streams the handler's items back, with cancellation when the caller stops reading: a
worker runs a `RequestServer`, a frontend one `RequestClient` per plane. An *event plane*
carries a worker's KV events and load reports to the frontends that subscribe. Each plane is a
spec with a name (`tcp`, `nats`: the values of `--request-plane` and `--event-plane`, and the
`transport`/`event_plane` of an `InstanceRecord`); `runtime/transports.py` looks them up.

Every failure of a call raises a `RequestPlaneError` (`runtime/request_plane.py`):
`ConnectionLostError` when the worker cannot be reached or went away, `RemoteError` when its
handler failed.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from dynamo_core.protocols.discovery import InstanceRecord
from dynamo_core.protocols.kv_events import EventPlaneMessage

# A handler gets the call's payload and yields the response items; closing it cancels the call.
Handler = Callable[[bytes], AsyncIterator[bytes]]


@dataclass(frozen=True)
class PlaneConfig:
    """Where a plane listens or connects. Each plane reads the fields it needs."""

    host: str = "127.0.0.1"  # tcp: the server's listening address
    port: int = 0  # tcp: 0 picks a free port
    nats_url: str | None = None  # nats: None reads $NATS_URL, else the local default
    namespace: str = "dynamo"
    worker_id: str = ""  # the serving worker (servers and event publishers)


class RequestServer(abc.ABC):
    """A worker's side: serves named endpoints, each call in a task of its own."""

    @abc.abstractmethod
    def register(self, endpoint: str, handler: Handler) -> None: ...

    @abc.abstractmethod
    async def start(self) -> str:
        """Start serving; return the address clients call (an `InstanceRecord.address`)."""

    @abc.abstractmethod
    async def stop(self) -> None: ...


class RequestClient(abc.ABC):
    """A frontend's side: opens streams to workers' endpoints by address."""

    @abc.abstractmethod
    def call_batched(self, address: str, endpoint: str, payload: bytes) -> AsyncIterator[list[bytes]]:
        """The endpoint's response items, all those already received together: a consumer
        that falls behind catches up in one step instead of one wake-up per item. Closing
        the iterator early cancels the call on the worker."""

    async def call(self, address: str, endpoint: str, payload: bytes) -> AsyncIterator[bytes]:
        """The endpoint's response items one by one (see `call_batched`)."""
        async for batch in self.call_batched(address, endpoint, payload):
            for item in batch:
                yield item

    def worker_gone(self, address: str) -> None:  # noqa: B027  (optional: most planes notice by themselves)
        """Discovery dropped the worker at `address`: end its open streams now rather than at
        a timeout."""

    @abc.abstractmethod
    async def close(self) -> None: ...


@dataclass(frozen=True)
class RequestPlaneSpec:
    name: str
    create_server: Callable[[PlaneConfig], RequestServer]
    create_client: Callable[[PlaneConfig], RequestClient]


class EventSource(Protocol):
    """What an event plane reads of a worker's `EventPublisher`."""

    def add_listener(self, listener: Callable[[bytes], None]) -> None: ...

    def remove_listener(self, listener: Callable[[bytes], None]) -> None: ...

    def snapshot_payload(self) -> bytes: ...


# Stops what `EventPlaneSpec.publish` started (None: it started nothing).
Unpublish = Callable[[], Awaitable[None]]
# The frontend's client of a request plane, by name (shared: an event plane may ride on it).
ClientOf = Callable[[str], RequestClient]


@dataclass(frozen=True)
class EventPlaneSpec:
    name: str
    # Worker side, after its request server started: carry the publisher's payloads.
    publish: Callable[[EventSource, PlaneConfig], Awaitable[Unpublish | None]]
    # Frontend side: a worker's messages, a `KvSnapshot` first; `load_only` asks for load
    # reports alone where the plane can filter.
    subscribe: Callable[[ClientOf, InstanceRecord, bool], AsyncIterator[EventPlaneMessage]]
