"""The engines' KV events over real ZMQ sockets (`dynamo_core.engines.zmq_kv_events`): in
order, and gaps replayed through the engine's ROUTER.

The fake publisher speaks the protocol of SGLang 0.5.15's and vLLM's `ZmqEventPublisher`: its
PUB connects to the subscriber's endpoint and sends `[topic, seq u64 BE, payload]`; its ROUTER
binds the replay endpoint, takes `[b"", start_seq]` and answers each buffered batch as
`[identity, b"", seq, payload]` (what SGLang sends, as recorded on the GPU) or with the topic
before seq, then the end marker. Each plugin's tests run its engine's own publisher where the
engine is installed.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

zmq = pytest.importorskip("zmq")
import zmq.asyncio  # noqa: E402

from dynamo_core.engines.zmq_kv_events import END_SEQ, KvEventSubscriber  # noqa: E402

TOPIC = "kv"


class FakePublisher:
    def __init__(self, endpoint: str, replay_endpoint: str, topic_in_replay: bool):
        self.topic_in_replay = topic_in_replay
        self.ctx = zmq.asyncio.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.connect(endpoint)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.bind(replay_endpoint)
        self.buffer: dict[int, bytes] = {}
        self._replays = asyncio.create_task(self._serve_replays())

    async def send(self, seq: int, payload: bytes, *, drop: bool = False) -> None:
        self.buffer[seq] = payload
        if not drop:
            await self.pub.send_multipart([TOPIC.encode(), seq.to_bytes(8, "big"), payload])

    async def _serve_replays(self) -> None:
        while True:
            client, _, start = await self.router.recv_multipart()
            first = int.from_bytes(start, "big")
            for seq in sorted(s for s in self.buffer if s >= first):
                topic = [TOPIC.encode()] if self.topic_in_replay else []
                await self.router.send_multipart([client, b"", *topic, seq.to_bytes(8, "big"), self.buffer[seq]])
            await self.router.send_multipart([client, b"", *([b""] if self.topic_in_replay else []), END_SEQ, b""])

    async def close(self) -> None:
        self._replays.cancel()
        self.pub.close(linger=0)
        self.router.close(linger=0)
        self.ctx.term()


async def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture(params=[False, True], ids=["replay-seq-payload", "replay-topic-seq-payload"])
def topic_in_replay(request) -> bool:
    return request.param


@contextlib.asynccontextmanager
async def subscribed(name: str, topic_in_replay: bool):
    subscriber = KvEventSubscriber(name, topic=TOPIC, engine="test")
    received: list[bytes] = []
    lost: list[tuple[int, int]] = []
    subscriber.start(received.append, lambda first, end: lost.append((first, end)))
    publisher = FakePublisher(subscriber.endpoint, subscriber.replay_endpoint, topic_in_replay)
    try:
        # PUB/SUB drops what is sent before the connection is up: resend batch 0 until it lands.
        for _ in range(250):
            await publisher.send(0, b"b0")
            await asyncio.sleep(0.02)
            if received:
                break
        assert received == [b"b0"]
        yield publisher, received, lost
    finally:
        await publisher.close()
        await subscriber.stop()


async def test_batches_arrive_in_order(topic_in_replay):
    async with subscribed("zmq-order", topic_in_replay) as (publisher, received, lost):
        await publisher.send(1, b"b1")
        await publisher.send(2, b"b2")
        await wait_for(lambda: len(received) == 3)
        assert received == [b"b0", b"b1", b"b2"] and lost == []


async def test_a_gap_is_filled_from_the_replay_socket(topic_in_replay):
    async with subscribed("zmq-gap", topic_in_replay) as (publisher, received, lost):
        await publisher.send(1, b"b1", drop=True)
        await publisher.send(2, b"b2", drop=True)
        await publisher.send(3, b"b3")
        await wait_for(lambda: len(received) == 4)
        assert received == [b"b0", b"b1", b"b2", b"b3"] and lost == []


async def test_a_gap_older_than_the_replay_buffer_is_reported_lost(topic_in_replay):
    async with subscribed("zmq-lost", topic_in_replay) as (publisher, received, lost):
        await publisher.send(1, b"b1", drop=True)
        await publisher.send(2, b"b2", drop=True)
        del publisher.buffer[1]  # fell out of the engine's replay buffer
        await publisher.send(3, b"b3")
        await wait_for(lambda: len(received) == 3)
        assert received == [b"b0", b"b2", b"b3"] and lost == [(1, 2)]


