"""Bandwidth of the KV-transfer backends between two processes on this host, against memcpy.

    uv run python -m benchmarks.transfer_bench                          # 1..256 MiB, tcp and nixl
    uv run python -m benchmarks.transfer_bench --sizes-mib 1,16 --repeat 3 --backends tcp

For each backend a child process (`dynamo_core.transfer.peer`) registers one buffer of the
largest payload size filled with seeded random bytes and prints its `RemoteRegion`; this process reads payloads of each size from
it with one `read` (a contiguous range) into a registered local buffer, `--repeat` times after
one warm-up read, and checks the bytes of the last one. memcpy is `np.copyto` of the same
size between two buffers of this process. All buffers are touched before timing, so page
faults are not measured. Prints a markdown table of GB/s (10^9 bytes/s), best and median.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import numpy as np

from benchmarks.report import run_async
from dynamo_core.transfer import TransferConfig, TransferError, create_transfer_agent
from dynamo_core.transfer.peer import region_bytes, start_peer, stop_owner

MIB = 1024 * 1024
SEED = 1


async def _timed(action: Callable[[], Awaitable[None] | None], repeat: int) -> list[float]:
    seconds = []
    for i in range(repeat + 1):  # the first one warms connections, registrations and caches
        start = time.perf_counter()
        result = action()
        if result is not None:
            await result
        if i:
            seconds.append(time.perf_counter() - start)
    return seconds


def _row(method: str, size: int, seconds: list[float]) -> dict:
    return {
        "payload": f"{size // MIB} MiB",
        "method": method,
        "best": size / min(seconds) / 1e9,
        "median": size / statistics.median(seconds) / 1e9,
    }


async def _bench_backend(backend: str, sizes: list[int], repeat: int, dst: np.ndarray, expected: np.ndarray) -> list[dict]:
    peer, remote = await asyncio.to_thread(start_peer, backend, max(sizes), SEED)
    agent = create_transfer_agent(backend, TransferConfig(timeout_s=120))
    try:
        await agent.start()
        local = agent.register(dst)
        rows = []
        for size in sizes:
            dst[:size] = 0
            seconds = await _timed(lambda: agent.read(remote, 0, local, 0, size), repeat)
            if not np.array_equal(dst[:size], expected[:size]):
                raise TransferError(f"{backend}: the {size}-byte read delivered wrong bytes")
            rows.append(_row(f"{backend} read", size, seconds))
        return rows
    finally:
        await asyncio.to_thread(stop_owner, peer)
        await agent.close()


async def _main(args: argparse.Namespace) -> None:
    sizes = [int(s) * MIB for s in args.sizes_mib.split(",")]
    src = np.frombuffer(region_bytes(max(sizes), SEED), dtype=np.uint8)  # what the peer serves
    dst = np.ones(max(sizes), dtype=np.uint8)  # ones: pages touched
    by_method: dict[str, list[dict]] = {}
    for size in sizes:
        by_method.setdefault("memcpy", []).append(
            _row("memcpy", size, await _timed(lambda: np.copyto(dst[:size], src[:size]), args.repeat))
        )
    for backend in args.backends.split(","):
        try:
            by_method[backend] = await _bench_backend(backend, sizes, args.repeat, dst, src)
        except (TransferError, LookupError) as e:
            print(f"skipping {backend}: {e}", file=sys.stderr)

    print(f"| payload | method | best GB/s | median GB/s | median, % of memcpy |")
    print("| --- | --- | ---: | ---: | ---: |")
    for i, size in enumerate(sizes):
        memcpy_median = by_method["memcpy"][i]["median"]
        for rows in by_method.values():
            row = rows[i]
            share = 100 * row["median"] / memcpy_median
            print(f"| {row['payload']} | {row['method']} | {row['best']:.2f} | {row['median']:.2f} | {share:.0f}% |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes-mib", default="1,4,16,64,256", help="payload sizes in MiB (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=5, help="timed reads per payload, after one warm-up (default: %(default)s)")
    p.add_argument("--backends", default="tcp,nixl", help="transfer backends to measure; missing ones are skipped")
    run_async(_main(p.parse_args()))


if __name__ == "__main__":
    main()
