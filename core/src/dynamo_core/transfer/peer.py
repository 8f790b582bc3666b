"""A process that owns one region of known bytes, for checking and measuring a backend.

    python -m dynamo_core.transfer.peer BACKEND SIZE SEED

registers SIZE bytes (`region_bytes(SIZE, SEED)`) with a BACKEND agent, prints the region's
description as one line (`REGION ` + msgpack hex) and serves it until its stdin closes. Tests
and `benchmarks/transfer_bench.py` start it with `start_peer` and read from it; anyone can run
it on another host to check that a backend moves bytes between the two. Other owners (the GPU
benchmark's, serving a CUDA tensor) reuse `serve_region`, `spawn_owner` and `stop_owner`.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
from typing import IO, Any

import msgspec

from dynamo_core.transfer.base import RemoteRegion, TransferAgent, TransferError

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


async def serve_region(agent: TransferAgent, buffer: Any) -> None:
    """The owner's side: register `buffer` with the started `agent`, print its description as
    one line for `spawn_owner`, and serve it until stdin closes; then close the agent."""
    region = agent.register(buffer)
    print(_PREFIX + msgspec.msgpack.encode(agent.describe(region)).hex(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await agent.close()


async def _serve(backend: str, size: int, seed: int) -> None:
    from dynamo_core.transfer import create_transfer_agent

    agent = create_transfer_agent(backend)
    await agent.start()
    await serve_region(agent, region_bytes(size, seed))


def spawn_owner(argv: list[str], what: str, cwd: str | None = None) -> tuple[subprocess.Popen, RemoteRegion]:
    """Run `argv` (a process that ends in `serve_region`) and wait for its region. Close its
    stdin (`stop_owner`) to stop it. Blocking: call it off the event loop. Raises
    `TransferError` if the process exits first."""
    owner = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    for line in owner.stdout:  # backends may log on stdout before the region line
        if line.startswith(_PREFIX):
            # Keep draining what it prints later (UCX_PROTO_INFO and the like): a full pipe
            # would block the owner.
            threading.Thread(target=_echo, args=(owner.stdout, what), daemon=True).start()
            return owner, msgspec.msgpack.decode(bytes.fromhex(line[len(_PREFIX):].strip()), type=RemoteRegion)
        print(f"{what}: {line}", end="", file=sys.stderr)
    raise TransferError(f"the {what} process exited before serving its region (exit code {owner.wait()})")


def _echo(lines: IO[str], what: str) -> None:
    for line in lines:
        print(f"{what}: {line}", end="", file=sys.stderr)


def stop_owner(owner: subprocess.Popen) -> None:
    """Close the owner's stdin and wait for it to end (killing it after 30 s)."""
    if owner.stdin is not None:
        owner.stdin.close()
    try:
        owner.wait(timeout=30)
    except subprocess.TimeoutExpired:
        owner.kill()
        owner.wait()


def start_peer(backend: str, size: int, seed: int) -> tuple[subprocess.Popen, RemoteRegion]:
    """An owner process serving `region_bytes(size, seed)` with a `backend` agent."""
    argv = [sys.executable, "-m", "dynamo_core.transfer.peer", backend, str(size), str(seed)]
    return spawn_owner(argv, f"{backend} peer")


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
