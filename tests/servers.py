"""Real etcd and NATS servers for tests: started on free loopback ports, stopped afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server did not open port {port}: {log.read_text()[-2000:]}")


def require(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian: apt-get install {'etcd-server' if binary == 'etcd' else 'nats-server'}); .ci/run installs it")
    return path


class ServerProcess:
    """A server that can be stopped and started again on the same port and data dir."""

    def __init__(self, argv: list[str], port: int, log: Path, host: str = "127.0.0.1",
                 env: dict[str, str] | None = None):
        self.argv, self.port, self.log, self.host, self.env = argv, port, log, host, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        _wait_port(self.port, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, down_for: float = 0.5) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


class EtcdServer(ServerProcess):
    def __init__(self, tmp: Path, host: str = "127.0.0.1"):
        binary = require("etcd")
        port, peer = _free_port(), _free_port()
        data = tmp / "etcd-data"
        argv = [
            binary, "--name", "test", "--data-dir", str(data),
            "--listen-client-urls", f"http://{host}:{port}", "--advertise-client-urls", f"http://{host}:{port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer}",
        ]
        super().__init__(argv, port, tmp / "etcd.log", host)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class NatsServer(ServerProcess):
    def __init__(self, tmp: Path, host: str = "127.0.0.1"):
        binary = require("nats-server")
        port = _free_port()
        store = tmp / "nats-store"
        argv = [binary, "-a", host, "-p", str(port), "-js", "-sd", str(store)]
        super().__init__(argv, port, tmp / "nats.log", host)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"
