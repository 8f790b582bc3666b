"""One place that knows every transport: callers name an instance record, not a protocol.

A worker's `InstanceRecord` says how to reach it (`transport`: tcp | nats, `address`) and
where its events are published (`event_plane`: tcp | nats). The frontend opens request
streams and event subscriptions through `TransportClients`, which picks the right client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from dynamo_core.protocols.discovery import InstanceRecord
from dynamo_core.protocols.kv_events import EventPlaneMessage
from dynamo_core.runtime import event_plane
from dynamo_core.protocols.names import EVENTS_ENDPOINT
from dynamo_core.runtime.request_plane import RequestPlaneClient, RequestPlaneError

REQUEST_PLANES = ("tcp", "nats")
EVENT_PLANES = ("tcp", "nats")


class TransportClients:
    def __init__(self, nats_url: str | None = None):
        self.tcp = RequestPlaneClient()
        self._nats_url = nats_url
        self._nats = None
        self._nats_lock = asyncio.Lock()

    async def _nats_client(self):
        async with self._nats_lock:
            if self._nats is None:
                from dynamo_core.runtime.nats_plane import NatsRequestClient, nats_url

                self._nats = NatsRequestClient(nats_url(self._nats_url))
            return self._nats

    async def call(self, record: InstanceRecord, endpoint: str, payload: bytes) -> AsyncIterator[bytes]:
        if record.transport == "tcp":
            async for item in self.tcp.call(record.address, endpoint, payload):
                yield item
        elif record.transport == "nats":
            client = await self._nats_client()
            async for item in client.call(record.address, endpoint, payload):
                yield item
        else:
            raise RequestPlaneError(f"worker {record.instance_id} uses unknown transport '{record.transport}'")

    async def call_batched(self, record: InstanceRecord, endpoint: str, payload: bytes) -> AsyncIterator[list[bytes]]:
        """`call`, yielding all items already received together (see RequestPlaneClient)."""
        if record.transport == "tcp":
            async for batch in self.tcp.call_batched(record.address, endpoint, payload):
                yield batch
        elif record.transport == "nats":
            client = await self._nats_client()
            async for batch in client.call_batched(record.address, endpoint, payload):
                yield batch
        else:
            raise RequestPlaneError(f"worker {record.instance_id} uses unknown transport '{record.transport}'")

    async def events(self, record: InstanceRecord, load_only: bool = False) -> AsyncIterator[EventPlaneMessage]:
        """A worker's event stream; `load_only`: just its load reports where the plane can
        filter (the embedded one; a NATS subject carries everything)."""
        if record.event_plane == "nats":
            from dynamo_core.runtime.nats_plane import events_subject, subscribe_events

            nc = await (await self._nats_client()).connection()
            async for message in subscribe_events(nc, events_subject(record.namespace, record.instance_id)):
                yield message
        elif record.transport == "tcp":
            async for message in event_plane.subscribe(self.tcp, record.address, load_only):
                yield message
        else:
            # A NATS-reachable worker with the embedded event plane: events ride the request plane.
            client = await self._nats_client()
            request = event_plane.LOAD_ONLY if load_only else b""
            async for payload in client.call(record.address, EVENTS_ENDPOINT, request):
                yield event_plane.decode_message(payload)

    def worker_gone(self, record: InstanceRecord) -> None:
        """Discovery dropped this worker: end its open streams now rather than at a timeout.
        (TCP notices by itself when the connection closes.)"""
        if record.transport == "nats" and self._nats is not None:
            self._nats.fail_streams(record.address)

    async def close(self) -> None:
        await self.tcp.close()
        if self._nats is not None:
            await self._nats.close()
