"""vLLM's own ZMQ publisher reaching dynamo's subscriber (`dynamo_core.engines.zmq_kv_events`,
whose protocol tests with a fake publisher are tests/unit/test_zmq_kv_events.py); skipped
where vLLM is not installed (it runs on the GPU machine).
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("zmq")

from dynamo_core.engines.zmq_kv_events import KvEventSubscriber  # noqa: E402

TOPIC = "kv"


async def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


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
