"""`dynamo check`: a preflight report of this machine against the chosen configuration.

Each check says ok, warn or fail with a detail line; the command exits 1 when any check that
the configuration requires fails (an engine or router that is not installed, an unreachable
etcd or NATS that was asked for, an HTTP port in use), so scripts can gate on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from dynamo_core.plugins import PluginNotInstalledError, get_registry


@dataclass
class CheckResult:
    name: str
    status: str  # ok | warn | fail
    detail: str


def check_python() -> CheckResult:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info >= (3, 11)
    return CheckResult("python", "ok" if ok else "fail", f"{version} at {sys.executable}" + ("" if ok else " (3.11+ needed)"))


def check_plugin(kind: str, name: str) -> CheckResult:
    registry = get_registry()
    try:
        registry.get(kind, name)
    except PluginNotInstalledError as exc:
        return CheckResult(f"{kind} {name}", "fail", str(exc))
    dist = next(r.distribution for r in registry.registrations() if r.kind == kind and r.name == name)
    return CheckResult(f"{kind} {name}", "ok", f"provided by {dist}")


def check_plugins_listing() -> CheckResult:
    registry = get_registry()
    kinds = {"engine": "engines", "router": "routers", "discovery": "discovery", "transfer": "transfer"}
    detail = "; ".join(f"{label}: {', '.join(registry.names(k)) or '-'}" for k, label in kinds.items())
    return CheckResult("plugins", "ok", detail)


def check_gpu() -> CheckResult:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return CheckResult("gpu", "warn", "no nvidia-smi: no NVIDIA GPU visible (fine for mocker/echo)")
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        header = subprocess.run([smi], capture_output=True, text=True, timeout=10).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        return CheckResult("gpu", "warn", f"nvidia-smi failed: {exc}")
    cuda = next((part.split(":")[1].strip().split()[0] for part in header.split("|") if "CUDA Version" in part), "?")
    gpus = [line.strip() for line in out.splitlines() if line.strip()]
    return CheckResult("gpu", "ok", f"{len(gpus)} GPU(s), CUDA {cuda}: " + "; ".join(gpus))


def check_port(host: str, port: int) -> CheckResult:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return CheckResult(f"http port {host}:{port}", "fail", f"cannot listen: {exc.strerror}")
    return CheckResult(f"http port {host}:{port}", "ok", "free")


def check_file_discovery(directory: str) -> CheckResult:
    from dynamo_core.runtime.discovery import default_file_discovery_dir

    path = Path(directory or default_file_discovery_dir())
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        return CheckResult("file discovery", "fail", f"{path} is not writable: {exc}")
    return CheckResult("file discovery", "ok", f"{path} writable")


async def _etcd_status(endpoints: str) -> str:
    from dynamo_core.runtime.discovery import DiscoveryConfig
    from dynamo_core.runtime.etcd_discovery import EtcdDiscovery, etcd_endpoints

    config = DiscoveryConfig(extra={"etcd_endpoints": endpoints} if endpoints else {})
    store = EtcdDiscovery(config)
    try:
        status = await asyncio.wait_for(store.server_status(), 8)
        host, port = etcd_endpoints(config)[0]
        return f"reachable at {host}:{port} (etcd {status.version})"
    finally:
        await store.close()


def check_etcd(endpoints: str) -> CheckResult:
    try:
        return CheckResult("etcd", "ok", asyncio.run(_etcd_status(endpoints)))
    except Exception as exc:  # any failure to reach it is the finding itself
        where = endpoints or os.environ.get("ETCD_ENDPOINTS") or "http://127.0.0.1:2379"
        return CheckResult("etcd", "fail", f"not reachable at {where}: {exc}")


async def _nats_status(url: str) -> str:
    import nats

    async def quiet(_exc: Exception) -> None:
        pass  # the failure is reported once, by the check itself

    nc = await nats.connect(
        servers=[u.strip() for u in url.split(",")], connect_timeout=5, max_reconnect_attempts=0,
        allow_reconnect=False, error_cb=quiet,
    )
    try:
        info = nc._server_info
        js = "JetStream on" if info.get("jetstream") else "JetStream off"
        return f"reachable at {nc.connected_url.netloc} (nats-server {info.get('version', '?')}, {js})"
    finally:
        await nc.close()


def check_nats(url: str) -> CheckResult:
    from dynamo_core.runtime.nats_plane import nats_url

    target = nats_url(url or None)
    try:
        return CheckResult("nats", "ok", asyncio.run(asyncio.wait_for(_nats_status(target), 10)))
    except Exception as exc:
        # nats-py's timeouts carry no text ("TimeoutError" alone said nothing): say what happened.
        why = "no NATS server answered within 10 s" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return CheckResult(
            "nats", "fail",
            f"not reachable at {target}: {why}; start one (`nats-server -js`, Debian package nats-server, or "
            "`docker compose -f deploy/docker-compose.yml up nats`) or point --nats-url / NATS_SERVER at yours",
        )


async def _transfer_roundtrip(backend: str) -> str:
    """Start two agents of `backend` and move a few KiB between them, as decode pulls KV."""
    from dynamo_core.transfer import TransferConfig, create_transfer_agent

    owner, reader = create_transfer_agent(backend, TransferConfig()), create_transfer_agent(backend, TransferConfig())
    try:
        await owner.start()
        await reader.start()
        source, target = bytearray(os.urandom(64 * 1024)), bytearray(64 * 1024)
        remote = owner.describe(owner.register(source))
        await asyncio.wait_for(reader.read(remote, 0, reader.register(target), 0, len(source)), 20)
        if target != source:
            raise RuntimeError("the bytes read differ from the bytes registered")
    finally:
        await reader.close()
        await owner.close()
    return "two agents moved 64 KiB between them"


def check_transfer(backend: str) -> CheckResult:
    """Whether prefill and decode workers of this backend can move KV here (`--transfer`)."""
    name = f"transfer {backend}"
    try:
        get_registry().get("transfer", backend)
    except PluginNotInstalledError as exc:
        return CheckResult(name, "fail", str(exc))
    try:
        return CheckResult(name, "ok", asyncio.run(_transfer_roundtrip(backend)))
    except Exception as exc:  # noqa: BLE001 - reported, whatever the backend raised
        return CheckResult(name, "fail", f"{type(exc).__name__}: {exc}")


def run_checks(ns: argparse.Namespace) -> list[CheckResult]:
    results = [check_python(), check_plugins_listing(), check_plugin("engine", ns.engine), check_plugin("router", ns.router)]
    results.append(check_plugin("discovery", ns.discovery))
    results.append(check_gpu())
    if getattr(ns, "transfer", None):
        results.append(check_transfer(ns.transfer))
    results.append(check_port(ns.http_host, ns.http_port))
    if ns.discovery == "file":
        results.append(check_file_discovery(ns.file_discovery_dir))
    if ns.discovery == "etcd":
        results.append(check_etcd(ns.etcd_endpoints))
    if "nats" in (ns.request_plane, ns.event_plane):
        results.append(check_nats(ns.nats_url))
    return results


def print_report(results: list[CheckResult], as_json: bool) -> int:
    failed = [r for r in results if r.status == "fail"]
    if as_json:
        print(json.dumps({"ok": not failed, "checks": [asdict(r) for r in results]}, indent=2))
    else:
        width = max(len(r.name) for r in results)
        for r in results:
            print(f"{r.status.upper():<5} {r.name:<{width}}  {r.detail}")
        print(f"\n{len(failed)} problem(s) found" if failed else "\nall required checks passed")
    return 1 if failed else 0
