"""The request and event planes as one contract (`runtime/plane.py`), run against each plane
through its spec (`runtime/transports.py`): TCP over real sockets, NATS against a real
nats-server. Tests of what only one plane has (one TCP connection per worker, NATS flow
control, batching and restarts) follow the contract."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest

from dynamo_core.protocols.discovery import InstanceRecord
from dynamo_core.protocols.kv_events import KvBlock, KvEventBatch, KvSnapshot, KvStored, LoadMetrics
from dynamo_core.protocols.names import EVENTS_ENDPOINT
from dynamo_core.runtime.event_plane import MALFORMED_MESSAGES, EventPublisher, subscribe
from dynamo_core.runtime.nats_plane import NatsRequestClient, NatsRequestServer
from dynamo_core.runtime.plane import PlaneConfig, RequestClient, RequestServer
from dynamo_core.runtime.request_plane import (
    ConnectionLostError,
    RemoteError,
    RequestPlaneClient,
    RequestPlaneError,
    RequestPlaneServer,
)
from dynamo_core.runtime import request_plane as request_plane_module
from dynamo_core.runtime.transports import TransportClients, event_plane_spec, request_plane

PLANES = ["tcp", "nats"]
# An address at which no worker answers, per plane.
NOBODY = {"tcp": "127.0.0.1:1", "nats": "t.instance.nobody"}


async def _count(payload: bytes):
    for i in range(int(payload)):
        yield str(i).encode()
        await asyncio.sleep(0)


async def _collect(stream):
    return [item async for item in stream]


class Plane:
    """One plane under test: makes servers and clients through its spec, and stops them."""

    def __init__(self, name: str, nats_url: str | None):
        self.name, self.nats_url = name, nats_url
        self._made: list[RequestServer | RequestClient] = []
        self._workers = 0

    def config(self) -> PlaneConfig:
        self._workers += 1
        return PlaneConfig(nats_url=self.nats_url, namespace="t", worker_id=f"w{self._workers}")

    async def server(self, **handlers: Callable[[bytes], AsyncIterator[bytes]]) -> tuple[RequestServer, str]:
        server = request_plane(self.name).create_server(self.config())
        for endpoint, handler in handlers.items():
            server.register(endpoint, handler)
        self._made.append(server)
        return server, await server.start()

    def client(self) -> RequestClient:
        client = request_plane(self.name).create_client(PlaneConfig(nats_url=self.nats_url))
        self._made.append(client)
        return client

    async def close(self) -> None:
        for made in reversed(self._made):
            await (made.close() if isinstance(made, RequestClient) else made.stop())


@pytest.fixture(params=PLANES)
async def plane(request):
    nats_url = request.getfixturevalue("nats_server").url if request.param == "nats" else None
    plane = Plane(request.param, nats_url)
    yield plane
    await plane.close()


# ---------------------------------------------------------------------------------------------
# the contract, for every plane
# ---------------------------------------------------------------------------------------------


async def test_concurrent_streams_each_arrive_whole_and_in_order(plane):
    _, address = await plane.server(count=_count)
    client = plane.client()
    # 2000 items: more than NATS's flow-control window, so acknowledgements must keep it moving.
    sizes = [1, 7, 100, 2000] + list(range(2, 40))
    results = await asyncio.gather(*[_collect(client.call(address, "count", str(n).encode())) for n in sizes])
    for n, items in zip(sizes, results):
        assert items == [str(i).encode() for i in range(n)]


async def test_closing_the_stream_cancels_the_handler_on_the_server(plane):
    cancelled = asyncio.Event()

    async def forever(_payload: bytes):
        try:
            while True:
                yield b"tick"
                await asyncio.sleep(0.01)
        finally:
            cancelled.set()

    _, address = await plane.server(forever=forever)
    stream = plane.client().call(address, "forever", b"")
    assert await stream.__anext__() == b"tick"
    await stream.aclose()
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_handler_exception_reaches_the_caller_as_remote_error_after_its_items(plane):
    async def broken(_payload: bytes):
        yield b"one"
        raise ValueError("engine exploded")

    _, address = await plane.server(broken=broken)
    items = []
    with pytest.raises(RemoteError, match="engine exploded"):
        async for item in plane.client().call(address, "broken", b""):
            items.append(item)
    assert items == [b"one"]


async def test_an_endpoint_the_server_lacks_is_a_request_plane_error(plane):
    _, address = await plane.server(count=_count)
    with pytest.raises(RequestPlaneError):
        await asyncio.wait_for(_collect(plane.client().call(address, "missing", b"")), 15)


async def test_a_missing_worker_fails_fast_with_connection_lost(plane):
    with pytest.raises(ConnectionLostError):
        await asyncio.wait_for(_collect(plane.client().call(NOBODY[plane.name], "count", b"1")), 15)


async def test_batched_calls_carry_the_same_items(plane):
    _, address = await plane.server(count=_count)
    batches = await _collect(plane.client().call_batched(address, "count", b"50"))
    assert all(batches) and [item for batch in batches for item in batch] == [str(i).encode() for i in range(50)]


async def test_event_subscribers_get_a_snapshot_then_ordered_batches_and_load(plane):
    """A worker's publisher on the event plane of the same name; a frontend subscribes through
    `TransportClients`, as the model registry does."""
    stored = [KvStored(parent_hash=None, blocks=[KvBlock(1, [1, 2, 3, 4])])]
    publisher = EventPublisher("w-events", lambda: list(stored))
    server, address = await plane.server(**{EVENTS_ENDPOINT: publisher.serve_subscription})
    config = PlaneConfig(nats_url=plane.nats_url, namespace="t", worker_id="w-events")
    unpublish = await event_plane_spec(plane.name).publish(publisher, config)
    record = InstanceRecord(instance_id="w-events", namespace="t", component="backend", endpoint="generate",
                            address=address, transport=plane.name, event_plane=plane.name)
    clients = TransportClients(plane.nats_url)
    messages = clients.events(record)
    try:
        snapshot = await asyncio.wait_for(messages.__anext__(), 10)
        assert isinstance(snapshot, KvSnapshot) and snapshot.stored == stored
        publisher.publish([KvStored(parent_hash=1, blocks=[KvBlock(2, [5, 6, 7, 8])])])
        await asyncio.sleep(0.05)
        publisher.publish_load(LoadMetrics(worker_id="w-events", running_requests=1, waiting_requests=0,
                                           active_kv_blocks=2, total_kv_blocks=10))
        batch = await asyncio.wait_for(messages.__anext__(), 10)
        assert isinstance(batch, KvEventBatch) and batch.event_id == snapshot.event_id + 1
        load = await asyncio.wait_for(messages.__anext__(), 10)
        assert isinstance(load, LoadMetrics) and load.running_requests == 1
    finally:
        await messages.aclose()
        await clients.close()
        if unpublish is not None:
            await unpublish()


async def test_a_malformed_event_message_is_counted_and_skipped_and_the_stream_goes_on(plane):
    """A payload that does not decode (a corrupted frame, a version skew) between two batches:
    the subscriber logs and counts it, and the next batch still arrives on the same stream."""
    publisher = EventPublisher("w-bad", lambda: [])
    _, address = await plane.server(**{EVENTS_ENDPOINT: publisher.serve_subscription})
    config = PlaneConfig(nats_url=plane.nats_url, namespace="t", worker_id="w-bad")
    unpublish = await event_plane_spec(plane.name).publish(publisher, config)
    record = InstanceRecord(instance_id="w-bad", namespace="t", component="backend", endpoint="generate",
                            address=address, transport=plane.name, event_plane=plane.name)
    clients = TransportClients(plane.nats_url)
    messages = clients.events(record)
    counted = MALFORMED_MESSAGES.labels("worker")
    try:
        snapshot = await asyncio.wait_for(messages.__anext__(), 10)
        assert isinstance(snapshot, KvSnapshot)
        before = counted._value.get()
        publisher._fan_out(b"\xc1 not msgpack")  # what a worker's stream carries, as sent
        publisher._fan_out(msgspec.msgpack.encode({"type": "kv", "worker_id": 7}))  # decodes, fails validation
        publisher.publish([KvStored(parent_hash=None, blocks=[KvBlock(3, [1, 2, 3, 4])])])
        batch = await asyncio.wait_for(messages.__anext__(), 10)
        assert isinstance(batch, KvEventBatch) and batch.event_id == snapshot.event_id + 1
        assert counted._value.get() == before + 2
    finally:
        await messages.aclose()
        await clients.close()
        if unpublish is not None:
            await unpublish()


# ---------------------------------------------------------------------------------------------
# TCP only
# ---------------------------------------------------------------------------------------------


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


async def test_large_payloads_cross_intact(server):
    async def echo(payload: bytes):
        yield payload

    srv, address = server
    srv.register("echo", echo)
    client = RequestPlaneClient()
    blob = bytes(range(256)) * 40_000  # 10 MB
    assert await _collect(client.call(address, "echo", blob)) == [blob]
    await client.close()


async def test_frames_cut_anywhere_by_the_socket_arrive_whole_and_a_burst_as_one_batch():
    """A worker's frames reach the client in reads that cut them anywhere (byte by byte here),
    or many in one read: either way each item arrives once, in order, and what came in one
    read is handed over as one batch."""
    items = [str(i).encode() * (i % 7 + 1) for i in range(40)]

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(4)
        call = request_plane_module._decoder.decode(await reader.readexactly(int.from_bytes(header, "big")))
        frames = [request_plane_module.Data(call.stream_id, item) for item in items]
        frames.append(request_plane_module.End(call.stream_id))
        wire = b"".join(len(body).to_bytes(4, "big") + body for body in map(request_plane_module._encoder.encode, frames))
        if call.payload == b"trickle":
            for i in range(len(wire)):
                writer.write(wire[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0)
        else:
            writer.write(wire)  # the whole burst at once
        await writer.drain()
        await reader.read()  # until the client goes away

    server = await asyncio.start_server(worker, "127.0.0.1", 0)
    address = "127.0.0.1:%d" % server.sockets[0].getsockname()[1]
    client = RequestPlaneClient()
    try:
        trickled = await _collect(client.call_batched(address, "generate", b"trickle"))
        assert [item for batch in trickled for item in batch] == items
        await client.close()
        client = RequestPlaneClient()
        burst = await _collect(client.call_batched(address, "generate", b"burst"))
        assert burst == [items]
    finally:
        await client.close()
        server.close()


async def test_the_server_takes_calls_cut_anywhere_by_the_socket_or_many_in_one_read():
    """The server reads frames as the client does: calls and a cancel that reach it byte by
    byte, or all in one write, each open their stream once; a cancelled call ends without an End."""
    async def hang(_payload: bytes):
        await asyncio.sleep(60)
        yield b"never"

    srv = RequestPlaneServer()
    srv.register("count", _count)
    srv.register("hang", hang)
    address = await srv.start()
    host, port = address.rsplit(":", 1)
    module = request_plane_module
    calls = [module.Call(1, "count", b"3"), module.Call(2, "hang", b""), module.Call(3, "count", b"5"),
             module.Cancel(2), module.Call(4, "count", b"1")]
    wire = b"".join(len(body).to_bytes(4, "big") + body for body in map(module._encoder.encode, calls))
    try:
        for trickle in (True, False):
            reader, writer = await asyncio.open_connection(host, int(port))
            if trickle:
                for i in range(len(wire)):
                    writer.write(wire[i:i + 1])
                    await writer.drain()
                    await asyncio.sleep(0)
            else:
                writer.write(wire)
            got: dict[int, list] = {}
            ended: set[int] = set()
            while ended != {1, 3, 4}:
                header = await asyncio.wait_for(reader.readexactly(4), 5)
                frame = module._decoder.decode(await reader.readexactly(int.from_bytes(header, "big")))
                if isinstance(frame, module.End):
                    assert frame.error is None
                    ended.add(frame.stream_id)
                else:
                    got.setdefault(frame.stream_id, []).append(frame.payload)
            assert got == {1: [b"0", b"1", b"2"], 3: [b"0", b"1", b"2", b"3", b"4"], 4: [b"0"]}
            writer.close()
    finally:
        await srv.stop()


async def test_a_load_only_subscription_gets_load_reports_and_no_cache_events():
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


# ---------------------------------------------------------------------------------------------
# NATS only
# ---------------------------------------------------------------------------------------------


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


async def test_unpublishing_nats_events_sends_what_was_under_way_and_stops_forwarding(nats_server):
    """`unpublish` undoes `publish_events`: the last batch still goes out, the snapshot responder
    leaves, and events published afterwards start no publish on the closed connection."""
    import gc

    import nats as nats_client

    from dynamo_core.runtime.nats_plane import events_subject, publish_events

    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    publisher = EventPublisher("w-unpub", lambda: [])
    unpublish = await publish_events(publisher, PlaneConfig(nats_url=nats_server.url, namespace="t", worker_id="w-unpub"))
    subject = events_subject("t", "w-unpub")
    observer = await nats_client.connect(nats_server.url)
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def receive(msg) -> None:
        received.put_nowait(msg.data)

    await observer.subscribe(subject, cb=receive)
    await observer.flush()
    try:
        assert (await observer.request(f"{subject}.snapshot", b"", timeout=5)).data  # publishing
        publisher.publish_load(LoadMetrics(worker_id="w-unpub", running_requests=7, waiting_requests=0,
                                           active_kv_blocks=0, total_kv_blocks=1))
        await unpublish()  # in the same loop iteration: the forward is still under way
        last = await asyncio.wait_for(received.get(), 5)
        assert b"w-unpub" in last
        with pytest.raises(nats_client.errors.NoRespondersError):
            await observer.request(f"{subject}.snapshot", b"", timeout=2)
        for running in range(3):
            publisher.publish_load(LoadMetrics(worker_id="w-unpub", running_requests=running, waiting_requests=0,
                                               active_kv_blocks=0, total_kv_blocks=1))
        await asyncio.sleep(0.2)
        gc.collect()  # an unretrieved task exception is reported when its task is collected
        await asyncio.sleep(0)
        assert not errors, errors
        assert received.empty()
    finally:
        loop.set_exception_handler(None)
        await observer.close()
