"""The TCP request plane over real sockets."""

from __future__ import annotations

import asyncio

import pytest

from dynamo_core.runtime.request_plane import (
    ConnectionLostError,
    RemoteError,
    RequestPlaneClient,
    RequestPlaneServer,
)


async def _count(payload: bytes):
    for i in range(int(payload)):
        yield str(i).encode()
        await asyncio.sleep(0)


@pytest.fixture
async def server():
    srv = RequestPlaneServer()
    srv.register("count", _count)
    address = await srv.start()
    yield srv, address
    await srv.stop()


async def test_many_concurrent_streams_share_one_connection(server):
    srv, address = server
    client = RequestPlaneClient()
    results = await asyncio.gather(
        *[_collect(client.call(address, "count", str(n).encode())) for n in range(1, 101)]
    )
    for n, items in enumerate(results, start=1):
        assert items == [str(i).encode() for i in range(n)]
    assert len(client._connections) == 1
    await client.close()


async def _collect(stream):
    return [item async for item in stream]


async def test_closing_the_stream_cancels_the_handler_on_the_server():
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def forever(_payload: bytes):
        started.set()
        try:
            while True:
                yield b"tick"
                await asyncio.sleep(0.01)
        finally:
            cancelled.set()

    srv = RequestPlaneServer()
    srv.register("forever", forever)
    address = await srv.start()
    client = RequestPlaneClient()
    stream = client.call(address, "forever", b"")
    assert await stream.__anext__() == b"tick"
    await stream.aclose()
    await asyncio.wait_for(cancelled.wait(), 5)
    await client.close()
    await srv.stop()


async def test_handler_exception_reaches_the_caller_as_remote_error():
    async def broken(_payload: bytes):
        yield b"one"
        raise ValueError("engine exploded")

    srv = RequestPlaneServer()
    srv.register("broken", broken)
    address = await srv.start()
    client = RequestPlaneClient()
    items = []
    with pytest.raises(RemoteError, match="engine exploded"):
        async for item in client.call(address, "broken", b""):
            items.append(item)
    assert items == [b"one"]
    with pytest.raises(RemoteError, match="unknown endpoint"):
        await _collect(client.call(address, "missing", b""))
    await client.close()
    await srv.stop()


async def test_server_going_away_ends_open_streams_with_connection_lost():
    async def slow(_payload: bytes):
        yield b"first"
        await asyncio.sleep(60)
        yield b"never"

    srv = RequestPlaneServer()
    srv.register("slow", slow)
    address = await srv.start()
    client = RequestPlaneClient()
    stream = client.call(address, "slow", b"")
    assert await stream.__anext__() == b"first"
    await srv.stop()
    with pytest.raises(ConnectionLostError):
        await asyncio.wait_for(stream.__anext__(), 5)
    await client.close()


async def test_unreachable_address_fails_fast_with_connection_lost():
    client = RequestPlaneClient(connect_timeout_s=2)
    with pytest.raises(ConnectionLostError, match="cannot connect"):
        await _collect(client.call("127.0.0.1:1", "count", b"1"))
    await client.close()


async def test_large_payloads_cross_intact(server):
    async def echo(payload: bytes):
        yield payload

    srv, address = server
    srv.register("echo", echo)
    client = RequestPlaneClient()
    blob = bytes(range(256)) * 40_000  # 10 MB
    assert await _collect(client.call(address, "echo", blob)) == [blob]
    await client.close()


async def test_a_load_only_subscription_gets_load_reports_and_no_cache_events():
    from dynamo_core.protocols.kv_events import KvBlock, KvEventBatch, KvSnapshot, KvStored, LoadMetrics
    from dynamo_core.protocols.names import EVENTS_ENDPOINT
    from dynamo_core.runtime.event_plane import EventPublisher, subscribe

    publisher = EventPublisher("w", lambda: [])
    server = RequestPlaneServer("127.0.0.1", 0)
    server.register(EVENTS_ENDPOINT, publisher.serve_subscription)
    address = await server.start()
    client = RequestPlaneClient()
    def load(running: int) -> LoadMetrics:
        return LoadMetrics(worker_id="w", running_requests=running, waiting_requests=0, active_kv_blocks=0,
                           total_kv_blocks=8)

    try:
        publisher.publish_load(load(1))
        everything = subscribe(client, address)
        loads = subscribe(client, address, load_only=True)
        assert isinstance(await everything.__anext__(), KvSnapshot)
        assert (await everything.__anext__()).running_requests == 1
        assert (await loads.__anext__()).running_requests == 1  # the latest report, no snapshot
        publisher.publish([KvStored(parent_hash=None, blocks=[KvBlock(1, [1, 2])])])
        publisher.publish_load(load(3))
        got = [await everything.__anext__(), await everything.__anext__()]
        assert {type(m) for m in got} == {KvEventBatch, LoadMetrics}
        only = await asyncio.wait_for(loads.__anext__(), 5)
        assert isinstance(only, LoadMetrics) and only.running_requests == 3  # the batch was not sent
        assert publisher.subscriber_count == 2
        await everything.aclose()
        await loads.aclose()
    finally:
        await client.close()
        await server.stop()
