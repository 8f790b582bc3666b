"""SGLang's KV events over real ZMQ sockets: in order, and gaps replayed through its ROUTER.

The fake publisher speaks SGLang 0.5.15's protocol (`sglang/srt/disaggregation/kv_events.py`):
its PUB connects to the subscriber's endpoint and sends `[topic, seq u64 BE, payload]`; its
ROUTER binds the replay endpoint, takes `[b"", start_seq]` and answers
`[identity, b"", seq, payload]` per buffered batch, then `[identity, b"", -1, b""]`. The
last test uses SGLang's own publisher when SGLang is installed (the GPU machine).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

zmq = pytest.importorskip("zmq")
import zmq.asyncio  # noqa: E402

from dynamo_core.engines.zmq_kv_events import END_SEQ, KvEventSubscriber  # noqa: E402
from dynamo_sglang.kv_events import BlockStored, KVEventBatch, KvEventTranslator, decode_batch  # noqa: E402

import msgspec  # noqa: E402

TOPIC = "kv"


class FakeSglangPublisher:
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
                await self.router.send_multipart([client, b"", seq.to_bytes(8, "big"), self.buffer[seq]])
            await self.router.send_multipart([client, b"", END_SEQ, b""])

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


@contextlib.asynccontextmanager
async def subscribed(name: str):
    subscriber = KvEventSubscriber(name, topic=TOPIC, engine="sglang")
    received: list[bytes] = []
    lost: list[tuple[int, int]] = []
    subscriber.start(received.append, lambda first, end: lost.append((first, end)))
    publisher = FakeSglangPublisher(subscriber.endpoint, subscriber.replay_endpoint)
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


async def test_batches_arrive_in_order():
    async with subscribed("sgl-order") as (publisher, received, lost):
        await publisher.send(1, b"b1")
        await publisher.send(2, b"b2")
        await wait_for(lambda: len(received) == 3)
        assert received == [b"b0", b"b1", b"b2"] and lost == []


async def test_a_gap_is_filled_from_sglangs_replay_socket():
    async with subscribed("sgl-gap") as (publisher, received, lost):
        await publisher.send(1, b"b1", drop=True)
        await publisher.send(2, b"b2", drop=True)
        await publisher.send(3, b"b3")
        await wait_for(lambda: len(received) == 4)
        assert received == [b"b0", b"b1", b"b2", b"b3"] and lost == []


async def test_a_gap_older_than_the_replay_buffer_is_reported_lost():
    async with subscribed("sgl-lost") as (publisher, received, lost):
        await publisher.send(1, b"b1", drop=True)
        await publisher.send(2, b"b2", drop=True)
        del publisher.buffer[1]  # fell out of SGLang's replay buffer (buffer_steps)
        await publisher.send(3, b"b3")
        await wait_for(lambda: len(received) == 3)
        assert received == [b"b0", b"b2", b"b3"] and lost == [(1, 2)]


async def test_sglangs_own_publisher_reaches_the_subscriber():
    kv_events = pytest.importorskip("sglang.srt.disaggregation.kv_events")
    subscriber = KvEventSubscriber("sgl-real", topic=TOPIC, engine="sglang")
    received: list[bytes] = []
    subscriber.start(received.append, lambda first, end: None)
    publisher = kv_events.ZmqEventPublisher(
        attn_dp_rank=0, endpoint=subscriber.endpoint, replay_endpoint=subscriber.replay_endpoint, topic=TOPIC)
    published = 0
    try:
        # Batches sent before SGLang's PUB had connected are dropped on the way and come back
        # through its replay socket as soon as a later one arrives.
        while not received:
            assert published < 200, "SGLang's publisher never reached the subscriber"
            publisher.publish(kv_events.KVEventBatch(ts=float(published), events=[kv_events.BlockStored(
                block_hashes=[-published - 1], parent_block_hash=-published if published else None,
                token_ids=[published] * 16, block_size=16, lora_id=None, medium="GPU")]))
            published += 1
            await asyncio.sleep(0.02)
        await wait_for(lambda: len(received) == published, timeout=10)
        translator = KvEventTranslator(page_size=16)
        hashes = [translator.translate(decode_batch(p))[0].blocks[0].block_hash for p in received]
        assert hashes == [(-n) & (2**64 - 1) for n in range(1, published + 1)]
    finally:
        publisher.shutdown()
        await subscriber.stop()


def test_the_fake_publishers_payload_is_sglangs_wire_format():
    payload = msgspec.msgpack.encode(KVEventBatch(ts=1.0, events=[msgspec.Raw(msgspec.msgpack.encode(
        BlockStored(block_hashes=[5], parent_block_hash=None, token_ids=list(range(16)), block_size=16)))]))
    assert msgspec.msgpack.decode(payload)[1][0][0] == "BlockStored"  # a tagged array, as SGLang sends
