"""One place that knows every request and event plane: callers name an instance record, not a protocol.

A worker's `InstanceRecord` says how to reach it (`transport`: tcp | nats, `address`) and
where its events are published (`event_plane`: tcp | nats). Each name is a spec of the
contract in `runtime/plane.py`, looked up here; the worker builds its server and event
publishing from them, and the frontend opens request streams and event subscriptions through
`TransportClients`, which keeps one client per plane. NATS is imported only when used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from dynamo_core.protocols.discovery import InstanceRecord
from dynamo_core.protocols.kv_events import EventPlaneMessage
from dynamo_core.runtime import event_plane
from dynamo_core.runtime.plane import (
    EventPlaneSpec,
    EventSource,
    PlaneConfig,
    RequestClient,
    RequestPlaneSpec,
    RequestServer,
    Unpublish,
)
from dynamo_core.runtime.request_plane import RequestPlaneClient, RequestPlaneError, RequestPlaneServer


def _tcp_server(config: PlaneConfig) -> RequestServer:
    return RequestPlaneServer(config.host, config.port)


def _tcp_client(config: PlaneConfig) -> RequestClient:
    return RequestPlaneClient()


def _nats_server(config: PlaneConfig) -> RequestServer:
    from dynamo_core.runtime.nats_plane import NatsRequestServer, nats_url

    return NatsRequestServer(nats_url(config.nats_url), f"{config.namespace}.instance.{config.worker_id}")


def _nats_client(config: PlaneConfig) -> RequestClient:
    from dynamo_core.runtime.nats_plane import NatsRequestClient, nats_url

    return NatsRequestClient(nats_url(config.nats_url))


async def _nats_publish(source: EventSource, config: PlaneConfig) -> Unpublish | None:
    from dynamo_core.runtime.nats_plane import publish_events

    return await publish_events(source, config)


async def _nats_subscribe(client_of, record: InstanceRecord, load_only: bool) -> AsyncIterator[EventPlaneMessage]:
    from dynamo_core.runtime.nats_plane import subscribe_worker_events

    async for message in subscribe_worker_events(client_of, record, load_only):
        yield message


REQUEST_PLANES: dict[str, RequestPlaneSpec] = {
    spec.name: spec
    for spec in (RequestPlaneSpec("tcp", _tcp_server, _tcp_client), RequestPlaneSpec("nats", _nats_server, _nats_client))
}
EVENT_PLANES: dict[str, EventPlaneSpec] = {
    spec.name: spec
    for spec in (
        EventPlaneSpec("tcp", event_plane.publish_embedded, event_plane.subscribe_embedded),
        EventPlaneSpec("nats", _nats_publish, _nats_subscribe),
    )
}


# Unknown names raise RequestPlaneError, the error every caller of a plane already handles (a
# frontend's event subscription retries on it; anything else it logs as a bug, with a traceback).


def request_plane(name: str) -> RequestPlaneSpec:
    try:
        return REQUEST_PLANES[name]
    except KeyError:
        raise RequestPlaneError(f"unknown request plane '{name}' (valid: {', '.join(REQUEST_PLANES)})") from None


def event_plane_spec(name: str) -> EventPlaneSpec:
    try:
        return EVENT_PLANES[name]
    except KeyError:
        raise RequestPlaneError(f"unknown event plane '{name}' (valid: {', '.join(EVENT_PLANES)})") from None


class TransportClients:
    """A frontend's clients, one per request plane (made on first use), by instance record."""

    def __init__(self, nats_url: str | None = None):
        self._config = PlaneConfig(nats_url=nats_url)
        self._clients: dict[str, RequestClient] = {}

    def client(self, plane: str) -> RequestClient:
        client = self._clients.get(plane)
        if client is None:
            client = self._clients[plane] = request_plane(plane).create_client(self._config)
        return client

    def _client_of(self, record: InstanceRecord) -> RequestClient:
        if record.transport not in REQUEST_PLANES:
            raise RequestPlaneError(f"worker {record.instance_id} uses unknown transport '{record.transport}' "
                                    f"(valid: {', '.join(REQUEST_PLANES)})")
        return self.client(record.transport)

    async def call(self, record: InstanceRecord, endpoint: str, payload: bytes) -> AsyncIterator[bytes]:
        async for item in self._client_of(record).call(record.address, endpoint, payload):
            yield item

    async def call_batched(self, record: InstanceRecord, endpoint: str, payload: bytes) -> AsyncIterator[list[bytes]]:
        """`call`, yielding all items already received together (see `RequestClient`)."""
        async for batch in self._client_of(record).call_batched(record.address, endpoint, payload):
            yield batch

    async def events(self, record: InstanceRecord, load_only: bool = False) -> AsyncIterator[EventPlaneMessage]:
        """A worker's event stream; `load_only`: just its load reports where the plane can
        filter (the embedded one; a NATS subject carries everything)."""
        spec = EVENT_PLANES.get(record.event_plane)
        if spec is None:
            raise RequestPlaneError(f"worker {record.instance_id} uses unknown event plane '{record.event_plane}' "
                                    f"(valid: {', '.join(EVENT_PLANES)})")
        async for message in spec.subscribe(self.client, record, load_only):
            yield message

    def worker_gone(self, record: InstanceRecord) -> None:
        """Discovery dropped this worker: end its open streams now rather than at a timeout."""
        client = self._clients.get(record.transport)
        if client is not None:
            client.worker_gone(record.address)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
