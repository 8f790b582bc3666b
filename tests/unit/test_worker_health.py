"""The worker's HTTP health endpoints that Kubernetes probes: `/live` answers while the
process runs, `/health` only while the worker is registered and not draining."""

from __future__ import annotations


import httpx

from conftest import free_port, wait_until
from dynamo_core.runtime.discovery import DiscoveryConfig
from dynamo_core.worker.health import HealthServer
from dynamo_core.worker.worker import Worker, WorkerConfig


async def test_health_is_503_until_registered_and_while_draining(tmp_path):
    worker = Worker(WorkerConfig(engine="echo", discovery_config=DiscoveryConfig(file_dir=str(tmp_path))))
    server = HealthServer("127.0.0.1", 0, worker.health_status)
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/live")).status_code == 200
            starting = await client.get("/health")
            assert (starting.status_code, starting.json()) == (503, {"status": "starting"})
            await worker.start()
            ready = await client.get("/health")
            assert (ready.status_code, ready.json()) == (200, {"status": "ok"})
            assert (await client.get("/metrics")).status_code == 404
            await worker.stop()
            draining = await client.get("/health")
            assert (draining.status_code, draining.json()) == (503, {"status": "draining"})
            assert (await client.get("/live")).status_code == 200
    finally:
        await server.stop()


def test_worker_health_port_from_env_serves_probes_and_stops_on_sigterm(cluster):
    port = free_port()
    worker = cluster.start("worker", "--engine", "echo", env={"DYN_WORKER_HEALTH_PORT": str(port)})

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 30, worker)
    assert httpx.get(f"http://127.0.0.1:{port}/live", timeout=2).json() == {"status": "ok"}
    assert worker.stop() == 0
