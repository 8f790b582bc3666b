"""Bandwidth of NIXL reads of GPU memory (VRAM) between two processes, against a device-to-device copy.

    python -m benchmarks.transfer_bench_gpu                              # 1..256 MiB, 10 reads each
    python -m benchmarks.transfer_bench_gpu --sizes-mib 1,16,1024 --repeat 20

An owner process (this module with `--owner`, started by `start_owner`) fills a CUDA tensor of
the largest size with seeded random bytes (`pattern`), registers it with the nixl agent as VRAM
and prints its `RemoteRegion`; this process registers a CUDA tensor of its own and reads the
first SIZE bytes of the owner's with one `read`. With two or more GPUs the owner uses GPU 0 and
the reader GPU 1, otherwise both use GPU 0. For each size: one untimed read whose bytes are
checked against `pattern` computed here, then `--repeat` timed reads; the baseline is
`dst.copy_(src)` between two tensors of this process on the same GPU(s) (owner's to reader's),
`--repeat` times after one warm-up. Every timing is wall time from the host, GPUs synchronized
before and after, so both columns pay their launch and completion overheads. GB/s is payload
bytes (10^9) per second, not bytes read plus written. Exits 1 if any read delivered wrong
bytes; prints "skipped: no CUDA" and exits 0 where there is no CUDA GPU (or no torch).

UCX reads GPU memory of another process on the same host with `cuda_ipc`, but it turns that
transport's gets off where NVML reports no NVLink (a one-GPU machine, PCIe-only GPUs): NIXL's
READ then falls back to "software emulation" over tcp/lo at well under 1 GB/s. The nixl
backend sets `UCX_CUDA_IPC_ENABLE_GET_ZCOPY=on` (unless the environment sets it) to keep
cuda_ipc zero-copy reads; `=off` shows the fallback, `UCX_PROTO_INFO=y` the path UCX picked
("remote memory read by ucp_get* into cuda/...").

The nixl agent class is imported directly (not via `create_transfer_agent`), so the benchmark
also runs from a source tree with `core/src` and `plugins/nixl/src` on PYTHONPATH, where no
entry points are installed (the GPU machine: `scripts/gpu/fetch_wheels.sh nixl`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path


from dynamo_core.transfer import RemoteRegion, TransferAgent, TransferConfig, TransferError
from dynamo_core.transfer.peer import serve_region, spawn_owner, stop_owner

try:
    import torch
except ImportError:  # CPU hosts without torch: main() says "skipped"
    torch = None  # type: ignore[assignment]

MIB = 1024 * 1024
SEED = 1
_REPO = Path(__file__).resolve().parents[1]


def cuda_available() -> bool:
    return torch is not None and torch.cuda.is_available()


def devices() -> tuple[int, int]:
    """(owner's GPU, reader's GPU): two GPUs where there are, so the read crosses devices."""
    return (0, 1) if torch.cuda.device_count() > 1 else (0, 0)


def pattern(size: int, seed: int, device: int) -> torch.Tensor:
    """SIZE seeded random bytes on GPU `device`: the owner's region and what a reader expects.

    Made by the GPU's Philox generator (fast even for GiBs); its stream depends on the launch
    grid, so owner and reader must run on the same GPU model, which one host's GPUs are.
    """
    generator = torch.Generator(device=f"cuda:{device}").manual_seed(seed)
    data = torch.randint(0, 256, (size,), dtype=torch.uint8, device=f"cuda:{device}", generator=generator)
    torch.cuda.synchronize(device)  # a peer process reads it with its own streams
    return data


def nixl_agent(config: TransferConfig) -> TransferAgent:
    # Imported here: without CUDA the benchmark must not need the plugin at all.
    from dynamo_nixl.agent import NixlTransferAgent

    return NixlTransferAgent(config)


# ---------------------------------------------------------------------------------------------
# The owner process
# ---------------------------------------------------------------------------------------------


async def _serve(size: int, seed: int, device: int) -> None:
    torch.cuda.set_device(device)
    region = pattern(size, seed, device)
    agent = nixl_agent(TransferConfig())
    await agent.start()
    await serve_region(agent, region)


def start_owner(size: int, seed: int, device: int) -> tuple[subprocess.Popen[str], RemoteRegion]:
    """An owner process serving `pattern(size, seed, device)`; stop it with `stop_owner`."""
    argv = [sys.executable, "-m", "benchmarks.transfer_bench_gpu", "--owner", str(size),
            "--seed", str(seed), "--device", str(device)]
    return spawn_owner(argv, "nixl VRAM owner", cwd=str(_REPO))


# ---------------------------------------------------------------------------------------------
# The reader: timing and the table
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    size: int
    nixl: list[float]  # seconds per timed read
    copy: list[float]  # seconds per timed dst.copy_(src)
    correct: bool

    @staticmethod
    def median_gbs(size: int, seconds: list[float]) -> float:
        return size / statistics.median(seconds) / 1e9


async def _timed(action: Callable[[], Awaitable[None] | None], repeat: int, gpus: set[int]) -> list[float]:
    seconds = []
    for _ in range(repeat):
        for d in gpus:
            torch.cuda.synchronize(d)
        start = time.perf_counter()
        result = action()
        if result is not None:
            await result
        for d in gpus:
            torch.cuda.synchronize(d)
        seconds.append(time.perf_counter() - start)
    return seconds


@dataclass
class _Reader:
    agent: TransferAgent
    remote: RemoteRegion
    local: int  # the agent's region id of dst
    dst: torch.Tensor
    expected: torch.Tensor  # pattern() on the reader's GPU
    copy_src: torch.Tensor  # pattern() on the owner's GPU, for the baseline copy
    gpus: set[int]

    async def row(self, size: int, repeat: int) -> Row:
        reader_gpu = self.dst.get_device()
        self.dst[:size].zero_()
        torch.cuda.synchronize(reader_gpu)  # NIXL writes from its own streams
        await self.read(size)  # warms UCX's IPC mapping; its bytes are the ones checked
        torch.cuda.synchronize(reader_gpu)
        correct = torch.equal(self.dst[:size], self.expected[:size])
        nixl = await _timed(lambda: self.read(size), repeat, self.gpus)
        await _timed(lambda: self.copy(size), 1, self.gpus)  # warm-up
        copy = await _timed(lambda: self.copy(size), repeat, self.gpus)
        return Row(size, nixl, copy, correct)

    async def read(self, size: int) -> None:
        await self.agent.read(self.remote, 0, self.local, 0, size)

    def copy(self, size: int) -> None:
        self.dst[:size].copy_(self.copy_src[:size])


async def measure(sizes: list[int], repeat: int, seed: int) -> list[Row]:
    owner_gpu, reader_gpu = devices()
    largest = max(sizes)
    expected = pattern(largest, seed, reader_gpu)
    copy_src = expected if owner_gpu == reader_gpu else pattern(largest, seed, owner_gpu)
    dst = torch.zeros(largest, dtype=torch.uint8, device=f"cuda:{reader_gpu}")
    owner, remote = await asyncio.to_thread(start_owner, largest, seed, owner_gpu)
    agent = nixl_agent(TransferConfig(timeout_s=30))
    try:
        await agent.start()
        reader = _Reader(agent, remote, agent.register(dst), dst, expected, copy_src, {owner_gpu, reader_gpu})
        return [await reader.row(size, repeat) for size in sizes]
    finally:
        await agent.close()
        await asyncio.to_thread(stop_owner, owner)


def _payload(size: int) -> str:
    return f"{size // MIB} MiB" if size < 1024 * MIB else f"{size // (1024 * MIB)} GiB"


def print_table(rows: list[Row]) -> None:
    print("| payload | NIXL read median GB/s | d2d copy median GB/s | NIXL / d2d | NIXL best GB/s | bytes |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        nixl, copy = Row.median_gbs(row.size, row.nixl), Row.median_gbs(row.size, row.copy)
        best = row.size / min(row.nixl) / 1e9
        check = "ok" if row.correct else "WRONG"
        print(f"| {_payload(row.size)} | {nixl:.1f} | {copy:.1f} | {nixl / copy:.2f} | {best:.1f} | {check} |")


def _describe_setup() -> str:
    owner_gpu, reader_gpu = devices()
    names = {d: torch.cuda.get_device_name(d) for d in {owner_gpu, reader_gpu}}
    ucx = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("UCX_")) or "none"
    return (f"owner on GPU {owner_gpu} ({names[owner_gpu]}), reader on GPU {reader_gpu} ({names[reader_gpu]}), "
            f"{torch.cuda.device_count()} GPU(s) visible; torch {torch.__version__}; UCX settings: {ucx}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes-mib", default="1,4,16,64,256", help="payload sizes in MiB (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=10,
                   help="timed reads per payload, after the checked one (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the owner's bytes (default: %(default)s)")
    p.add_argument("--owner", type=int, metavar="BYTES", help="run as the owner process serving BYTES bytes")
    p.add_argument("--device", type=int, default=0, help="the owner's GPU (with --owner)")
    args = p.parse_args()
    if not cuda_available():
        print("skipped: no CUDA (torch with a CUDA GPU is needed to measure NIXL VRAM transfers)")
        return 0
    if args.owner is not None:
        asyncio.run(_serve(args.owner, args.seed, args.device))
        return 0
    sizes = [int(s) * MIB for s in args.sizes_mib.split(",")]
    print(_describe_setup(), flush=True)
    try:
        rows = asyncio.run(measure(sizes, args.repeat, args.seed))
    except TransferError as e:
        print(f"nixl VRAM transfer failed: {e}", file=sys.stderr)
        return 2
    print_table(rows)
    wrong = [_payload(r.size) for r in rows if not r.correct]
    if wrong:
        print(f"FAILED: NIXL delivered wrong bytes for {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
