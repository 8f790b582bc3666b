"""dynamo-nixl's VRAM path: a CUDA tensor read from another process with the nixl agent.

The owner process is the GPU benchmark's (`benchmarks/transfer_bench_gpu.py --owner`): it
registers 16 MiB of seeded random bytes on GPU 0 as VRAM and prints the region; this process
reads it into a CUDA tensor (GPU 1 where there is one) whole, then as shuffled 64 KiB pieces
with one `read_many`, and checks every byte against the same seeded bytes made here.

Skipped without torch, a CUDA GPU or NIXL (CI). On the GPU machine it runs from the source
tree with `core/src` and `plugins/nixl/src` on PYTHONPATH (no installed entry points), so it
uses the plugin's agent class directly; see `scripts/gpu/fetch_wheels.sh nixl`. No
pytest-asyncio there either, hence `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("nixl_cu13._api", reason="NIXL (nixl-cu13) is not installed")

# The benchmarks are scripts of the repository, not an installed distribution.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.transfer_bench_gpu import devices, nixl_agent, pattern, start_owner, stop_owner  # noqa: E402
from dynamo_core.transfer import TransferConfig  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]

SIZE = 16 * 1024 * 1024
BLOCK = 64 * 1024
SEED = 7


async def _read_from_owner() -> None:
    owner_gpu, reader_gpu = devices()
    owner, remote = await asyncio.to_thread(start_owner, SIZE, SEED, owner_gpu)
    agent = nixl_agent(TransferConfig(timeout_s=30))
    try:
        await agent.start()
        assert (remote.backend, remote.memory, remote.device, remote.length) == ("nixl", "VRAM", owner_gpu, SIZE)
        expected = pattern(SIZE, SEED, reader_gpu)

        whole = torch.zeros(SIZE, dtype=torch.uint8, device=f"cuda:{reader_gpu}")
        torch.cuda.synchronize(reader_gpu)  # zeroed before NIXL writes from its own streams
        await agent.read(remote, 0, agent.register(whole), 0, SIZE)
        torch.cuda.synchronize(reader_gpu)
        assert torch.equal(whole, expected)

        order = list(range(SIZE // BLOCK))
        random.Random(SEED).shuffle(order)
        gathered = torch.zeros_like(whole)
        torch.cuda.synchronize(reader_gpu)
        pieces = [(b * BLOCK, i * BLOCK, BLOCK) for i, b in enumerate(order)]
        await agent.read_many(remote, agent.register(gathered), pieces)
        torch.cuda.synchronize(reader_gpu)
        assert torch.equal(gathered.view(-1, BLOCK), expected.view(-1, BLOCK)[order])
    finally:
        await agent.close()
        await asyncio.to_thread(stop_owner, owner)


def test_a_cuda_tensor_is_read_from_another_process_whole_and_in_shuffled_pieces():
    asyncio.run(_read_from_owner())
