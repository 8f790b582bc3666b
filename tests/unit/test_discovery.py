"""Discovery backends: leases, watches, and a killed process disappearing (file backend)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dynamo_core.runtime.discovery import (
    DiscoveryConfig,
    FileDiscovery,
    MemDiscovery,
    WatchEventKind,
)


async def _next(watch, timeout=10.0):
    return await asyncio.wait_for(watch.__anext__(), timeout)


@pytest.mark.parametrize("backend", ["mem", "file"])
async def test_watch_sees_existing_keys_then_puts_and_deletes(backend, tmp_path):
    config = DiscoveryConfig(file_dir=str(tmp_path), poll_interval_s=0.05)
    make = MemDiscovery if backend == "mem" else FileDiscovery
    store, watcher = make(config), make(config)
    await store.put("ns/backend/generate/a", b"A")
    watch = watcher.watch("ns/backend/")
    event = await _next(watch)
    assert (event.kind, event.key, event.value) == (WatchEventKind.PUT, "ns/backend/generate/a", b"A")
    await store.put("ns/backend/generate/b", b"B")
    await store.put("other/backend/generate/c", b"C")  # another namespace: not seen
    event = await _next(watch)
    assert (event.kind, event.key) == (WatchEventKind.PUT, "ns/backend/generate/b")
    await store.delete("ns/backend/generate/a")
    event = await _next(watch)
    assert (event.kind, event.key) == (WatchEventKind.DELETE, "ns/backend/generate/a")
    assert await watcher.get_prefix("ns/") == {"ns/backend/generate/b": b"B"}
    await watch.aclose()
    await store.close()
    assert await watcher.get_prefix("ns/") == {}


_REGISTER = textwrap.dedent(
    """
    import asyncio, sys
    from dynamo_core.runtime.discovery import DiscoveryConfig, FileDiscovery

    async def main():
        store = FileDiscovery(DiscoveryConfig(file_dir=sys.argv[1], lease_ttl_s=float(sys.argv[2])))
        await store.put("ns/backend/generate/child", b"alive")
        print("registered", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def _spawn_registrant(tmp_path, ttl: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _REGISTER, str(tmp_path), str(ttl)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "registered"
    return proc


async def test_killed_process_leaves_file_discovery_within_seconds(tmp_path):
    proc = await _spawn_registrant(tmp_path, ttl=30.0)  # a long TTL: the pid check must catch it
    watcher = FileDiscovery(DiscoveryConfig(file_dir=str(tmp_path), poll_interval_s=0.1))
    watch = watcher.watch("ns/")
    assert (await _next(watch)).kind is WatchEventKind.PUT
    os.kill(proc.pid, signal.SIGKILL)
    started = time.monotonic()
    event = await _next(watch)
    proc.wait()
    assert event.kind is WatchEventKind.DELETE
    assert time.monotonic() - started < 3.0
    await watch.aclose()


async def test_stalled_lease_lapses_after_its_ttl(tmp_path):
    proc = await _spawn_registrant(tmp_path, ttl=1.0)
    watcher = FileDiscovery(DiscoveryConfig(file_dir=str(tmp_path), poll_interval_s=0.1))
    watch = watcher.watch("ns/")
    assert (await _next(watch)).kind is WatchEventKind.PUT
    os.kill(proc.pid, signal.SIGSTOP)  # alive but not renewing: only the TTL can tell
    try:
        started = time.monotonic()
        event = await _next(watch, timeout=10)
        assert event.kind is WatchEventKind.DELETE
        assert 0.5 < time.monotonic() - started < 4.0
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        await watch.aclose()
