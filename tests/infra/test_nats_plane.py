"""The NATS request plane and event plane against a real nats-server."""

from __future__ import annotations

import asyncio

import pytest

from dynamo_core.protocols.kv_events import KvBlock, KvEventBatch, KvSnapshot, KvStored, LoadMetrics
from dynamo_core.runtime.event_plane import EventPublisher
from dynamo_core.runtime.nats_plane import (
    NatsEventForwarder,
    NatsRequestClient,
    NatsRequestServer,
    connect,
    subscribe_events,
)
from dynamo_core.runtime.request_plane import ConnectionLostError, RemoteError


async def _count(payload: bytes):
    for i in range(int(payload)):
        yield str(i).encode()


async def _collect(stream):
    return [item async for item in stream]


async def test_streams_flow_controlled_and_errors_cross_nats(nats_server):
    async def broken(_payload: bytes):
        yield b"one"
        raise ValueError("exploded")

    server = NatsRequestServer(nats_server.url, "t.instance.w1")
    server.register("count", _count)
    server.register("broken", broken)
    prefix = await server.start()
    client = NatsRequestClient(nats_server.url)
    # More items than the flow-control window: acknowledgements must keep it moving.
    results = await asyncio.gather(*[_collect(client.call(prefix, "count", b"2000")) for _ in range(5)])
    assert all(r == [str(i).encode() for i in range(2000)] for r in results)
    with pytest.raises(RemoteError, match="exploded"):
        await _collect(client.call(prefix, "broken", b""))
    await client.close()
    await server.stop()


async def test_concurrent_streams_share_nats_messages(nats_server):
    """A worker sends what it has for one frontend connection as one message: 16 streams that
    advance together cost about one message per step, not one per item."""

    step = asyncio.Condition()  # an engine step: every running stream gets its next item

    async def stepping(payload: bytes):
        for i in range(int(payload)):
            async with step:
                await step.wait()
            yield str(i).encode()

    async def engine() -> None:
        while True:
            await asyncio.sleep(0.002)
            async with step:
                step.notify_all()

    stepper = asyncio.create_task(engine())

    server = NatsRequestServer(nats_server.url, "t.instance.w5")
    server.register("stepping", stepping)
    prefix = await server.start()
    client = NatsRequestClient(nats_server.url)
    await _collect(client.call(prefix, "stepping", b"1"))  # connect both sides first
    published = server._nc.stats["out_msgs"]
    results = await asyncio.gather(*[_collect(client.call(prefix, "stepping", b"100")) for _ in range(16)])
    assert all(r == [str(i).encode() for i in range(100)] for r in results)
    messages = server._nc.stats["out_msgs"] - published
    frames = 16 * (100 + 2)  # Accepted and End besides the items
    print(f"{frames} frames in {messages} NATS messages")
    stepper.cancel()
    assert messages < frames / 4
    await client.close()
    await server.stop()


async def test_frames_that_together_exceed_a_nats_message_still_arrive(nats_server):
    """Model files stream in large chunks: batched together they would pass NATS's 1 MiB
    message limit, so a batch is cut before it does."""
    chunk = bytes(range(256)) * 1600  # 400 KiB

    async def chunks(_payload: bytes):
        for i in range(6):
            yield bytes([i]) + chunk

    server = NatsRequestServer(nats_server.url, "t.instance.w6")
    server.register("chunks", chunks)
    prefix = await server.start()
    client = NatsRequestClient(nats_server.url)
    received = await asyncio.wait_for(_collect(client.call(prefix, "chunks", b"")), 10)
    assert [item[0] for item in received] == list(range(6)) and all(item[1:] == chunk for item in received)
    await client.close()
    await server.stop()


async def test_closing_a_stream_cancels_the_handler(nats_server):
    cancelled = asyncio.Event()

    async def forever(_payload: bytes):
        try:
            while True:
                yield b"tick"
                await asyncio.sleep(0.01)
        finally:
            cancelled.set()

    server = NatsRequestServer(nats_server.url, "t.instance.w2")
    server.register("forever", forever)
    prefix = await server.start()
    client = NatsRequestClient(nats_server.url)
    stream = client.call(prefix, "forever", b"")
    assert await stream.__anext__() == b"tick"
    await stream.aclose()
    await asyncio.wait_for(cancelled.wait(), 5)
    await client.close()
    await server.stop()


async def test_request_to_a_missing_worker_fails_fast_instead_of_hanging(nats_server):
    client = NatsRequestClient(nats_server.url)
    with pytest.raises(ConnectionLostError, match="no worker answered"):
        await asyncio.wait_for(_collect(client.call("t.instance.nobody", "count", b"1")), 15)
    await client.close()


async def test_nats_restart_never_hangs_or_silently_drops_stream_items_and_calls_recover(nats_server):
    async def ticking(_payload: bytes):
        for i in range(400):
            yield str(i).encode()
            await asyncio.sleep(0.01)

    server = NatsRequestServer(nats_server.url, "t.instance.w3")
    server.register("ticking", ticking)
    server.register("count", _count)
    prefix = await server.start()
    client = NatsRequestClient(nats_server.url)
    stream = client.call(prefix, "ticking", b"")
    received = [await stream.__anext__()]
    restart = asyncio.create_task(asyncio.to_thread(nats_server.restart, 0.5))
    try:
        async for item in stream:
            received.append(item)
        # Either every item arrived, in order (NATS buffered across the restart) ...
        assert received == [str(i).encode() for i in range(400)]
    except ConnectionLostError:
        # ... or the stream says it lost some; what it did deliver is an unbroken prefix.
        assert received == [str(i).encode() for i in range(len(received))]
    await restart
    # Both sides reconnect by themselves.
    for _ in range(50):
        try:
            assert await _collect(client.call(prefix, "count", b"3")) == [b"0", b"1", b"2"]
            break
        except ConnectionLostError:
            await asyncio.sleep(0.2)
    else:
        raise AssertionError("calls did not recover after NATS restarted")
    await client.close()
    await server.stop()


async def test_event_subscribers_get_a_snapshot_then_ordered_batches(nats_server):
    stored = [KvStored(parent_hash=None, blocks=[KvBlock(1, [1, 2, 3, 4])])]
    publisher = EventPublisher("w4", lambda: list(stored))
    nc = await connect(nats_server.url, "worker")
    forwarder = NatsEventForwarder(nc, "t.events.w4", publisher.snapshot_payload)
    await forwarder.start()
    publisher.add_listener(lambda payload: asyncio.ensure_future(forwarder.forward(payload)))

    sub_nc = await connect(nats_server.url, "frontend")
    messages = subscribe_events(sub_nc, "t.events.w4")
    snapshot = await asyncio.wait_for(messages.__anext__(), 10)
    assert isinstance(snapshot, KvSnapshot) and snapshot.stored == stored
    publisher.publish([KvStored(parent_hash=1, blocks=[KvBlock(2, [5, 6, 7, 8])])])
    await asyncio.sleep(0.05)
    publisher.publish_load(LoadMetrics(worker_id="w4", running_requests=1, waiting_requests=0, active_kv_blocks=2, total_kv_blocks=10))
    batch = await asyncio.wait_for(messages.__anext__(), 10)
    assert isinstance(batch, KvEventBatch) and batch.event_id == snapshot.event_id + 1
    load = await asyncio.wait_for(messages.__anext__(), 10)
    assert isinstance(load, LoadMetrics) and load.running_requests == 1
    await messages.aclose()
    await sub_nc.close()
    await nc.close()
