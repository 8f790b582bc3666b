"""A process that owns one region of known bytes, for checking and measuring a backend.

    python -m dynamo_core.transfer.peer BACKEND SIZE SEED

registers SIZE bytes (`region_bytes(SIZE, SEED)`) with a BACKEND agent, prints the region's
description as one line (`REGION ` + msgpack hex) and serves it until its stdin closes. Tests
and `benchmarks/transfer_bench.py` start it with `start_peer` and read from it; anyone can run
it on another host to check that a backend moves bytes between the two.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys

import msgspec

from dynamo_core.transfer.base import RemoteRegion, TransferError

_PREFIX = "REGION "


_CHUNK = 1 << 20


def region_bytes(size: int, seed: int) -> bytearray:
    """The region's content: seeded random bytes, so a misplaced or stale piece shows.
    Made a MiB at a time: `randbytes` cannot make 256 MiB (2**31 bits) in one call."""
    rng = random.Random(seed)
    content = bytearray(size)
    for start in range(0, size, _CHUNK):
        end = min(start + _CHUNK, size)
        content[start:end] = rng.randbytes(end - start)
    return content


async def _serve(backend: str, size: int, seed: int) -> None:
    from dynamo_core.transfer import create_transfer_agent

    agent = create_transfer_agent(backend)
    await agent.start()
    region = agent.register(region_bytes(size, seed))
    print(_PREFIX + msgspec.msgpack.encode(agent.describe(region)).hex(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await agent.close()


def start_peer(backend: str, size: int, seed: int) -> tuple[subprocess.Popen, RemoteRegion]:
    """Start the owner process and wait for its region. Close its stdin to stop it. Blocking:
    call it off the event loop. Raises `TransferError` if the process exits first."""
    peer = subprocess.Popen(
        [sys.executable, "-m", "dynamo_core.transfer.peer", backend, str(size), str(seed)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert peer.stdout is not None
    for line in peer.stdout:  # backends may log on stdout before the region line
        if line.startswith(_PREFIX):
            return peer, msgspec.msgpack.decode(bytes.fromhex(line[len(_PREFIX):].strip()), type=RemoteRegion)
    raise TransferError(f"the {backend} peer process exited before serving its region (exit code {peer.wait()})")


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
