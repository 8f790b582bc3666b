"""Receives an engine's KV event batches over ZMQ on the worker's event loop.

vLLM and SGLang publish KV events the same way (SGLang's `ZmqEventPublisher` is vLLM's):
`(topic, seq, payload)` from the engine's scheduler process, `seq` counting batches from 0.
Here a SUB socket binds a free loopback port and the engine's PUB connects to it (both connect
when the endpoint names a host, bind on `*`), so no port is guessed. A gap in `seq` is filled
from the engine's replay socket (a ROUTER it binds on an IPC path: send the first missing
`seq`, receive the buffered batches up to an end marker); a gap the replay buffer no longer
covers is reported to `on_lost` before the batches that follow it.

Imports pyzmq, which the engines bring: only engine plugins import this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable

import zmq
import zmq.asyncio

from dynamo_core.runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)

END_SEQ = (-1).to_bytes(8, "big", signed=True)  # the publisher's end-of-replay marker
REPLAY_TIMEOUT_S = 5.0


class KvEventSubscriber:
    def __init__(self, name: str, topic: str = "", engine: str = "vllm") -> None:
        self.topic = topic
        self.engine = engine  # names the engine in logs and the replay socket's path
        self._ctx = zmq.asyncio.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.RCVHWM, 0)  # never drop on our side; the engine's PUB bounds its own queue
        self._sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        port = self._sub.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._replay_path = os.path.join(tempfile.gettempdir(), f"dynamo-{engine}-{name}-replay.ipc")
        self.replay_endpoint = f"ipc://{self._replay_path}"
        self._next_seq = 0
        self._task: asyncio.Task | None = None

    def start(self, handle: Callable[[bytes], None], on_lost: Callable[[int, int], None]) -> None:
        """Deliver each batch's payload to `handle`, in order; `on_lost(first, end)` for a gap
        that could not be replayed. Call on the event loop once the engine is up."""
        self._task = asyncio.create_task(self._receive(handle, on_lost), name=f"{self.engine}-kv-events")

    async def _receive(self, handle: Callable[[bytes], None], on_lost: Callable[[int, int], None]) -> None:
        while True:
            frames = await self._sub.recv_multipart()
            if len(frames) != 3:
                log.warning("ignoring a malformed %s KV event message (%d frames)", self.engine, len(frames))
                continue
            seq = int.from_bytes(frames[1], "big")
            if seq < self._next_seq:
                continue  # already delivered by a replay
            if seq > self._next_seq:
                await self._replay(self._next_seq, seq, handle, on_lost)
            self._next_seq = seq + 1
            self._deliver(handle, frames[2], seq)

    def _deliver(self, handle: Callable[[bytes], None], payload: bytes, seq: int) -> None:
        try:
            handle(payload)
        except Exception:  # one bad batch must not stop the stream
            log.exception("could not apply %s KV event batch %d", self.engine, seq)

    async def _replay(self, first: int, end: int, handle: Callable[[bytes], None], on_lost: Callable[[int, int], None]) -> None:
        log.warning("%s KV event batches %d..%d were missed; asking for a replay", self.engine, first, end - 1)
        expected = first
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        try:
            dealer.connect(self.replay_endpoint)
            await dealer.send_multipart([b"", first.to_bytes(8, "big")])
            while True:
                frames = await asyncio.wait_for(dealer.recv_multipart(), REPLAY_TIMEOUT_S)
                # `[b"", seq, payload]` as SGLang's (and vLLM's) ROUTER sends it, or with the
                # topic before seq: the last two frames are the batch either way.
                if len(frames) not in (3, 4) or frames[-2] == END_SEQ:
                    break
                seq = int.from_bytes(frames[-2], "big")
                if seq < expected or seq >= end:
                    continue
                if seq > expected:  # older batches have left the replay buffer
                    on_lost(expected, seq)
                self._deliver(handle, frames[-1], seq)
                expected = seq + 1
        except asyncio.TimeoutError:
            log.warning("%s did not answer the KV event replay request", self.engine)
        finally:
            dealer.close()
        if expected < end:
            on_lost(expected, end)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        self._sub.close(linger=0)
        self._ctx.term()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._replay_path)
