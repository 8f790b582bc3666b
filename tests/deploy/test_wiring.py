"""The rendered chart run as real processes on this machine: etcd, NATS, the frontend and the
workers start from exactly the command, args and env the chart renders for the mocker example
(only hosts, ports and volume paths are substituted, as a cluster's DNS and mounts would), each
is waited on through its rendered readiness probe, and a chat request is served through them.
A flag renamed in the CLI, or an env var the code no longer reads, fails here."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import msgspec

from conftest import free_port, http_get, wait_until
from deploy.chart import CHART_DIR, RELEASE, container, example_values, find, render
from dynamo_core.protocols.discovery import InstanceRecord
from servers import ServerProcess, require

EXAMPLE = CHART_DIR / "examples" / "mocker-cpu.yaml"
DOCKERFILE = CHART_DIR.parents[1] / "container" / "Dockerfile"
# Where the image puts the `dynamo` entry point; here, this environment's console script.
ENTRY_POINTS = {"dynamo": str(Path(sys.executable).parent / "dynamo")}


class Pods(dict[str, ServerProcess]):
    """The rendered containers started as processes, by name."""

    def __init__(self, tmp: Path):
        super().__init__()
        self.tmp = tmp

    def start(self, name: str, argv: list[str], env: dict[str, str], port: int) -> ServerProcess:
        """Returns once the process listens on `port`."""
        self[name] = pod = ServerProcess(argv, port, self.tmp / f"{name}.log", env=env)
        pod.start()
        return pod

    def stop(self) -> dict[str, int | None]:
        for pod in reversed(self.values()):
            pod.stop()
        return {name: pod.proc.returncode if pod.proc else None for name, pod in self.items()}


def _substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def _env(c: dict[str, Any], replacements: dict[str, str], field_refs: dict[str, str]) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = _substitute(item["value"], replacements)
        else:
            env[item["name"]] = field_refs[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def _argv(c: dict[str, Any], replacements: dict[str, str]) -> list[str]:
    argv = [_substitute(a, replacements) for a in c.get("command", []) + c.get("args", [])]
    return [ENTRY_POINTS.get(argv[0], argv[0]), *argv[1:]]


def _probe_url(c: dict[str, Any], probe: str, port_override: int | None = None) -> str:
    get = c[probe]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    port = port_override or (ports[get["port"]] if isinstance(get["port"], str) else get["port"])
    return f"http://127.0.0.1:{port}{get['path']}"


def _wait_ready(pod: ServerProcess, url: str, timeout: float = 60.0) -> None:
    assert pod.proc is not None
    def ready() -> bool:
        try:
            return http_get(url, timeout=2)[0] == 200
        except OSError:
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if pod.proc.poll() is not None:
            raise AssertionError(f"{url}: process exited with {pod.proc.returncode}:\n{pod.log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.1)
    raise AssertionError(f"not ready at {url} after {timeout}s:\n{pod.log.read_text(errors='replace')[-4000:]}")


def _image_healthcheck(env: dict[str, str]) -> int:
    """The image's HEALTHCHECK command, run with a container's env (its `python`: this one)."""
    command = re.search(r"^\s+CMD (.*)$", DOCKERFILE.read_text(), re.M).group(1)
    return subprocess.run(["bash", "-c", command.replace("python -c", f"{sys.executable} -c", 1)], env=env,
                          capture_output=True).returncode


def _etcd_instances(port: int, prefix: str) -> list[InstanceRecord]:
    """The instance records under `prefix`, read through etcd's own HTTP gateway."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    query = {"key": base64.b64encode(prefix.encode()).decode(), "range_end": base64.b64encode(end.encode()).decode()}
    reply = httpx.post(f"http://127.0.0.1:{port}/v3/kv/range", json=query, timeout=5).json()
    decoder = msgspec.msgpack.Decoder(InstanceRecord)
    return [decoder.decode(base64.b64decode(kv["value"])) for kv in reply.get("kvs", [])]


def test_rendered_mocker_graph_serves_a_chat_request(tmp_path: Path):
    etcd_bin, nats_bin = require("etcd"), require("nats-server")
    ports = {name: free_port() for name in ("etcd", "etcd_peer", "nats", "nats_monitor", "http", "health")}
    values = example_values(EXAMPLE, {
        "etcd": {"clientPort": ports["etcd"], "peerPort": ports["etcd_peer"]},
        "nats": {"port": ports["nats"], "monitorPort": ports["nats_monitor"]},
        "frontend": {"httpPort": ports["http"]},
        "workerDefaults": {"healthPort": ports["health"]},
    })
    objects = render(values)
    prefix = f"{RELEASE}-dynamo"
    # What cluster DNS and volumes provide: Service names resolve to the one host, wildcard
    # listeners stay on loopback, mounts are directories of this test.
    replacements = {
        f"{prefix}-etcd:": "127.0.0.1:", f"{prefix}-nats:": "127.0.0.1:", "0.0.0.0": "127.0.0.1",
        "/var/lib/etcd": str(tmp_path / "etcd-data"), "/data": str(tmp_path / "nats-data"),
    }
    pods = Pods(tmp_path)
    try:
        # etcd and NATS, the way the chart runs them.
        for component, binary in (("etcd", etcd_bin), ("nats", nats_bin)):
            c = container(find(objects, "StatefulSet", f"{prefix}-{component}"))
            argv = _argv(c, replacements)
            pod = pods.start(component, [binary, *argv[1:]], _env(c, replacements, {}), ports[component])
            _wait_ready(pod, _probe_url(c, "readinessProbe"))

        # Workers: every replica of every group, each its own "pod" with its own health port.
        for group in values["workers"]:
            c = container(find(objects, "Deployment", f"{prefix}-worker-{group['name']}"))
            for replica in range(group["replicas"]):
                health = ports["health"] if replica == 0 else free_port()
                env = _env(c, replacements, {"status.podIP": "127.0.0.1"})
                env["DYN_WORKER_HEALTH_PORT"] = _substitute(env["DYN_WORKER_HEALTH_PORT"], {str(ports["health"]): str(health)})
                # A process that ignored DYN_DISCOVERY would fall back to file discovery; a
                # private store per process means it would then never meet the others.
                env["DYN_FILE_DISCOVERY_DIR"] = str(tmp_path / f"files-{group['name']}-{replica}")
                pod = pods.start(f"worker-{group['name']}-{replica}", _argv(c, replacements), env, health)
                _wait_ready(pod, _probe_url(c, "readinessProbe", health))
                assert http_get(_probe_url(c, "livenessProbe", health))[0] == 200
                assert _image_healthcheck(env) == 0

        frontend_deployment = find(objects, "Deployment", f"{prefix}-frontend")
        c = container(frontend_deployment)
        env = _env(c, replacements, {})
        env["DYN_FILE_DISCOVERY_DIR"] = str(tmp_path / "files-frontend")
        frontend = pods.start("frontend", _argv(c, replacements), env, ports["http"])
        _wait_ready(frontend, _probe_url(c, "readinessProbe"))
        assert http_get(_probe_url(c, "livenessProbe"))[0] == 200
        assert _image_healthcheck(env) == 0
        base = f"http://127.0.0.1:{ports['http']}"
        replicas = sum(g["replicas"] for g in values["workers"])
        wait_until(lambda: len(http_get(f"{base}/health")[1]["instances"]) >= replicas, 30, None)

        response = httpx.post(f"{base}/v1/chat/completions", timeout=30, json={
            "model": values["workers"][0]["model"]["name"], "max_tokens": 8,
            "messages": [{"role": "user", "content": "Hello from the rendered chart"}],
        })
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] > 0

        # Discovery is etcd and both planes are NATS, as the chart says (a process that ignored
        # DYN_REQUEST_PLANE would still serve, over TCP): the workers' records in etcd say so,
        # and the frontend and every worker hold NATS connections.
        namespace = env["DYN_NAMESPACE"]
        records = _etcd_instances(ports["etcd"], f"{namespace}/backend/generate/")
        assert [(r.transport, r.event_plane) for r in records] == [("nats", "nats")] * replicas
        connz = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ports['nats_monitor']}/connz", timeout=5))
        assert connz["num_connections"] >= 1 + replicas, connz
        scrape = frontend_deployment["spec"]["template"]["metadata"]["annotations"]
        metrics = http_get(f"http://127.0.0.1:{scrape['prometheus.io/port']}{scrape['prometheus.io/path']}")
        assert metrics[0] == 200 and "dynamo_frontend" in metrics[1]
    finally:
        codes = pods.stop()
    # Workers exit 0 after their drain; uvicorn re-raises the SIGTERM it handled gracefully.
    assert all(code == 0 for name, code in codes.items() if name.startswith("worker")), codes
    assert codes["frontend"] in (0, -signal.SIGTERM), codes
