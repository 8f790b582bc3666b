"""The embedded event plane: KV events and load metrics from a worker to its subscribers.

A worker serves the ``events`` endpoint on its request-plane server. A subscriber (a frontend's
router) opens one long-lived stream to it and receives, in order:

1. a ``KvSnapshot`` of the worker's whole cache, stamped with the current ``event_id``;
2. then every ``KvEventBatch`` (``event_id`` one higher each time) and ``LoadMetrics`` report.

A subscriber whose router has no use for KV events (``Router.wants_kv_events``) asks for
``LOAD_ONLY`` and receives only the load reports: neither side spends time on cache events.

A subscriber that falls too far behind is dropped; it reconnects and starts from a fresh
snapshot, as it does when it sees a gap in ``event_id``. Events published in one event-loop
iteration travel as one batch.

A message that does not decode (`decode_message`: a bug, a version skew, a corrupted frame) is
logged, counted in ``dynamo_event_plane_malformed_messages`` and skipped; the stream goes on.
Ending the subscription instead would lose every event until a resubscription's snapshot, and
a skipped batch costs less: its ``event_id`` is missing from the stream, so the router sees the
gap at the next batch and asks for that snapshot itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import msgspec
from prometheus_client import Counter

from dynamo_core.engines.base import KvEventSink
from dynamo_core.protocols.kv_events import (
    EventPlaneMessage,
    KvEvent,
    KvEventBatch,
    KvSnapshot,
    KvStored,
    LoadMetrics,
)
from dynamo_core.protocols.names import EVENTS_ENDPOINT
from dynamo_core.protocols.discovery import InstanceRecord
from dynamo_core.runtime.plane import ClientOf, EventSource, PlaneConfig, RequestClient, Unpublish

log = logging.getLogger(__name__)

LOAD_ONLY = b"load"  # the subscription payload that asks for load reports alone
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(EventPlaneMessage)

# How many messages a subscriber may have queued before we drop it (it then resynchronises).
SUBSCRIBER_QUEUE_LIMIT = 10_000

MALFORMED_MESSAGES = Counter(
    "dynamo_event_plane_malformed_messages",
    "Event-plane messages that did not decode and were skipped, by where: source=worker (a worker's "
    "stream at a frontend), source=engine (an engine's KV event batch at its worker)",
    ["source"],
)


def decode_message(payload: bytes, origin: str) -> EventPlaneMessage | None:
    """One event-plane message, or None (logged and counted) when it does not decode;
    ``origin`` names the stream in the log."""
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError as exc:  # ValidationError (well-formed, wrong shape) included
        MALFORMED_MESSAGES.labels("worker").inc()
        log.warning("skipping a malformed event-plane message from %s (%d bytes): %s", origin, len(payload), exc)
        return None


class _SubscriberOverflow(Exception):
    pass


class EventPublisher(KvEventSink):
    """The worker's side: numbers KV event batches and fans them out to subscribers."""

    def __init__(self, worker_id: str, snapshot: Callable[[], list[KvStored]]):
        self.worker_id = worker_id
        self._snapshot = snapshot
        self._event_id = 0
        self._pending: list[KvEvent] = []
        self._flush_scheduled = False
        self._subscribers: set[asyncio.Queue] = set()
        self._load_subscribers: set[asyncio.Queue] = set()
        self._last_load: LoadMetrics | None = None
        self._listeners: list[Callable[[bytes], None]] = []

    def add_listener(self, listener: Callable[[bytes], None]) -> None:
        """Also hand every encoded message to `listener` (e.g. to republish it on NATS)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[bytes], None]) -> None:
        """Stop handing messages to `listener` (its plane stopped publishing)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def snapshot_payload(self) -> bytes:
        """The current cache as an encoded `KvSnapshot` (pending events flushed first)."""
        self._flush()
        return _encoder.encode(
            KvSnapshot(worker_id=self.worker_id, event_id=self._event_id, stored=self._snapshot())
        )

    # KvEventSink
    def publish(self, events: Sequence[KvEvent]) -> None:
        if not events:
            return
        self._pending.extend(events)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        self._event_id += 1
        batch = KvEventBatch(worker_id=self.worker_id, event_id=self._event_id, events=self._pending)
        self._pending = []
        self._fan_out(_encoder.encode(batch))

    def publish_load(self, metrics: LoadMetrics, force: bool = False) -> None:
        if metrics == self._last_load and not force:
            return
        self._last_load = metrics
        self._fan_out(_encoder.encode(metrics), load=True)

    def _fan_out(self, payload: bytes, load: bool = False) -> None:
        for listener in self._listeners:
            listener(payload)
        for subscribers in (self._subscribers, self._load_subscribers) if load else (self._subscribers,):
            for queue in list(subscribers):
                if queue.qsize() >= SUBSCRIBER_QUEUE_LIMIT:
                    subscribers.discard(queue)
                    queue.put_nowait(_SubscriberOverflow())
                else:
                    queue.put_nowait(payload)

    async def serve_subscription(self, payload: bytes) -> AsyncIterator[bytes]:
        """The ``events`` endpoint handler (``payload``: ``LOAD_ONLY``, or anything for all)."""
        load_only = payload == LOAD_ONLY
        # Flushed inside snapshot_payload: events already published belong before its event_id.
        snapshot = None if load_only else self.snapshot_payload()
        queue: asyncio.Queue = asyncio.Queue()
        subscribers = self._load_subscribers if load_only else self._subscribers
        subscribers.add(queue)
        try:
            if snapshot is not None:
                yield snapshot
            if self._last_load is not None:
                yield _encoder.encode(self._last_load)
            while True:
                item = await queue.get()
                if isinstance(item, _SubscriberOverflow):
                    log.warning("event subscriber fell %d messages behind; dropped", SUBSCRIBER_QUEUE_LIMIT)
                    return
                yield item
        finally:
            subscribers.discard(queue)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers) + len(self._load_subscribers)


async def subscribe(client: RequestClient, address: str, load_only: bool = False) -> AsyncIterator[EventPlaneMessage]:
    """The subscriber's side: decode the worker's event stream (skipping what does not decode)."""
    async for payload in client.call(address, EVENTS_ENDPOINT, LOAD_ONLY if load_only else b""):
        message = decode_message(payload, address)
        if message is not None:
            yield message


# The embedded (`tcp`) event plane as an `EventPlaneSpec`: the stream rides on the worker's
# request plane (its `events` endpoint, whichever plane that is), so publishing starts nothing.


async def publish_embedded(source: EventSource, config: PlaneConfig) -> Unpublish | None:
    return None


async def subscribe_embedded(client_of: ClientOf, record: InstanceRecord, load_only: bool) -> AsyncIterator[EventPlaneMessage]:
    async for message in subscribe(client_of(record.transport), record.address, load_only):
        yield message
