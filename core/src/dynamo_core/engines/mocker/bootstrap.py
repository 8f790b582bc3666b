"""The mocker's rendezvous handoff of KV, as SGLang's disaggregation does it (`--disagg-bootstrap`).

SGLang's router sends a request to a prefill and a decode server at once, and the two meet at
the prefill server's bootstrap server under the request's random `bootstrap_room`. So that CPU
CI can test that orchestration with real processes, a prefill mocker with the flag serves a
bootstrap server on a port of its own: once it has computed a prompt's KV into its arena it
publishes the room's transfer parameters (region, blocks); a decode mocker asks for the room,
is answered once the prefill has published it, at once when the prefill failed (`fail`: it
was rejected, errored or abandoned, so its room will never fill), or after a timeout, and
pulls the blocks as in the answer-first handoff. The server speaks the request plane's framing with
one endpoint, so the rendezvous needs no wire protocol of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec

from dynamo_core.protocols.engine import KvTransferParams
from dynamo_core.runtime.request_plane import RequestPlaneClient, RequestPlaneError, RequestPlaneServer

ROOM_ENDPOINT = "bootstrap_room"
ROOM_KEY = "bootstrap_room"  # in KvTransferParams.engine_params, beside the server's host and port


class RoomAnswer(msgspec.Struct, omit_defaults=True, kw_only=True):
    kv: KvTransferParams | None = None
    error: str | None = None


class BootstrapError(RuntimeError):
    """A decode worker could not get a room's KV parameters (no server, bad room, timeout)."""


def room_of(engine_params: dict | None) -> int | None:
    """The bootstrap room a request's transfer parameters name, if any."""
    room = (engine_params or {}).get(ROOM_KEY)
    return room if isinstance(room, int) else None


class BootstrapServer:
    """The prefill side: rooms whose KV is computed, and decode workers waiting for theirs.

    A room's future is made by whichever comes first, the publish (or fail) or a decode
    worker's ask; it leaves with the KV's release, the ask's timeout when nothing was
    published, or a while after a failure (a decode worker may ask after the prefill failed).
    """

    def __init__(self, host: str, wait_s: float):
        self._server = RequestPlaneServer(host, 0)
        self._server.register(ROOM_ENDPOINT, self._serve_room)
        self._wait_s = wait_s
        self._rooms: dict[int, asyncio.Future[RoomAnswer]] = {}
        self._room_of_hold: dict[str, int] = {}

    async def start(self) -> dict:
        """Listen; returns what the worker publishes as `EngineInfo.disagg_bootstrap`."""
        host, port = (await self._server.start()).rsplit(":", 1)
        return {"bootstrap_host": host, "bootstrap_port": int(port)}

    def _room(self, room: int) -> asyncio.Future[RoomAnswer]:
        future = self._rooms.get(room)
        if future is None:
            future = self._rooms[room] = asyncio.get_running_loop().create_future()
        return future

    def publish(self, room: int, kv: KvTransferParams) -> None:
        future = self._room(room)
        if not future.done():
            future.set_result(RoomAnswer(kv=kv))
        self._room_of_hold[kv.hold_id] = room

    def fail(self, room: int, reason: str) -> None:
        """The prefill of `room` will not publish (rejected, failed or abandoned): a decode
        worker waiting there, or asking later, is told so at once instead of timing out."""
        future = self._room(room)
        if future.done():
            return  # published (or failed) already: a late failure changes nothing
        future.set_result(RoomAnswer(error=f"the prefill of room {room} failed: {reason}"))
        # Forget it once no decode worker would still ask (none waits longer than wait_s).
        asyncio.get_running_loop().call_later(self._wait_s, self._forget_failed, room, future)

    def _forget_failed(self, room: int, future: asyncio.Future[RoomAnswer]) -> None:
        if self._rooms.get(room) is future:
            del self._rooms[room]

    def withdraw(self, hold_id: str) -> None:
        """The KV held under `hold_id` is gone: its room can no longer be pulled from."""
        room = self._room_of_hold.pop(hold_id, None)
        if room is not None:
            self._rooms.pop(room, None)

    async def _serve_room(self, payload: bytes) -> AsyncIterator[bytes]:
        try:
            room = msgspec.msgpack.decode(payload, type=int)
        except msgspec.ValidationError as exc:
            yield msgspec.msgpack.encode(RoomAnswer(error=f"bad bootstrap room: {exc}"))
            return
        future = self._room(room)
        try:
            answer = await asyncio.wait_for(asyncio.shield(future), self._wait_s)
        except TimeoutError:
            if not future.done():
                self._rooms.pop(room, None)
            yield msgspec.msgpack.encode(RoomAnswer(error=f"room {room} got no KV within {self._wait_s:g} s"))
            return
        yield msgspec.msgpack.encode(answer)

    async def stop(self) -> None:
        await self._server.stop()


class BootstrapClient:
    """The decode side: asks a prefill worker's bootstrap server where a room's KV is."""

    def __init__(self, wait_s: float):
        self._client = RequestPlaneClient()
        self._wait_s = wait_s

    async def lookup(self, engine_params: dict) -> KvTransferParams:
        room = room_of(engine_params)
        host, port = engine_params.get("bootstrap_host"), engine_params.get("bootstrap_port")
        if room is None or not host or not isinstance(port, int):
            raise BootstrapError(f"bad bootstrap parameters {engine_params!r}")
        answer = RoomAnswer(error="the bootstrap server sent no answer")
        try:
            async with asyncio.timeout(self._wait_s + 5.0):  # the server answers by itself first
                async for item in self._client.call(f"{host}:{port}", ROOM_ENDPOINT, msgspec.msgpack.encode(room)):
                    answer = msgspec.msgpack.decode(item, type=RoomAnswer)
        except (RequestPlaneError, TimeoutError, msgspec.DecodeError) as exc:
            raise BootstrapError(f"bootstrap server {host}:{port}: {exc}") from exc
        if answer.kv is None:
            raise BootstrapError(f"bootstrap server {host}:{port}: {answer.error}")
        return answer.kv

    async def close(self) -> None:
        await self._client.close()
