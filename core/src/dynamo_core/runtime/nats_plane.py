"""The NATS request plane and event plane, for deployments that span hosts.

Request plane. A worker subscribes to `{prefix}.{endpoint}` for each endpoint and to
`{prefix}.cancel`, where `prefix` is `{namespace}.instance.{instance_id}` (its record's
address). A caller's connection subscribes once to `{inbox}.*` under a fresh inbox; each
request goes out with `{inbox}.{call}` as its reply subject. The worker answers with frames
(the TCP plane's `Data` and `End`, plus `Accepted` and `Keepalive`), and sends every frame it
has for one caller connection in one loop iteration as a single `Batch` message on
`{inbox}.batch`: with many concurrent streams one NATS message carries a token for each,
instead of one message per token.

- `Accepted` within `ACCEPT_TIMEOUT_S` proves a live worker took the request; without it the
  caller fails fast with `ConnectionLostError` and the frontend routes the request elsewhere.
- `Keepalive` every `KEEPALIVE_S` while a handler runs silently (a long prefill); a stream with
  no frame for `STALL_TIMEOUT_S` (worker gone, NATS restarted mid-stream) ends with
  `ConnectionLostError` rather than hanging.
- Flow control: the caller acknowledges every `ACK_EVERY` frames on `{prefix}.ack`; the worker
  pauses a stream that is `WINDOW` frames ahead of its acknowledgements.
- Data frames are numbered and keepalives carry the count sent, so a frame lost while NATS
  restarts ends the stream with `ConnectionLostError` instead of silently dropping tokens.
- Closing the stream early publishes the inbox on `{prefix}.cancel`, cancelling the handler.

Event plane. A worker publishes `KvEventBatch` and `LoadMetrics` on `{namespace}.events.{id}`
and answers snapshot requests on `{namespace}.events.{id}.snapshot`; a subscriber subscribes
first, then asks for the snapshot and drops buffered batches the snapshot already covers, so
any number of frontends see the same ordered state.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator

import msgspec
import nats
from nats.aio.client import Client as NatsConnection
from nats.aio.msg import Msg

from dynamo_core.protocols.discovery import InstanceRecord
from dynamo_core.protocols.kv_events import EventPlaneMessage, KvEventBatch, KvSnapshot
from dynamo_core.runtime.event_plane import decode_message
from dynamo_core.runtime.plane import EventSource, Handler, PlaneConfig, RequestClient, RequestServer, Unpublish
from dynamo_core.runtime.request_plane import ConnectionLostError, Data, End, RemoteError
from dynamo_core.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
ACCEPT_TIMEOUT_S = 5.0
KEEPALIVE_S = 2.0
STALL_TIMEOUT_S = 6.0  # three keepalives missed
WINDOW = 512
ACK_EVERY = 128


class Accepted(msgspec.Struct, tag="accepted", array_like=True):
    pass


class Keepalive(msgspec.Struct, tag="keepalive", array_like=True):
    sent: int  # Data frames published so far: lets the caller see lost trailing frames


class Ack(msgspec.Struct, array_like=True):
    inbox: str
    received: int


ReplyFrame = Accepted | Keepalive | Data | End


class Batch(msgspec.Struct, array_like=True):
    """Frames for several calls of one caller connection, each with its call's token."""

    frames: list[tuple[str, ReplyFrame]]


BATCH_OVERHEAD = 64  # bytes: a Batch's msgpack array headers
FRAME_OVERHEAD = 64  # bytes: one (call, frame) pair beside a Data frame's payload
BATCH_TOKEN = "batch"  # `{inbox}.batch`; call tokens are decimal numbers, so never this
_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(Batch)
_ack_decoder = msgspec.msgpack.Decoder(Ack)


def nats_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("NATS_SERVER") or DEFAULT_NATS_URL


async def connect(url: str, name: str) -> NatsConnection:
    """A connection that reconnects forever: NATS restarts must not take a process down."""

    async def on_disconnect():
        log.warning("NATS connection lost; reconnecting")

    async def on_reconnect():
        log.info("NATS connection re-established")

    async def on_error(exc):
        log.debug("NATS error: %s", exc)

    return await nats.connect(
        servers=[u.strip() for u in url.split(",")],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )


# ---------------------------------------------------------------------------------------------
# request plane: server
# ---------------------------------------------------------------------------------------------


class _ServerStream:
    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.credit = asyncio.Event()
        self.credit.set()
        self.task: asyncio.Task | None = None


def _within(frames: list[tuple[str, ReplyFrame]], limit: int) -> Iterator[list[tuple[str, ReplyFrame]]]:
    """The frames in order, cut into runs whose encoding stays under `limit` bytes (the
    server's largest message, less room for the batch's own headers); a frame over it goes
    alone."""
    run: list[tuple[str, ReplyFrame]] = []
    size = 0
    for call, frame in frames:
        cost = len(call) + FRAME_OVERHEAD + (len(frame.payload) if isinstance(frame, Data) else 0)
        if run and size + cost > limit:
            yield run
            run, size = [], 0
        run.append((call, frame))
        size += cost
    if run:
        yield run


class _ReplyBatcher:
    """Gathers the frames handlers produce and publishes them, per caller connection, as one
    `Batch` each time its task gets a turn (the request plane's `_FrameWriter` does the same
    per TCP connection, but publishing to NATS is a coroutine, hence a task). One task
    publishes everything, so the frames of a stream leave in the order they were sent. A frame
    lost to a broken connection is not retried: the caller notices the gap in the numbering
    (or the silence) and says so."""

    def __init__(self, nc: NatsConnection):
        self._nc = nc
        self._pending: dict[str, list[tuple[str, ReplyFrame]]] = {}  # caller inbox -> frames
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._publish_loop(), name="nats-reply-batcher")

    def send(self, reply: str, frame: ReplyFrame) -> None:
        inbox, _, call = reply.rpartition(".")
        self._pending.setdefault(inbox, []).append((call, frame))
        self._ready.set()

    async def _publish_loop(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self._publish_pending()

    async def _publish_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for inbox, frames in pending.items():
            for batch in _within(frames, self._nc.max_payload - BATCH_OVERHEAD):
                try:
                    await self._nc.publish(f"{inbox}.{BATCH_TOKEN}", _encoder.encode(Batch(batch)))
                except Exception as exc:  # noqa: BLE001 - reconnecting or closed: see the docstring
                    log.warning("could not publish %d frame(s) to %s: %s", len(batch), inbox, exc)

    async def close(self) -> None:
        """Stop, publishing what is still pending."""
        await cancel_and_wait([self._task])
        await self._publish_pending()


class NatsRequestServer(RequestServer):
    def __init__(self, url: str, prefix: str):
        self._url, self.prefix = url, prefix
        self._nc: NatsConnection | None = None
        self._replies: _ReplyBatcher | None = None
        self._handlers: dict[str, Handler] = {}
        self._streams: dict[str, _ServerStream] = {}

    def register(self, endpoint: str, handler: Handler) -> None:
        self._handlers[endpoint] = handler

    async def start(self) -> str:
        self._nc = await connect(self._url, f"worker {self.prefix}")
        self._replies = _ReplyBatcher(self._nc)
        for endpoint, handler in self._handlers.items():
            await self._nc.subscribe(f"{self.prefix}.{endpoint}", cb=self._on_request(handler))
        await self._nc.subscribe(f"{self.prefix}.cancel", cb=self._on_cancel)
        await self._nc.subscribe(f"{self.prefix}.ack", cb=self._on_ack)
        await self._nc.flush()
        return self.prefix

    def _on_request(self, handler: Handler) -> Callable:
        async def receive(msg: Msg) -> None:
            if not msg.reply:
                return
            stream = _ServerStream()
            self._streams[msg.reply] = stream
            stream.task = asyncio.create_task(self._run(handler, msg.data, msg.reply, stream))

        return receive

    async def _run(self, handler: Handler, payload: bytes, inbox: str, stream: _ServerStream) -> None:
        replies = self._replies
        assert replies is not None
        error: str | None = None
        cancelled = False
        keepalive = asyncio.create_task(self._keepalive(inbox, stream))
        try:
            replies.send(inbox, Accepted())
            async for item in handler(payload):
                await stream.credit.wait()
                # Data frames are numbered from 1 (in the `stream_id` slot, unused on NATS) so
                # the caller notices frames lost in a NATS restart instead of missing tokens.
                stream.sent += 1
                replies.send(inbox, Data(stream.sent, item))
                if stream.sent - stream.acked >= WINDOW:
                    stream.credit.clear()
        except asyncio.CancelledError:
            cancelled = True
        except Exception as exc:
            log.exception("endpoint of %s failed", self.prefix)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            keepalive.cancel()
            self._streams.pop(inbox, None)
        if not cancelled:
            replies.send(inbox, End(0, error))

    async def _keepalive(self, inbox: str, stream: _ServerStream) -> None:
        assert self._replies is not None
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            self._replies.send(inbox, Keepalive(stream.sent))

    async def _on_cancel(self, msg: Msg) -> None:
        stream = self._streams.get(msg.data.decode())
        if stream is not None and stream.task is not None:
            stream.task.cancel()

    async def _on_ack(self, msg: Msg) -> None:
        ack = _ack_decoder.decode(msg.data)
        stream = self._streams.get(ack.inbox)
        if stream is not None:
            stream.acked = max(stream.acked, ack.received)
            if stream.sent - stream.acked < WINDOW:
                stream.credit.set()

    async def stop(self) -> None:
        for stream in list(self._streams.values()):
            if stream.task is not None:
                stream.task.cancel()
        if self._replies is not None:
            await self._replies.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()


# ---------------------------------------------------------------------------------------------
# request plane: client
# ---------------------------------------------------------------------------------------------


class _ReplyInbox:
    """One subscription per connection, `{inbox}.*`, for the replies of every call: the
    workers' `Batch` messages and NATS's own "no responders" statuses (sent to a call's own
    reply subject). Each call's frames go to its queue, in order."""

    def __init__(self, nc: NatsConnection):
        self._nc = nc
        self.inbox = nc.new_inbox()
        self._calls: dict[str, asyncio.Queue] = {}
        self._ids = itertools.count(1)

    async def start(self) -> None:
        await self._nc.subscribe(f"{self.inbox}.*", cb=self._receive)

    def open(self) -> tuple[str, asyncio.Queue]:
        call = str(next(self._ids))
        queue: asyncio.Queue[ReplyFrame | None] = asyncio.Queue()  # None: nobody took the call
        self._calls[call] = queue
        return f"{self.inbox}.{call}", queue

    def close(self, reply: str) -> None:
        self._calls.pop(reply.rpartition(".")[2], None)

    async def _receive(self, msg: Msg) -> None:
        token = msg.subject.rpartition(".")[2]
        if token == BATCH_TOKEN:
            for call, frame in _batch_decoder.decode(msg.data).frames:
                queue = self._calls.get(call)
                if queue is not None:  # else a call that has ended: late frames are dropped
                    queue.put_nowait(frame)
        elif not msg.data and msg.headers and msg.headers.get("Status") == "503":
            # NATS itself answers "no responders" when nobody subscribes to the request subject.
            queue = self._calls.get(token)
            if queue is not None:
                queue.put_nowait(None)


class NatsRequestClient(RequestClient):
    def __init__(self, url: str):
        self._url = url
        self._nc: NatsConnection | None = None
        self._replies: _ReplyInbox | None = None
        self._lock = asyncio.Lock()
        self._open: dict[str, set[asyncio.Queue]] = {}  # prefix -> queues of its open streams

    def worker_gone(self, prefix: str) -> None:
        """End every open stream to `prefix` now (discovery says that worker is gone)."""
        for queue in self._open.get(prefix, ()):
            queue.put_nowait(None)

    async def connection(self) -> NatsConnection:
        """The frontend's NATS connection (shared with the event plane)."""
        return (await self._connected())[0]

    async def _connected(self) -> tuple[NatsConnection, _ReplyInbox]:
        async with self._lock:
            if self._nc is None or self._replies is None:
                nc = await connect(self._url, "frontend")
                replies = _ReplyInbox(nc)
                await replies.start()
                self._nc, self._replies = nc, replies
            return self._nc, self._replies

    async def call_batched(self, prefix: str, endpoint: str, payload: bytes) -> AsyncIterator[list[bytes]]:
        """Stream response items, every item already received yielded together."""
        nc, replies = await self._connected()
        inbox, queue = replies.open()
        finished = False
        self._open.setdefault(prefix, set()).add(queue)
        try:
            await nc.publish(f"{prefix}.{endpoint}", payload, reply=inbox)
            try:
                first = await asyncio.wait_for(queue.get(), ACCEPT_TIMEOUT_S)
            except asyncio.TimeoutError:
                finished = True  # nobody took it: nothing to cancel
                raise ConnectionLostError(f"no worker answered on {prefix} within {ACCEPT_TIMEOUT_S:.0f} s") from None
            if first is None:
                finished = True
                raise ConnectionLostError(f"no worker answered on {prefix}: nobody is subscribed")
            if not isinstance(first, Accepted):
                raise ConnectionLostError(f"protocol error: {prefix} answered {type(first).__name__} first")
            received = 0
            while True:
                try:
                    pending = [await asyncio.wait_for(queue.get(), STALL_TIMEOUT_S)]
                except asyncio.TimeoutError:
                    raise ConnectionLostError(f"worker {prefix} went silent for {STALL_TIMEOUT_S:.0f} s") from None
                while not queue.empty():
                    pending.append(queue.get_nowait())
                batch: list[bytes] = []
                for frame in pending:
                    if frame is None:
                        raise ConnectionLostError(f"worker {prefix} is gone")
                    if isinstance(frame, Keepalive):
                        if frame.sent > received:
                            raise ConnectionLostError(f"lost {frame.sent - received} frame(s) from {prefix}")
                    elif isinstance(frame, Data):
                        if frame.stream_id != received + 1:
                            raise ConnectionLostError(f"lost frame(s) from {prefix} (got #{frame.stream_id} after #{received})")
                        received += 1
                        if received % ACK_EVERY == 0:
                            await nc.publish(f"{prefix}.ack", _encoder.encode(Ack(inbox, received)))
                        batch.append(frame.payload)
                    elif isinstance(frame, End):
                        finished = True
                        if batch:
                            yield batch
                        if frame.error:
                            raise RemoteError(frame.error)
                        return
                if batch:
                    yield batch
        finally:
            streams = self._open.get(prefix)
            if streams is not None:
                streams.discard(queue)
                if not streams:
                    del self._open[prefix]
            replies.close(inbox)
            if not finished:
                with contextlib.suppress(Exception):
                    await nc.publish(f"{prefix}.cancel", inbox.encode())

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = self._replies = None


# ---------------------------------------------------------------------------------------------
# event plane
# ---------------------------------------------------------------------------------------------


def events_subject(namespace: str, worker_id: str) -> str:
    return f"{namespace}.events.{worker_id}"


class NatsEventForwarder:
    """Worker side: republishes the local event publisher's stream on NATS subjects."""

    def __init__(self, nc: NatsConnection, subject: str, snapshot: Callable[[], bytes]):
        self._nc, self._subject, self._snapshot = nc, subject, snapshot

    async def start(self) -> None:
        async def answer(msg: Msg) -> None:
            await msg.respond(self._snapshot())

        await self._nc.subscribe(f"{self._subject}.snapshot", cb=answer)

    async def forward(self, payload: bytes) -> None:
        await self._nc.publish(self._subject, payload)


async def subscribe_events(nc: NatsConnection, subject: str) -> AsyncIterator[EventPlaneMessage]:
    """Subscriber side: a snapshot first, then the batches after it, in order."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def receive(msg: Msg) -> None:
        queue.put_nowait(msg.data)

    sub = await nc.subscribe(subject, cb=receive)
    try:
        reply = await nc.request(f"{subject}.snapshot", b"", timeout=ACCEPT_TIMEOUT_S)
        snapshot = decode_message(reply.data, f"{subject}.snapshot")
        if not isinstance(snapshot, KvSnapshot):  # None: malformed, logged and counted
            raise ConnectionLostError(f"{subject}: expected a snapshot, got {type(snapshot).__name__}")
        yield snapshot
        last = snapshot.event_id
        while True:
            message = decode_message(await queue.get(), subject)
            if message is None:
                continue  # skipped; a lost batch shows as a gap in event_id
            if isinstance(message, KvEventBatch):
                if message.event_id <= last:
                    continue  # already part of the snapshot
                last = message.event_id
            yield message
    except nats.errors.TimeoutError as exc:
        raise ConnectionLostError(f"{subject}: no snapshot answer") from exc
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def publish_events(source: EventSource, config: PlaneConfig) -> Unpublish:
    """Worker side of the `nats` event plane: republish `source`'s payloads on the worker's
    subject and answer snapshot requests; returns what closes the connection again."""
    nc = await connect(nats_url(config.nats_url), f"worker {config.worker_id} events")
    forwarder = NatsEventForwarder(nc, events_subject(config.namespace, config.worker_id), source.snapshot_payload)
    await forwarder.start()
    pending: set[asyncio.Task] = set()

    def forward(payload: bytes) -> None:
        task = asyncio.ensure_future(forwarder.forward(payload))
        pending.add(task)
        task.add_done_callback(pending.discard)

    source.add_listener(forward)

    async def unpublish() -> None:
        # Undo all of it: no more forwarding (each later event would spawn a publish on a closed
        # connection), the forwards under way sent, then the snapshot responder unsubscribed and
        # the connection's buffer flushed by the drain before it closes.
        source.remove_listener(forward)
        await asyncio.gather(*pending, return_exceptions=True)
        try:
            await nc.drain()
        except Exception:  # noqa: BLE001 - NATS gone: nothing left to flush
            with contextlib.suppress(Exception):
                await nc.close()

    return unpublish


async def subscribe_worker_events(
    client_of: Callable[[str], RequestClient], record: InstanceRecord, load_only: bool
) -> AsyncIterator[EventPlaneMessage]:
    """Frontend side of the `nats` event plane: the worker's subject, on the frontend's NATS
    connection (a subject carries everything, so `load_only` cannot filter)."""
    client = client_of("nats")
    assert isinstance(client, NatsRequestClient)
    async for message in subscribe_events(await client.connection(), events_subject(record.namespace, record.instance_id)):
        yield message
