"""The TCP request plane: request/response streams between frontends and workers.

One TCP connection between a frontend and a worker carries any number of concurrent streams.
Each frame is a 4-byte big-endian length followed by a msgpack-encoded ``Frame``:

- ``Call(stream_id, endpoint, payload)`` opens a stream on one of the server's endpoints;
- ``Data(stream_id, payload)`` carries one response item;
- ``End(stream_id, error)`` closes the stream (``error`` set when the handler failed);
- ``Cancel(stream_id)`` tells the server the caller gave up: its handler task is cancelled.

Payloads are opaque bytes (the layers above encode their own Structs). Frames written in
one event-loop iteration leave in one ``write`` call, which keeps syscalls per token low; both
ends read through one ``_FrameReader``, which parses every whole frame a socket read brings in
one go (the client then hands each stream what it got as one batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import AsyncIterator

import msgspec

from dynamo_core.runtime.plane import Handler, RequestClient, RequestServer

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
MAX_FRAME_BYTES = 256 * 1024 * 1024


class Call(msgspec.Struct, tag="call", array_like=True):
    stream_id: int
    endpoint: str
    payload: bytes


class Data(msgspec.Struct, tag="data", array_like=True):
    stream_id: int
    payload: bytes


class End(msgspec.Struct, tag="end", array_like=True):
    stream_id: int
    error: str | None = None


class Cancel(msgspec.Struct, tag="cancel", array_like=True):
    stream_id: int


Frame = Call | Data | End | Cancel

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


class RequestPlaneError(RuntimeError):
    """A stream could not complete because of the transport."""


class ConnectionLostError(RequestPlaneError):
    """The connection to the worker dropped while the stream was open."""


class RemoteError(RequestPlaneError):
    """The worker's handler failed; the message is the worker's."""




class _FrameWriter:
    """Buffers frames and writes them once per loop iteration; applies TCP backpressure."""

    def __init__(self, writer: asyncio.StreamWriter):
        self._writer = writer
        self._pending: list[bytes] = []
        self._scheduled = False
        self.closed = False

    def send(self, frame: Frame) -> None:
        if self.closed:
            return
        body = _encoder.encode(frame)
        self._pending.append(_LEN.pack(len(body)))
        self._pending.append(body)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self.closed or not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            self._writer.write(data)
        except (ConnectionError, RuntimeError):
            self.closed = True

    async def drain(self) -> None:
        """Wait while the peer is slower than us (the transport's buffer is over its limit)."""
        transport = self._writer.transport
        if transport.get_write_buffer_size() > 1 << 20:
            self._flush()
            try:
                await self._writer.drain()
            except ConnectionError:
                self.closed = True

    def close(self) -> None:
        self._flush()
        self.closed = True
        with contextlib.suppress(Exception):
            self._writer.close()


_READ_BYTES = 1 << 16


def _frames_in(view: memoryview) -> tuple[list[Frame], int]:
    """The whole frames at the start of `view`, and how many bytes they took. Each frame is
    decoded from a slice of the view, so its bytes are not copied before msgspec reads them."""
    frames, position, size = [], 0, len(view)
    while size - position >= _LEN.size:
        (length,) = _LEN.unpack_from(view, position)
        if length > MAX_FRAME_BYTES:
            raise RequestPlaneError(f"frame of {length} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
        end = position + _LEN.size + length
        if end > size:
            break
        frames.append(_decoder.decode(view[position + _LEN.size : end]))
        position = end
    return frames, position


class _FrameReader:
    """Reads frames from one connection, for the server and the client alike: whatever one
    socket read brings is parsed in one go, so many small frames (one a token) cost one read,
    not two awaited reads each. Invariant: `_partial` holds only the bytes of a frame not yet
    whole; a read that ends on a frame boundary is parsed where it lies, never copied."""

    def __init__(self, reader: asyncio.StreamReader):
        self._reader = reader
        self._partial = bytearray()

    async def batch(self) -> list[Frame]:
        """The next whole frames, at least one; empty once the peer has closed its side.
        Raises RequestPlaneError for an oversized frame, msgspec.DecodeError for a bad one."""
        while data := await self._reader.read(_READ_BYTES):
            if self._partial:
                self._partial += data
                with memoryview(self._partial) as view:
                    frames, used = _frames_in(view)
                del self._partial[:used]  # the view is released: the buffer may shrink
            else:
                with memoryview(data) as view:
                    frames, used = _frames_in(view)
                    self._partial += view[used:]
            if frames:
                return frames
        return []


# ---------------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------------


class RequestPlaneServer(RequestServer):
    """Serves named endpoints; each ``Call`` runs its handler in a task of its own."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._host, self._port = host, port
        self._handlers: dict[str, Handler] = {}
        self._server: asyncio.base_events.Server | None = None
        self._connections: dict[asyncio.Task, _FrameWriter] = {}

    def register(self, endpoint: str, handler: Handler) -> None:
        self._handlers[endpoint] = handler

    async def start(self) -> str:
        """Listen, and return the address other hosts should use to reach this server."""
        self._server = await asyncio.start_server(self._on_connection, self._host, self._port)
        host, port = self._server.sockets[0].getsockname()[:2]
        if host in ("0.0.0.0", "::"):
            # Bound to every interface: advertise this host's own address, not the wildcard.
            host = socket.gethostbyname(socket.gethostname())
        return f"{host}:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Close the sockets rather than cancel the tasks: each connection's loop then ends by
        # itself (cancelling its streams), and asyncio has no cancelled callback to complain of.
        for frames in list(self._connections.values()):
            frames.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        frames = _FrameWriter(writer)
        self._connections[task] = frames
        streams: dict[int, asyncio.Task] = {}
        incoming = _FrameReader(reader)
        try:
            # An empty batch: the caller went away; the finally cancels what it had open.
            while batch := await incoming.batch():
                for frame in batch:
                    if isinstance(frame, Call):
                        handler = self._handlers.get(frame.endpoint)
                        if handler is None:
                            frames.send(End(frame.stream_id, f"unknown endpoint '{frame.endpoint}'"))
                            continue
                        stream_task = asyncio.create_task(self._run(handler, frame, frames, streams))
                        streams[frame.stream_id] = stream_task
                    elif isinstance(frame, Cancel):
                        stream_task = streams.get(frame.stream_id)
                        if stream_task is not None:
                            stream_task.cancel()
        except ConnectionError:
            pass  # the caller went away: cancel what it had open
        except (RequestPlaneError, msgspec.DecodeError) as exc:
            log.warning("closing request-plane connection: %s", exc)
        finally:
            for stream_task in list(streams.values()):
                stream_task.cancel()
            frames.close()
            self._connections.pop(task, None)

    @staticmethod
    async def _run(handler: Handler, call: Call, frames: _FrameWriter, streams: dict[int, asyncio.Task]) -> None:
        error: str | None = None
        try:
            async for item in handler(call.payload):
                frames.send(Data(call.stream_id, item))
                await frames.drain()
        except asyncio.CancelledError:
            return  # the caller cancelled, or its connection dropped: nobody waits for an End
        except Exception as exc:  # the handler's failure belongs to the caller, not the server
            log.exception("endpoint '%s' failed", call.endpoint)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            streams.pop(call.stream_id, None)
        frames.send(End(call.stream_id, error))


# ---------------------------------------------------------------------------------------------
# client
# ---------------------------------------------------------------------------------------------


_END_OF_STREAM = object()


class _Inbox:
    """What the connection's reader has received for one stream and its consumer has not
    taken yet. The consumer takes all of it at once (`take`), so a burst of deltas costs one
    wake-up, not one queue operation each (an asyncio.Queue per stream did both per item).
    Invariant: `_waiter` is set only while the consumer waits on an empty inbox."""

    __slots__ = ("items", "_waiter")

    def __init__(self) -> None:
        self.items: list = []
        self._waiter: asyncio.Future | None = None

    def put(self, item) -> None:
        self.items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list:
        """Everything received so far, waiting for the first item if there is none."""
        while not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self.items = self.items, []
        return items


class _Connection:
    def __init__(self, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.address = address
        self._reader = reader
        self.frames = _FrameWriter(writer)
        self.streams: dict[int, _Inbox] = {}
        self._ids = itertools.count(1)
        self.closed = False
        self._reader_task = asyncio.create_task(self._read_loop(), name=f"request-plane-{address}")

    def open_stream(self, endpoint: str, payload: bytes) -> tuple[int, _Inbox]:
        stream_id = next(self._ids)
        inbox = _Inbox()
        self.streams[stream_id] = inbox
        self.frames.send(Call(stream_id, endpoint, payload))
        return stream_id, inbox

    def cancel_stream(self, stream_id: int) -> None:
        if self.streams.pop(stream_id, None) is not None and not self.closed:
            self.frames.send(Cancel(stream_id))

    async def _read_loop(self) -> None:
        reason = f"connection to {self.address} closed by the worker"
        incoming = _FrameReader(self._reader)
        try:
            while frames := await incoming.batch():
                for frame in frames:
                    inbox = self.streams.get(frame.stream_id)
                    if inbox is None:
                        continue  # a stream we cancelled; late frames are dropped
                    if isinstance(frame, Data):
                        inbox.put(frame.payload)
                    elif isinstance(frame, End):
                        del self.streams[frame.stream_id]
                        inbox.put(RemoteError(frame.error) if frame.error else _END_OF_STREAM)
        except ConnectionError as exc:
            reason = f"connection to {self.address} lost ({type(exc).__name__})"
        except asyncio.CancelledError:
            reason = "client closed"
            raise
        except (RequestPlaneError, msgspec.DecodeError) as exc:
            reason = str(exc)
        finally:
            self.closed = True
            self.frames.close()
            for inbox in self.streams.values():
                inbox.put(ConnectionLostError(reason))
            self.streams.clear()

    async def close(self) -> None:
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader_task


class RequestPlaneClient(RequestClient):
    """Opens streams to worker endpoints, reusing one connection per worker address."""

    def __init__(self, connect_timeout_s: float = 5.0):
        self._connections: dict[str, _Connection] = {}
        self._connecting: dict[str, asyncio.Future] = {}
        self._connect_timeout = connect_timeout_s

    async def _connection(self, address: str) -> _Connection:
        conn = self._connections.get(address)
        if conn is not None and not conn.closed:
            return conn
        pending = self._connecting.get(address)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._connecting[address] = future
        try:
            host, port = address.rsplit(":", 1)
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port)), self._connect_timeout
            )
            conn = _Connection(address, reader, writer)
            self._connections[address] = conn
            future.set_result(conn)
            return conn
        except (OSError, asyncio.TimeoutError) as exc:
            error = ConnectionLostError(f"cannot connect to {address}: {exc}")
            future.set_exception(error)
            future.exception()  # mark retrieved: concurrent callers may be none
            raise error from exc
        finally:
            del self._connecting[address]

    async def call_batched(self, address: str, endpoint: str, payload: bytes) -> AsyncIterator[list[bytes]]:
        conn = await self._connection(address)
        stream_id, inbox = conn.open_stream(endpoint, payload)
        finished = False
        try:
            while True:
                batch = await inbox.take()
                end = batch[-1]
                if end is _END_OF_STREAM or isinstance(end, Exception):
                    finished = True
                    if len(batch) > 1:
                        yield batch[:-1]
                    if end is _END_OF_STREAM:
                        return
                    raise end
                yield batch
        finally:
            if not finished:
                conn.cancel_stream(stream_id)

    async def close(self) -> None:
        for conn in list(self._connections.values()):
            await conn.close()
        self._connections.clear()
