"""The `nixl` transfer backend: real NIXL agents over UCX on host memory, in one process and two."""

from __future__ import annotations

import asyncio
import random

import msgspec
import numpy as np
import pytest

from dynamo_core.plugins import get_registry
from dynamo_core.transfer import TransferConfig, TransferError, create_transfer_agent
from dynamo_core.transfer.peer import region_bytes, start_peer

try:
    import nixl_cu13._api  # noqa: F401
except ImportError as e:
    pytest.skip(f"nixl_cu13 cannot be imported here: {e}", allow_module_level=True)



async def _started(config: TransferConfig = TransferConfig()):
    agent = create_transfer_agent("nixl", config)
    try:
        await agent.start()
    except TransferError as e:
        pytest.skip(f"UCX cannot create a NIXL agent here: {e}")
    return agent


@pytest.fixture
async def agents():
    owner, reader = await _started(), await _started()
    yield owner, reader
    await reader.close()
    await owner.close()


def test_nixl_is_registered_by_the_dynamo_nixl_distribution():
    registration = next(r for r in get_registry().registrations() if r.kind == "transfer" and r.name == "nixl")
    assert registration.distribution == "dynamo-nixl"


async def test_read_and_read_many_between_two_agents(agents):
    owner, reader = agents
    src = region_bytes(2 * 1024 * 1024, seed=1)
    first = owner.register(bytearray(4096))  # the peer learns regions one by one, as they are described
    remote = owner.describe(owner.register(src))
    dst = bytearray(len(src))
    local = reader.register(dst)
    await reader.read(remote, 0, local, 0, len(src))
    assert dst == src

    block = 4096
    order = list(range(len(src) // block))
    random.Random(2).shuffle(order)
    pieces = [(b * block, i * block, block) for i, b in enumerate(order)]
    gathered = bytearray(len(src))
    await reader.read_many(remote, reader.register(gathered), pieces)
    assert all(gathered[i * block : (i + 1) * block] == src[b * block : (b + 1) * block] for i, b in enumerate(order))

    await reader.read(owner.describe(first), 0, local, 0, 4096)
    assert dst[:4096] == bytearray(4096)


async def test_numpy_buffers_are_read_through_nixl(agents):
    owner, reader = agents
    src = np.random.default_rng(3).standard_normal((128, 128)).astype(np.float32)
    dst = np.zeros_like(src)
    await reader.read(owner.describe(owner.register(src)), 0, reader.register(dst), 0, src.nbytes)
    assert np.array_equal(src, dst)


async def test_read_many_from_another_process_and_its_disappearance():
    size, seed = 8 * 1024 * 1024, 4
    try:
        peer, remote = await asyncio.wait_for(asyncio.to_thread(start_peer, "nixl", size, seed), 30)
    except TransferError as e:
        pytest.skip(f"the NIXL peer process could not start an agent: {e}")
    reader = await _started(TransferConfig(timeout_s=5))
    try:
        assert remote.backend == "nixl" and remote.memory == "DRAM"
        src = region_bytes(size, seed)
        whole = bytearray(size)
        local = reader.register(whole)
        await reader.read(remote, 0, local, 0, size)
        assert whole == src

        block = 16 * 1024
        order = list(range(size // block))
        random.Random(5).shuffle(order)
        pieces = [(b * block, i * block, block) for i, b in enumerate(order)]
        gathered = bytearray(size)
        await reader.read_many(remote, reader.register(gathered), pieces)
        assert all(gathered[i * block : (i + 1) * block] == src[b * block : (b + 1) * block] for i, b in enumerate(order))

        peer.kill()  # the owner vanishes: UCX reports the disconnect
        peer.wait()
        with pytest.raises(TransferError, match=f"agent '{remote.agent}'"):
            await reader.read(remote, 0, local, 0, size)
    finally:
        peer.kill()
        peer.wait(timeout=10)
        await reader.close()


async def test_bad_ranges_and_regions_raise_transfer_error(agents):
    owner, reader = agents
    remote = owner.describe(owner.register(bytearray(4096)))
    local = reader.register(bytearray(4096))
    with pytest.raises(TransferError, match="remote range"):
        await reader.read(remote, 4000, local, 0, 200)
    with pytest.raises(TransferError, match="local range"):
        await reader.read(remote, 0, local, 4000, 200)
    with pytest.raises(TransferError, match="not registered"):
        await reader.read(remote, 0, 999, 0, 8)
    # Memory the owner never registered: NIXL finds no keys for it.
    unknown = msgspec.structs.replace(remote, address=remote.address + (1 << 40), length=1 << 20)
    with pytest.raises(TransferError, match="NIXL cannot read"):
        await reader.read(unknown, 0, local, 0, 4096)
    with pytest.raises(TransferError, match="read-only"):
        owner.register(b"immutable")
