"""The etcd discovery backend against a real etcd server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

from dynamo_core.runtime.discovery import DiscoveryConfig, WatchEventKind
from dynamo_core.runtime.etcd_discovery import EtcdDiscovery


def _config(server, ttl: float = 2.0) -> DiscoveryConfig:
    return DiscoveryConfig(lease_ttl_s=ttl, extra={"etcd_endpoints": server.url})


async def _next(watch, timeout: float = 15.0):
    return await asyncio.wait_for(watch.__anext__(), timeout)


async def test_put_watch_delete_and_close_revokes_the_lease(etcd_server):
    owner, watcher = EtcdDiscovery(_config(etcd_server)), EtcdDiscovery(_config(etcd_server))
    await owner.put("ns/backend/generate/a", b"A")
    watch = watcher.watch("ns/backend/")
    event = await _next(watch)
    assert (event.kind, event.key, event.value) == (WatchEventKind.PUT, "ns/backend/generate/a", b"A")
    await owner.put("ns/backend/generate/b", b"B")
    assert (await _next(watch)).key == "ns/backend/generate/b"
    await owner.close()  # revoking the lease removes both keys at once
    deleted = {(await _next(watch)).key, (await _next(watch)).key}
    assert deleted == {"ns/backend/generate/a", "ns/backend/generate/b"}
    assert await watcher.get_prefix("ns/") == {}
    await watch.aclose()
    await watcher.close()


_REGISTER = textwrap.dedent(
    """
    import asyncio, sys
    from dynamo_core.runtime.discovery import DiscoveryConfig
    from dynamo_core.runtime.etcd_discovery import EtcdDiscovery

    async def main():
        store = EtcdDiscovery(DiscoveryConfig(lease_ttl_s=2.0, extra={"etcd_endpoints": sys.argv[1]}))
        await store.put("ns/backend/generate/child", b"alive")
        print("registered", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_killed_process_disappears_when_its_lease_lapses(etcd_server):
    proc = subprocess.Popen([sys.executable, "-c", _REGISTER, etcd_server.url], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "registered"
        watcher = EtcdDiscovery(_config(etcd_server))
        watch = watcher.watch("ns/")
        assert (await _next(watch)).kind is WatchEventKind.PUT
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        event = await _next(watch)
        assert event.kind is WatchEventKind.DELETE
        assert time.monotonic() - killed < 2.0 + 1.5  # the TTL, plus etcd's expiry granularity
        await watch.aclose()
        await watcher.close()
    finally:
        proc.kill()
        proc.wait()


async def test_owner_registers_again_and_watchers_resume_after_etcd_restarts(etcd_server):
    owner, watcher = EtcdDiscovery(_config(etcd_server, ttl=2.0)), EtcdDiscovery(_config(etcd_server))
    await owner.put("ns/backend/generate/a", b"A")
    watch = watcher.watch("ns/")
    assert (await _next(watch)).kind is WatchEventKind.PUT
    await asyncio.to_thread(etcd_server.restart, 3.0)  # down longer than the lease TTL
    # The key may lapse while etcd is down; the owner must put it back by itself.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if await watcher.get_prefix("ns/") == {"ns/backend/generate/a": b"A"}:
                break
        except Exception:
            pass  # etcd still starting
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the key was not registered again after etcd restarted")
    # The watch still works after the restart.
    await owner.put("ns/backend/generate/b", b"B")
    seen = set()
    while "ns/backend/generate/b" not in seen:
        event = await _next(watch, 20)
        seen.add(event.key)
    await watch.aclose()
    await owner.close()
    await watcher.close()
