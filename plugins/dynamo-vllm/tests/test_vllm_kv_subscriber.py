"""The ZMQ side of vLLM's KV events: batches arrive in order, and gaps are replayed.

Needs pyzmq (which vLLM brings); skipped where it is missing. The first tests play vLLM's
publisher by hand (PUB sending `(topic, seq, payload)`, ROUTER answering replay requests, as
`vllm/distributed/kv_events.py` does); the last one uses vLLM's own publisher when installed.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

zmq = pytest.importorskip("zmq")
import zmq.asyncio  # noqa: E402

from dynamo_core.engines.zmq_kv_events import END_SEQ, KvEventSubscriber  # noqa: E402

TOPIC = "kv"


class FakeVllmPublisher:
    """vLLM's ZmqEventPublisher protocol: PUB connects to the endpoint, ROUTER binds the replay
    endpoint and streams buffered batches from a requested seq, then an end marker."""

    def __init__(self, endpoint: str, replay_endpoint: str):
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
                await self.router.send_multipart([client, b"", TOPIC.encode(), seq.to_bytes(8, "big"), self.buffer[seq]])
            await self.router.send_multipart([client, b"", b"", END_SEQ, b""])

    async def close(self) -> None:
        self._replays.cancel()
        self.pub.close(linger=0)
        self.router.close(linger=0)
        self.ctx.term()


async def first_delivery(publisher: FakeVllmPublisher, received: list) -> None:
    """PUB/SUB drops what is sent before the connection is up: resend batch 0 until it lands
    (the subscriber ignores the repeats, as it ignores any seq it has already delivered)."""
    for _ in range(250):
        await publisher.send(0, b"b0")
        await asyncio.sleep(0.02)
        if received:
            return
    raise AssertionError("the publisher never reached the subscriber")


async def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def subscribed(name: str):
    """A running subscriber fed by a fake vLLM publisher that has delivered batch 0:
    yields (publisher, batches received, gaps reported lost)."""
    subscriber = KvEventSubscriber(name, topic=TOPIC)
    received: list[bytes] = []
    lost: list[tuple[int, int]] = []
    publisher = FakeVllmPublisher(subscriber.endpoint, subscriber.replay_endpoint)
    subscriber.start(received.append, lambda first, end: lost.append((first, end)))
    try:
        await first_delivery(publisher, received)
        yield publisher, received, lost
    finally:
        await subscriber.stop()
        await publisher.close()


async def test_batches_arrive_in_order_and_a_gap_is_replayed():
    async with subscribed("test-replay") as (publisher, received, lost):
        await publisher.send(1, b"b1")
        await publisher.send(2, b"b2", drop=True)  # lost on the way...
        await publisher.send(3, b"b3", drop=True)
        await publisher.send(4, b"b4")  # ...noticed here, and replayed before it
        await wait_for(lambda: len(received) == 5)
        assert received == [b"b0", b"b1", b"b2", b"b3", b"b4"] and lost == []


async def test_a_gap_older_than_the_replay_buffer_is_reported_lost():
    async with subscribed("test-lost") as (publisher, received, lost):
        await publisher.send(1, b"b1", drop=True)
        await publisher.send(2, b"b2", drop=True)
        del publisher.buffer[1]  # fell out of vLLM's replay buffer
        await publisher.send(3, b"b3")
        await wait_for(lambda: len(received) == 3)
        assert received == [b"b0", b"b2", b"b3"] and lost == [(1, 2)]


async def test_vllms_own_publisher_reaches_the_subscriber():
    kv_events = pytest.importorskip("vllm.distributed.kv_events")
    from dynamo_vllm.kv_events import KvEventTranslator, decode_batch

    subscriber = KvEventSubscriber("test-vllm", topic=TOPIC)
    received: list[bytes] = []
    subscriber.start(received.append, lambda first, end: None)
    publisher = kv_events.ZmqEventPublisher(
        data_parallel_rank=0, endpoint=subscriber.endpoint, replay_endpoint=subscriber.replay_endpoint, topic=TOPIC,
    )
    published = 0
    try:
        # Batches sent before vLLM's PUB had connected are dropped on the way and come back
        # through vLLM's replay socket as soon as a later one arrives.
        while not received:
            assert published < 200, "vLLM's publisher never reached the subscriber"
            publisher.publish(kv_events.KVEventBatch(ts=float(published), events=[kv_events.BlockStored(
                block_hashes=[published + 1], parent_block_hash=published or None, token_ids=[published] * 16,
                block_size=16, lora_id=None, medium="GPU", lora_name=None, group_idx=0,
            )]))
            published += 1
            await asyncio.sleep(0.02)
        await wait_for(lambda: len(received) == published, timeout=10)
        translator = KvEventTranslator(block_size=16)
        hashes = [translator.translate(decode_batch(p))[0].blocks[0].block_hash for p in received]
        assert hashes == list(range(1, published + 1))
    finally:
        publisher.shutdown()
        await subscriber.stop()
