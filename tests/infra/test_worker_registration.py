"""A worker on real etcd: ready only once its record is in discovery, and a start that fails at
registration (etcd unreachable) stops the engine and everything else it had started."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx

from conftest import free_port
from dynamo_core.runtime.discovery import DiscoveryConfig
from dynamo_core.worker.health import HealthServer
from dynamo_core.worker.worker import Worker, WorkerConfig


def _listening_ports() -> set[int]:
    """TCP ports this process listens on (its sockets' inodes matched in /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_worker_health_is_starting_until_its_record_is_in_etcd(etcd_server):
    config = WorkerConfig(engine="echo", discovery="etcd",
                          discovery_config=DiscoveryConfig(extra={"etcd_endpoints": etcd_server.url}))
    worker = Worker(config)
    health = HealthServer("127.0.0.1", 0, worker.health_status)
    port = await health.start()
    etcd_server.proc.send_signal(signal.SIGSTOP)  # the put hangs (etcd's socket accepts, nothing answers)
    starting = asyncio.create_task(worker.start())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(20):  # 2 s: the engine and the request plane are up long before
                await asyncio.sleep(0.1)
                answer = await client.get("/health")
                assert (answer.status_code, answer.json()) == (503, {"status": "starting"})
            assert worker.engine is not None and not starting.done()
            etcd_server.proc.send_signal(signal.SIGCONT)
            await asyncio.wait_for(starting, 15)
            ready = await client.get("/health")
            assert (ready.status_code, ready.json()) == (200, {"status": "ok"})
    finally:
        etcd_server.proc.send_signal(signal.SIGCONT)
        if not starting.done():
            starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await worker.stop()
        await health.stop()


async def test_a_start_that_fails_at_registration_stops_the_engine_and_its_sockets():
    # A prefill mocker: its engine listens (the bootstrap server), like its transfer agent and
    # the request plane; etcd on a port where nothing listens refuses the registration.
    before = _listening_ports()
    config = WorkerConfig(engine="mocker", role="prefill", transfer="tcp", discovery="etcd",
                          discovery_config=DiscoveryConfig(extra={"etcd_endpoints": f"http://127.0.0.1:{free_port()}"}))
    worker = Worker(config)
    tasks_before = asyncio.all_tasks()
    try:
        await worker.start()
    except ConnectionError as exc:
        assert "no etcd endpoint reachable" in str(exc)
    else:
        raise AssertionError("the start should have failed")
    await asyncio.sleep(0.1)
    assert _listening_ports() == before
    left = {t.get_name() for t in asyncio.all_tasks() - tasks_before if not t.done()}
    assert not left, left
    assert worker.health_status() != "ok"
