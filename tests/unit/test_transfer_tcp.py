"""The `tcp` KV-transfer backend: real agents on loopback sockets, in one process and across two."""

from __future__ import annotations

import asyncio
import mmap
import random

import msgspec
import numpy as np
import pytest

from dynamo_core.plugins import get_registry
from dynamo_core.transfer import RemoteRegion, TransferConfig, TransferError, create_transfer_agent
from dynamo_core.transfer.peer import region_bytes, start_peer
from dynamo_core.transfer.tcp import TcpTransferAgent



def _scattered_pieces(rng: random.Random, remote_size: int, lengths: list[int]) -> list[tuple[int, int, int]]:
    """Pieces of these lengths at random remote offsets, laid out back to back locally."""
    pieces, local = [], 0
    for length in lengths:
        pieces.append((rng.randint(0, remote_size - length), local, length))
        local += length
    return pieces


def _assert_pieces_equal(src: bytes | bytearray, dst: bytearray, pieces: list[tuple[int, int, int]]) -> None:
    for remote_offset, local_offset, length in pieces:
        assert dst[local_offset : local_offset + length] == src[remote_offset : remote_offset + length]


@pytest.fixture
async def agents():
    owner, reader = TcpTransferAgent(TransferConfig()), TcpTransferAgent(TransferConfig())
    await owner.start()
    await reader.start()
    yield owner, reader
    await reader.close()
    await owner.close()


def test_tcp_backend_is_a_builtin_registered_through_the_hook():
    registry = get_registry()
    assert "tcp" in registry.names("transfer")
    assert isinstance(create_transfer_agent("tcp"), TcpTransferAgent)


async def test_read_copies_a_whole_region_byte_for_byte(agents):
    owner, reader = agents
    src = region_bytes(3 * 1024 * 1024 + 17, seed=1)
    dst = bytearray(len(src) + 100)
    remote = owner.describe(owner.register(src))
    await reader.read(remote, 0, reader.register(dst), 100, len(src))
    assert dst[100:] == src and dst[:100] == bytearray(100)


async def test_read_many_gathers_scattered_pieces_of_every_size(agents):
    owner, reader = agents
    src = region_bytes(4 * 1024 * 1024, seed=2)
    rng = random.Random(3)
    # Small pieces (coalesced on both sides), large ones (sent and received in place), and empty ones.
    lengths = [rng.randint(0, 4096) for _ in range(2000)] + [rng.randint(1 << 17, 1 << 20) for _ in range(8)]
    rng.shuffle(lengths)
    pieces = _scattered_pieces(rng, len(src), lengths)
    dst = bytearray(sum(p[2] for p in pieces))
    await reader.read_many(owner.describe(owner.register(src)), reader.register(dst), pieces)
    _assert_pieces_equal(src, dst, pieces)


async def test_numpy_arrays_and_mmaps_are_registered_as_their_bytes(agents):
    owner, reader = agents
    src = np.random.default_rng(4).standard_normal((64, 256)).astype(np.float16)
    dst = mmap.mmap(-1, src.nbytes)
    local = reader.register(dst)
    await reader.read(owner.describe(owner.register(src)), 0, local, 0, src.nbytes)
    assert dst[:] == src.tobytes()
    with pytest.raises(BufferError):  # the agent holds the buffer until it is deregistered
        dst.close()
    reader.deregister(local)
    dst.close()


async def test_concurrent_reads_from_one_peer_do_not_mix_their_bytes(agents):
    owner, reader = agents
    src = region_bytes(1 << 20, seed=5)
    remote = owner.describe(owner.register(src))
    dst = bytearray(8 * len(src))
    local = reader.register(dst)
    await asyncio.gather(*(reader.read(remote, 0, local, i * len(src), len(src)) for i in range(8)))
    assert all(dst[i * len(src) : (i + 1) * len(src)] == src for i in range(8))


def test_remote_region_travels_as_msgpack():
    region = RemoteRegion(backend="tcp", agent="a", metadata=b"127.0.0.1:1", region_id=3, length=10)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(region), type=RemoteRegion) == region


async def test_read_and_read_many_from_another_process_and_its_disappearance():
    size, seed = 8 * 1024 * 1024, 6
    peer, remote = await asyncio.wait_for(asyncio.to_thread(start_peer, "tcp", size, seed), 20)
    reader = TcpTransferAgent(TransferConfig(timeout_s=5))
    try:
        await reader.start()
        src = region_bytes(size, seed)
        whole = bytearray(size)
        await reader.read(remote, 0, reader.register(whole), 0, size)
        assert whole == src

        block = 16 * 1024  # KV blocks: many fixed-size pieces, in a shuffled order
        order = list(range(size // block))
        random.Random(7).shuffle(order)
        pieces = [(b * block, i * block, block) for i, b in enumerate(order[:300])]
        gathered = bytearray(len(pieces) * block)
        await reader.read_many(remote, reader.register(gathered), pieces)
        _assert_pieces_equal(src, gathered, pieces)

        peer.kill()  # the owner vanishes: the pooled connection and a fresh connect both fail
        peer.wait()
        with pytest.raises(TransferError, match="unreachable or went away"):
            await reader.read(remote, 0, 1, 0, 4096)
    finally:
        peer.kill()
        peer.wait()
        await reader.close()


async def test_a_deregistered_region_is_reported_by_the_owner(agents):
    owner, reader = agents
    region = owner.register(bytearray(4096))
    remote = owner.describe(region)
    local = reader.register(bytearray(4096))
    owner.deregister(region)
    with pytest.raises(TransferError, match=rf"no region {region}"):
        await reader.read(remote, 0, local, 0, 4096)


async def test_ranges_outside_either_region_are_refused(agents):
    owner, reader = agents
    src = region_bytes(4096, seed=8)
    remote = owner.describe(owner.register(src))
    local = reader.register(bytearray(1024))
    with pytest.raises(TransferError, match="remote range"):
        await reader.read(remote, 4000, local, 0, 200)
    with pytest.raises(TransferError, match="local range"):
        await reader.read(remote, 0, local, 900, 200)
    # A description claiming more than the owner has: the owner refuses, and the reader's
    # connection stays usable for the next read.
    inflated = msgspec.structs.replace(remote, length=1 << 20)
    with pytest.raises(TransferError, match="outside region"):
        await reader.read(inflated, 8192, local, 0, 100)
    dst = bytearray(1024)
    await reader.read(remote, 100, reader.register(dst), 0, 1024)
    assert dst == src[100:1124]


async def test_reading_from_a_closed_agent_fails_with_a_clear_error(agents):
    owner, reader = agents
    remote = owner.describe(owner.register(bytearray(4096)))
    await owner.close()
    with pytest.raises(TransferError, match=f"'{owner.agent_name}' .* unreachable or went away"):
        await reader.read(remote, 0, reader.register(bytearray(4096)), 0, 4096)


async def test_unusable_buffers_and_foreign_regions_are_refused(agents):
    owner, reader = agents
    with pytest.raises(TransferError, match="read-only"):
        owner.register(b"immutable")
    with pytest.raises(TransferError, match="non-contiguous"):
        owner.register(np.zeros((8, 8), dtype=np.uint8)[:, ::2])
    with pytest.raises(TransferError, match="not registered"):
        await reader.read(owner.describe(owner.register(bytearray(8))), 0, 999, 0, 8)
    foreign = RemoteRegion(backend="nixl", agent="x", metadata=b"", region_id=1, length=8)
    with pytest.raises(TransferError, match="backend 'nixl'"):
        await reader.read(foreign, 0, reader.register(bytearray(8)), 0, 8)
