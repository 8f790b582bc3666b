"""Frontends that route as one: in-flight changes shared between routing peers.

Every frontend with a peer transport (`runtime/peer_transports.py`: NATS subject
``{namespace}.routing.peers`` with the NATS event plane, loopback UDP found through file
discovery on one host) sends its peers the `PeerRequest`s its routers hand it, and a
`PeerHeartbeat` every ``HEARTBEAT_S``. It applies
the other frontends' messages to the router of the same model and pool. A peer silent for
``PEER_EXPIRY_S`` (stopped, crashed, cut off) is reported gone, and routers drop what it had
in flight: a dead frontend's load lapses instead of weighing on its workers forever.

Messages published in one event-loop iteration go out as one transport message (a msgpack
list of at most ``BATCH_MESSAGES``), so a burst of decisions costs one send, made there and
then (a transport's ``send`` does not wait; NATS's spawns its publish). Delivery is best effort: a lost ``finished`` is
covered by the expiry of the peer, or by the router's own bound on an entry's age.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

import msgspec

from dynamo_core.protocols.routing import PeerHeartbeat, PeerMessage, PeerRequest
from dynamo_core.runtime.peer_transports import PeerTransport
from dynamo_core.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
PEER_EXPIRY_S = 3.5  # three heartbeats missed
# A PeerRequest encodes to about 200 bytes: 128 of them stay well inside one UDP datagram.
BATCH_MESSAGES = 128
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[PeerMessage])


class PeerPlane:
    """One frontend's side: publish its routers' changes, apply the others'.

    ``on_request`` receives other frontends' `PeerRequest`s, ``on_gone`` the id of a peer
    whose heartbeats stopped. ``transport`` carries the encoded batches to every peer.
    """

    def __init__(self, transport: PeerTransport, on_request: Callable[[PeerRequest], None],
                 on_gone: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.frontend_id = uuid.uuid4().hex[:12]
        self._transport = transport
        self._on_request = on_request
        self._on_gone = on_gone
        self._clock = clock
        self._started = False
        self._pending: list[PeerMessage] = []
        self._flush_scheduled = False
        self._last_seen: dict[str, float] = {}
        self._tasks: list[asyncio.Task] = []

    @property
    def peers(self) -> list[str]:
        """The other frontends heard from within the expiry."""
        return sorted(self._last_seen)

    async def start(self) -> None:
        await self._transport.start(self.frontend_id, self._receive)
        self._started = True
        self._tasks.append(asyncio.create_task(self._heartbeats(), name="peer-heartbeats"))
        log.info("routing peers: frontend %s shares in-flight requests over %s", self.frontend_id,
                 self._transport.description)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self._started:
            self._started = False
            with contextlib.suppress(Exception):
                await self._transport.stop()

    def publish(self, request: PeerRequest) -> None:
        """Queue ``request`` (its ``frontend_id`` is replaced by ours) for this loop iteration;
        dropped while no peer listens (a lone frontend pays nothing per request)."""
        if not self._started or not self._transport.has_peers:
            return
        self._pending.append(msgspec.structs.replace(request, frontend_id=self.frontend_id))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if pending and self._started:
            for i in range(0, len(pending), BATCH_MESSAGES):
                self._send(pending[i:i + BATCH_MESSAGES])

    def _send(self, messages: list[PeerMessage]) -> None:
        try:
            self._transport.send(_encoder.encode(messages))
        except Exception as exc:  # a closed socket, a peer gone: peers expire our entries if it lasts
            log.debug("routing peers: send failed: %s", exc)

    async def _heartbeats(self) -> None:
        while True:
            self._send([PeerHeartbeat(frontend_id=self.frontend_id)])
            self.expire()
            await asyncio.sleep(HEARTBEAT_S)

    def expire(self) -> None:
        """Report the peers silent for longer than ``PEER_EXPIRY_S``."""
        limit = self._clock() - PEER_EXPIRY_S
        for peer in [p for p, seen in self._last_seen.items() if seen < limit]:
            del self._last_seen[peer]
            log.info("routing peers: frontend %s went silent; its in-flight requests are dropped", peer)
            self._on_gone(peer)

    def _receive(self, data: bytes) -> None:
        try:
            messages = _decoder.decode(data)
        except msgspec.DecodeError as exc:
            log.warning("routing peers: undecodable message over %s: %s", self._transport.description, exc)
            return
        for message in messages:
            if message.frontend_id == self.frontend_id:
                continue
            self._last_seen[message.frontend_id] = self._clock()
            if isinstance(message, PeerRequest):
                self._on_request(message)
