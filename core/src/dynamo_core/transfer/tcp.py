"""The ``tcp`` transfer backend: reads over plain TCP, for hosts without NIXL/UCX.

Each agent serves its registered regions on one listening socket. A reader sends fixed-size
requests (region id, offset, length) on a pooled connection and receives each reply's bytes
with ``sock_recv_into`` straight into the destination buffer; the owner sends from its
registered buffer with ``sock_sendall``, so the payload is never copied in Python. The pieces
of a ``read_many`` are all requested at once and answered in order on one connection, so a
batch costs one round trip rather than one per piece.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import Sequence
from typing import Any

from dynamo_core.transfer.base import (
    ReadPiece,
    RemoteRegion,
    TransferAgent,
    TransferConfig,
    TransferError,
    byte_view,
    check_pieces,
    default_agent_name,
)

log = logging.getLogger(__name__)

_REQUEST = struct.Struct("<QQQ")  # region id, offset, length
_REPLY = struct.Struct("<BQ")  # status, then that many bytes of data (OK) or error text (ERROR)
_OK, _ERROR = 0, 1
# Replies up to this size are copied into one send with their neighbours: a copy of a small
# piece is cheaper than a syscall; larger ones go out from the registered buffer itself.
_COALESCE_BYTES = 64 * 1024
_STAGING_BYTES = 256 * 1024
_DIRECT_BYTES = 64 * 1024  # receive at least this much straight into the destination


class _Receiver:
    """Reads one connection's stream into caller buffers.

    Small messages (request headers, small pieces) come through a staging buffer, many per
    syscall; the rest of a large payload is received straight into the caller's buffer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket):
        self._loop, self._sock = loop, sock
        self._staged = memoryview(bytearray(_STAGING_BYTES))
        self._start = self._end = 0

    def staged(self) -> int:
        """Bytes received but not yet taken."""
        return self._end - self._start

    async def read_into(self, target: memoryview) -> bool:
        """Fill ``target``. False on a clean end of stream before its first byte."""
        size = len(target)
        done = min(self._end - self._start, size)
        target[:done] = self._staged[self._start : self._start + done]
        self._start += done
        while done < size:
            if size - done >= _DIRECT_BYTES:
                n = await self._loop.sock_recv_into(self._sock, target[done:])
            else:
                if self._start == self._end:
                    self._start = self._end = 0
                n = await self._loop.sock_recv_into(self._sock, self._staged[self._end :])
                self._end += n
                take = min(n, size - done)
                target[done : done + take] = self._staged[self._start : self._start + take]
                self._start += take
                n = take
            if n == 0:
                if done == 0:
                    return False
                raise ConnectionError("connection closed in the middle of a message")
            done += n
        return True


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class TcpTransferAgent(TransferAgent):
    name = "tcp"

    def __init__(self, config: TransferConfig):
        self._config = config
        self._agent_name = config.agent_name or default_agent_name()
        self._regions: dict[int, memoryview] = {}
        self._ids = itertools.count(1)
        self._listener: socket.socket | None = None
        self._address = ""
        self._accepting: asyncio.Task[None] | None = None
        self._serving: set[asyncio.Task[None]] = set()
        self._idle: dict[str, list[socket.socket]] = {}  # reader side: open connections by peer address

    @property
    def agent_name(self) -> str:
        return self._agent_name

    @property
    def address(self) -> str:
        """``host:port`` that peers connect to (after ``start``)."""
        return self._address

    # -- owner side -----------------------------------------------------------------------------

    async def start(self) -> None:
        host = self._config.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, self._config.port))
        except OSError as e:
            listener.close()
            raise TransferError(f"tcp transfer agent cannot listen on {host}:{self._config.port}: {e}") from e
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        port = listener.getsockname()[1]
        # A wildcard listener is reached through the host's name, not through 0.0.0.0.
        advertised = socket.gethostname() if host in ("", "0.0.0.0", "::") else host
        self._address = f"[{advertised}]:{port}" if ":" in advertised else f"{advertised}:{port}"
        self._accepting = asyncio.create_task(self._accept_loop(listener))

    def register(self, buffer: Any) -> int:
        region_id = next(self._ids)
        self._regions[region_id] = byte_view(buffer)
        return region_id

    def describe(self, region_id: int) -> RemoteRegion:
        if not self._address:
            raise TransferError("describe() before start(): the agent has no address yet")
        view = self._local(region_id)
        return RemoteRegion(
            backend=self.name, agent=self._agent_name, metadata=self._address.encode(),
            region_id=region_id, length=view.nbytes,
        )

    def deregister(self, region_id: int) -> None:
        if self._regions.pop(region_id, None) is None:
            raise TransferError(f"region {region_id} is not registered with agent '{self._agent_name}'")

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors, a peer that gave up: keep accepting
                log.warning("transfer agent '%s' could not accept a connection: %s", self._agent_name, exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._serve(conn))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        receiver = _Receiver(loop, conn)
        header = memoryview(bytearray(_REQUEST.size))
        pending = bytearray()  # small replies not yet sent: one send for a run of them
        try:
            while await receiver.read_into(header):
                region_id, offset, length = _REQUEST.unpack(header)
                region = self._regions.get(region_id)
                if region is None:
                    error = f"agent '{self._agent_name}' has no region {region_id} (never registered, or deregistered)"
                elif offset + length > region.nbytes:
                    error = (
                        f"range [{offset}, {offset + length}) is outside region {region_id} "
                        f"of agent '{self._agent_name}' ({region.nbytes} bytes)"
                    )
                else:
                    error = ""
                if error:
                    text = error.encode()
                    pending += _REPLY.pack(_ERROR, len(text)) + text
                elif length <= _COALESCE_BYTES:
                    pending += _REPLY.pack(_OK, length)
                    pending += region[offset : offset + length]
                else:
                    pending += _REPLY.pack(_OK, length)
                    await loop.sock_sendall(conn, pending)
                    pending = bytearray()
                    await loop.sock_sendall(conn, region[offset : offset + length])  # from the region itself
                # Flush once no further request is already here, so a batch's small replies share sends.
                if pending and (len(pending) >= _STAGING_BYTES or receiver.staged() < _REQUEST.size):
                    await loop.sock_sendall(conn, pending)
                    pending = bytearray()  # a new one: sock_sendall may still hold a view of the old
        except (ConnectionError, OSError) as e:
            log.debug("tcp transfer: reader connection ended: %s", e)
        finally:
            conn.close()

    # -- reader side ----------------------------------------------------------------------------

    def _local(self, region_id: int) -> memoryview:
        try:
            return self._regions[region_id]
        except KeyError:
            raise TransferError(f"region {region_id} is not registered with agent '{self._agent_name}'") from None

    async def read_many(self, remote: RemoteRegion, local_region: int, pieces: Sequence[tuple[int, int, int]]) -> None:
        if remote.backend != self.name:
            raise TransferError(f"region of agent '{remote.agent}' belongs to backend '{remote.backend}', not tcp")
        local = self._local(local_region)
        batch = check_pieces(remote, local.nbytes, pieces)
        if not batch:
            return
        address = remote.metadata.decode()
        try:
            await asyncio.wait_for(self._read_batch(address, remote.region_id, local, batch), self._config.timeout_s)
        except TimeoutError:
            raise TransferError(
                f"read from agent '{remote.agent}' at {address} did not finish within {self._config.timeout_s} s"
            ) from None
        except (ConnectionError, OSError) as e:
            raise TransferError(f"tcp peer '{remote.agent}' at {address} is unreachable or went away: {e}") from e

    async def _read_batch(self, address: str, region_id: int, local: memoryview, batch: list[ReadPiece]) -> None:
        loop = asyncio.get_running_loop()
        conn = await self._connection(address)
        healthy = False
        # Requests go out while replies come in: a long batch could fill both directions'
        # socket buffers if we sent every request before reading.
        requests = b"".join(_REQUEST.pack(region_id, p.remote_offset, p.length) for p in batch)
        sending = asyncio.ensure_future(loop.sock_sendall(conn, requests))
        try:
            receiver = _Receiver(loop, conn)
            reply = memoryview(bytearray(_REPLY.size))
            for piece in batch:
                if not await receiver.read_into(reply):
                    raise ConnectionError("the peer closed the connection")
                status, length = _REPLY.unpack(reply)
                if status == _ERROR:
                    text = bytearray(length)
                    await receiver.read_into(memoryview(text))
                    raise TransferError(text.decode(errors="replace"))
                if length != piece.length:
                    raise TransferError(f"peer at {address} answered {length} bytes for a {piece.length}-byte piece")
                if not await receiver.read_into(local[piece.local_offset : piece.local_offset + length]):
                    raise ConnectionError("the peer closed the connection")
            await sending
            healthy = True
        finally:
            if not sending.done():
                sending.cancel()
                with contextlib.suppress(BaseException):
                    await sending
            if healthy:
                self._idle.setdefault(address, []).append(conn)
            else:
                conn.close()  # mid-batch state is unknown: never reuse it

    async def _connection(self, address: str) -> socket.socket:
        idle = self._idle.get(address, [])
        while idle:
            conn = idle.pop()
            if _still_open(conn):
                return conn
            conn.close()
        host, port = _split_address(address)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        last_error: OSError = ConnectionError(f"no address for {host}")
        for family, type_, proto, _, sockaddr in infos:
            conn = socket.socket(family, type_, proto)
            conn.setblocking(False)
            try:
                await loop.sock_connect(conn, sockaddr)
            except OSError as e:
                conn.close()
                last_error = e
                continue
            except BaseException:  # cancelled (a caller's timeout): the socket is not returned
                conn.close()
                raise
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn
        raise last_error

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        tasks = [t for t in (self._accepting, *self._serving) if t is not None]
        for task in self._serving:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


def _still_open(conn: socket.socket) -> bool:
    """Whether a pooled connection survived its idle time (the peer may have closed it)."""
    try:
        conn.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False  # end of stream, or bytes nobody asked for: either way unusable
