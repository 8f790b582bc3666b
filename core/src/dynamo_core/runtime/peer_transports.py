"""How routing peers' messages travel: one NATS subject, or loopback UDP between the
frontends of one host.

`PeerPlane` (runtime/peer_plane.py) owns what is said (batches, heartbeats, expiry); a
transport only moves opaque byte batches to every other frontend, best effort:

- `NatsPeerTransport`: publish and subscribe on ``{namespace}.routing.peers`` (the NATS
  event plane; frontends on any host).
- `LocalPeerTransport`: single-host planes (file discovery, TCP request plane) have no
  broker, so each frontend binds a UDP socket on 127.0.0.1 and registers its address in
  discovery under ``{namespace}/frontend/routing-peers/{frontend_id}`` on its own lease; a
  batch is one datagram sent to each registered peer of the same host (with etcd discovery
  and no NATS, the frontends of one host share; those of other hosts are skipped, since their
  loopback is not ours). Datagrams on loopback are not lost to
  the network, only to a full receive buffer, which the heartbeat expiry covers like any loss.
  The N HTTP processes of one `dynamo frontend --http-workers N` find each other this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from dynamo_core.protocols.routing import PeerAddress
from dynamo_core.runtime.discovery import DiscoveryBackend, WatchEventKind
from dynamo_core.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_address_decoder = msgspec.msgpack.Decoder(PeerAddress)
_RECEIVE_BUFFER_BYTES = 4 << 20  # the kernel caps it at net.core.rmem_max


def peers_subject(namespace: str) -> str:
    return f"{namespace}.routing.peers"


def peers_prefix(namespace: str) -> str:
    return f"{namespace}/frontend/routing-peers/"


class PeerTransport(Protocol):
    """Moves byte batches between routing peers; no ordering or delivery promise."""

    description: str  # for logs: where the messages go

    @property
    def has_peers(self) -> bool:
        """False when no other peer is known to listen: `PeerPlane` then skips encoding."""

    async def start(self, frontend_id: str, receive: Callable[[bytes], None]) -> None:
        """Join the peers as ``frontend_id``; ``receive`` gets every batch another peer sends
        (and may get our own, which `PeerPlane` skips)."""

    def send(self, data: bytes) -> None:
        """Send one batch to every other peer, without waiting: a routing decision never
        waits on its peers. A failure is the transport's to log; peers expire what is lost."""

    async def stop(self) -> None:
        """Leave the peers and release the transport's resources."""


class NatsPeerTransport:
    """Publish and subscribe on one NATS subject; ``connect`` returns a connected client."""

    def __init__(self, namespace: str, connect: Callable[[], Awaitable[Any]]) -> None:
        self._subject = peers_subject(namespace)
        self._connect = connect
        self._nc: Any = None  # a nats.aio.client.Client; nats is imported only when used
        self._publishes: set[asyncio.Task] = set()  # referenced until done, so none is collected
        self.description = f"NATS subject {self._subject}"

    @property
    def has_peers(self) -> bool:
        return self._nc is not None  # subscribers are not known here

    async def start(self, frontend_id: str, receive: Callable[[bytes], None]) -> None:
        self._nc = await self._connect()

        async def on_message(msg: Any) -> None:  # a nats.aio.msg.Msg
            receive(msg.data)

        await self._nc.subscribe(self._subject, cb=on_message)

    def send(self, data: bytes) -> None:
        # nats-py's publish is a coroutine (it may flush a full pending buffer): it runs in a
        # task of its own.
        if self._nc is not None:
            task = asyncio.ensure_future(self._publish(self._nc, data))
            self._publishes.add(task)
            task.add_done_callback(self._publishes.discard)

    async def _publish(self, nc: Any, data: bytes) -> None:
        try:
            await nc.publish(self._subject, data)
        except Exception as exc:  # reconnecting, or closed: peers expire our entries if it lasts
            log.debug("routing peers: NATS publish failed: %s", exc)

    async def stop(self) -> None:
        await cancel_and_wait(list(self._publishes))
        if self._nc is not None:
            nc, self._nc = self._nc, None
            with contextlib.suppress(Exception):
                await nc.close()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, receive: Callable[[bytes], None]) -> None:
        self._receive = receive

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._receive(data)

    def error_received(self, exc: Exception) -> None:
        # A peer's port closed (ICMP unreachable): it leaves discovery with its lease.
        log.debug("routing peers: datagram error: %s", exc)


class LocalPeerTransport:
    """Loopback UDP between the frontends registered in ``discovery`` (one host)."""

    def __init__(self, discovery: DiscoveryBackend, namespace: str, host: str = "127.0.0.1") -> None:
        self._discovery = discovery
        self._prefix = peers_prefix(namespace)
        self._host = host
        self._hostname = socket.gethostname()
        self._key = ""
        self._frontend_id = ""
        self._transport: asyncio.DatagramTransport | None = None
        self._peers: dict[str, tuple[str, int]] = {}  # discovery key -> address, ours excluded
        self._tasks: list[asyncio.Task] = []
        self.description = f"loopback UDP (peers in discovery under {self._prefix})"

    @property
    def has_peers(self) -> bool:
        return bool(self._peers)

    async def start(self, frontend_id: str, receive: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(receive), local_addr=(self._host, 0))
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER_BYTES)
        self._transport = transport
        host, port = sock.getsockname()[:2]
        self._frontend_id = frontend_id
        self._key = self._prefix + frontend_id
        # Known peers before we announce ourselves: the first routed request already reaches them.
        self._apply(await self._discovery.get_prefix(self._prefix))
        record = PeerAddress(frontend_id=frontend_id, hostname=self._hostname, host=host, port=port, pid=os.getpid())
        await self._discovery.put(self._key, msgspec.msgpack.encode(record))
        self._tasks.append(asyncio.create_task(self._watch(), name="routing-peers-watch"))
        self.description = f"loopback UDP {host}:{port} (peers in discovery under {self._prefix})"

    def _apply(self, records: dict[str, bytes]) -> None:
        for key, value in records.items():
            self._put(key, value)

    def _put(self, key: str, value: bytes) -> None:
        if key == self._key:
            return
        try:
            address = _address_decoder.decode(value)
        except msgspec.DecodeError:
            log.warning("routing peers: undecodable peer record %s", key)
            return
        if address.hostname == self._hostname:
            self._peers[key] = (address.host, address.port)

    async def _watch(self) -> None:
        while True:
            # A new watch replays the keys still there, not the deletes it missed: start afresh.
            self._peers.clear()
            try:
                async for event in self._discovery.watch(self._prefix):
                    if event.kind is WatchEventKind.PUT:
                        self._put(event.key, event.value)
                    else:
                        self._peers.pop(event.key, None)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("routing peers: discovery watch failed; watching again")
                await asyncio.sleep(1.0)

    def send(self, data: bytes) -> None:
        # sendto never blocks: the datagram is queued in the kernel, or dropped (error_received).
        if self._transport is None:
            return
        for address in list(self._peers.values()):
            self._transport.sendto(data, address)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self._key:
            with contextlib.suppress(Exception):
                await self._discovery.delete(self._key)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
