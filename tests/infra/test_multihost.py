"""Many hosts for real: network namespaces joined by a bridge, one role per "host".

infra (10.77.0.1): etcd + NATS; w1 (10.77.0.2), w2 (10.77.0.3): workers; fe (10.77.0.4):
the frontend. The workers' model directory is removed before the frontend starts, so the
frontend can only get the tokenizer the way a frontend on another machine would: from a
worker, over NATS. Needs root and `ip netns`; skipped with the reason when the kernel refuses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from servers import require

pytestmark = pytest.mark.timeout(240)

SUBNET = "10.77.{}.{}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class Hosts:
    """A bridge namespace plus one namespace per host, each with a veth into the bridge."""

    def __init__(self, names: list[str]):
        tag = uuid.uuid4().hex[:6]
        self.subnet = int(tag, 16) % 200 + 20  # 10.77.X.0/24, unlikely to clash between runs
        self.bridge_ns = f"dynsw-{tag}"
        self.ns = {name: f"dyn{name}-{tag}" for name in names}
        self.addr = {name: SUBNET.format(self.subnet, i + 1) for i, name in enumerate(names)}
        self._created: list[str] = []

    def create(self) -> None:
        _ip("netns", "add", self.bridge_ns)
        self._created.append(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for i, (name, ns) in enumerate(self.ns.items()):
            _ip("netns", "add", ns)
            self._created.append(ns)
            host_end, switch_end = f"vh{i}{self.bridge_ns[-6:]}"[:15], f"vs{i}{self.bridge_ns[-6:]}"[:15]
            _ip("link", "add", host_end, "type", "veth", "peer", "name", switch_end)
            _ip("link", "set", host_end, "netns", ns)
            _ip("link", "set", switch_end, "netns", self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "set", switch_end, "master", "br0")
            _ip("-n", self.bridge_ns, "link", "set", switch_end, "up")
            _ip("-n", ns, "addr", "add", f"{self.addr[name]}/24", "dev", host_end)
            _ip("-n", ns, "link", "set", host_end, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def run(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        with open(log, "wb") as out:
            return subprocess.Popen(["ip", "netns", "exec", self.ns[name], *argv], stdout=out, stderr=subprocess.STDOUT, env=env)

    def destroy(self) -> None:
        for ns in reversed(self._created):
            _ip("netns", "pids", ns, check=False)
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], check=False)
            _ip("netns", "delete", ns, check=False)


@pytest.fixture
def hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's `ip`")
    probe = f"dynprobe-{uuid.uuid4().hex[:6]}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        pytest.skip(f"the kernel refused a network namespace: {result.stderr.strip()}")
    _ip("netns", "delete", probe, check=False)
    h = Hosts(["infra", "w1", "w2", "fe"])
    try:
        h.create()
        yield h
    finally:
        h.destroy()


CLIENT = textwrap.dedent(
    """
    import json, sys, time, openai
    client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=30)
    deadline = time.time() + 60
    while True:
        try:
            models = [m.id for m in client.models.list().data]
            if models:
                break
        except openai.APIError:
            pass
        if time.time() > deadline:
            sys.exit("no model appeared")
        time.sleep(0.3)
    reply = client.chat.completions.create(model="shared", messages=[{"role": "user", "content": "Hello across hosts"}], max_tokens=8)
    stream = client.chat.completions.create(model="shared", messages=[{"role": "user", "content": "Stream"}], max_tokens=6, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    print(json.dumps({"models": models, "content": reply.choices[0].message.content,
                      "usage": reply.usage.completion_tokens, "streamed": streamed}))
    """
)


def test_chat_through_frontend_etcd_nats_and_workers_on_four_hosts(hosts, tmp_path, mistral_tokenizer_dir):
    etcd, nats_server = require("etcd"), require("nats-server")
    infra = hosts.addr["infra"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", DYN_CACHE_DIR=str(tmp_path / "fe-cache"))
    procs: list[subprocess.Popen] = []
    try:
        procs.append(hosts.run("infra", [
            etcd, "--data-dir", str(tmp_path / "etcd"), "--listen-client-urls", f"http://{infra}:2379",
            "--advertise-client-urls", f"http://{infra}:2379", "--listen-peer-urls", "http://127.0.0.1:2380",
        ], tmp_path / "etcd.log", env))
        procs.append(hosts.run("infra", [nats_server, "-a", infra, "-p", "4222", "-js", "-sd", str(tmp_path / "nats")],
                               tmp_path / "nats.log", env))
        common = [
            "--discovery", "etcd", "--etcd-endpoints", f"http://{infra}:2379",
            "--request-plane", "nats", "--event-plane", "nats", "--nats-url", f"nats://{infra}:4222",
            "--namespace", "multihost",
        ]
        model_dir = tmp_path / "worker-model"
        shutil.copytree(mistral_tokenizer_dir, model_dir)
        dynamo = [sys.executable, "-m", "dynamo_core.cli.main"]
        for name in ("w1", "w2"):
            procs.append(hosts.run(name, [*dynamo, "worker", "--engine", "echo", "--model", str(model_dir),
                                          "--model-name", "shared", *common],
                                   tmp_path / f"{name}.log", env))
        # Wait for both workers to register (their logs say so), then hide the model directory.
        deadline = time.monotonic() + 90
        while sum("worker ready" in (tmp_path / f"{n}.log").read_text() for n in ("w1", "w2")) < 2:
            assert time.monotonic() < deadline, "workers did not start:\n" + "\n".join(
                (tmp_path / f).read_text()[-2000:] for f in ("w1.log", "w2.log", "etcd.log", "nats.log"))
            time.sleep(0.3)
        shutil.rmtree(model_dir)
        fe = hosts.addr["fe"]
        procs.append(hosts.run("fe", [*dynamo, "frontend", "--http-host", fe, "--http-port", "8000", *common],
                               tmp_path / "fe.log", env))
        client = subprocess.run(
            ["ip", "netns", "exec", hosts.ns["fe"], sys.executable, "-c", CLIENT, f"http://{fe}:8000/v1"],
            capture_output=True, text=True, timeout=120, env=env,
        )
        assert client.returncode == 0, client.stderr + (tmp_path / "fe.log").read_text()[-3000:]
        result = json.loads(client.stdout.strip().splitlines()[-1])
        assert result["models"] == ["shared"]
        assert result["content"] == "Hello across hosts"
        assert result["streamed"] == "Stream"
        fe_log = (tmp_path / "fe.log").read_text()
        assert "fetching the tokenizer of 'shared'" in fe_log
        # The frontend really saw both workers, on their own hosts.
        health = subprocess.run(
            ["ip", "netns", "exec", hosts.ns["fe"], sys.executable, "-c",
             f"import urllib.request;print(urllib.request.urlopen('http://{fe}:8000/health').read().decode())"],
            capture_output=True, text=True, timeout=30,
        )
        instances = json.loads(health.stdout)["instances"]
        assert len(instances) == 2
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
