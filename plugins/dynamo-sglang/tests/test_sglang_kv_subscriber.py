"""SGLang's own ZMQ publisher reaching dynamo's subscriber (`dynamo_core.engines.zmq_kv_events`,
whose protocol tests with a fake publisher are tests/unit/test_zmq_kv_events.py); skipped
where SGLang is not installed (it runs on the GPU machine).
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

pytest.importorskip("zmq")

from dynamo_core.engines.zmq_kv_events import KvEventSubscriber  # noqa: E402
from dynamo_sglang.kv_events import BlockStored, KVEventBatch, KvEventTranslator, decode_batch  # noqa: E402

TOPIC = "kv"


async def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


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


def test_a_batch_as_sglang_encodes_it_is_tagged_arrays():
    payload = msgspec.msgpack.encode(KVEventBatch(ts=1.0, events=[msgspec.Raw(msgspec.msgpack.encode(
        BlockStored(block_hashes=[5], parent_block_hash=None, token_ids=list(range(16)), block_size=16)))]))
    assert msgspec.msgpack.decode(payload)[1][0][0] == "BlockStored"  # a tagged array, as SGLang sends
