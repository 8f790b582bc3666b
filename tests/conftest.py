"""Shared fixtures: real `dynamo` processes on free loopback ports, and the test tokenizer."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent
sys.path.insert(0, str(TESTS_DIR))

DYNAMO = [sys.executable, "-m", "dynamo_core.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read().decode(), exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


class DynamoProcess:
    """A `dynamo` command started as a child process, with its output kept in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(DYNAMO + args, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class DynamoCluster:
    """Starts `dynamo` commands sharing one discovery directory and namespace."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.discovery_dir = tmp_path / "discovery"
        self.namespace = f"test{os.getpid()}{int(time.time() * 1000) % 100000}"
        self.processes: list[DynamoProcess] = []
        self.env = dict(os.environ)
        self.env.update(
            DYN_FILE_DISCOVERY_DIR=str(self.discovery_dir),
            DYN_NAMESPACE=self.namespace,
            PYTHONUNBUFFERED="1",
        )

    def start(self, *args: str, env: dict[str, str] | None = None) -> DynamoProcess:
        name = f"{args[0]}-{len(self.processes)}"
        process = DynamoProcess(list(args), {**self.env, **(env or {})}, self.tmp_path / f"{name}.log")
        self.processes.append(process)
        return process

    def serve(self, *args: str, workers: int = 2, timeout: float = 60.0) -> tuple[DynamoProcess, str]:
        port = free_port()
        process = self.start("serve", "--workers", str(workers), "--http-port", str(port), *args)
        base = f"http://127.0.0.1:{port}"
        self.wait_for_workers(base, workers, process, timeout)
        return process, base

    def frontend(self, *args: str) -> tuple[DynamoProcess, str]:
        port = free_port()
        process = self.start("frontend", "--http-port", str(port), *args)
        base = f"http://127.0.0.1:{port}"
        def live():
            try:
                return http_get(f"{base}/live", timeout=2)[0] == 200
            except OSError:
                return False

        wait_until(live, 30, process)
        return process, base

    @staticmethod
    def wait_for_workers(base: str, count: int, process: DynamoProcess | None = None, timeout: float = 60.0) -> list[dict]:
        def ready():
            try:
                status, body = http_get(f"{base}/health", timeout=2)
            except OSError:
                return None
            if status == 200 and len(body["instances"]) >= count:
                return body["instances"]
            return None

        return wait_until(ready, timeout, process)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def wait_until(predicate, timeout: float, process: DynamoProcess | None = None, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.proc.poll() is not None:
            raise AssertionError(f"process exited with {process.proc.returncode}:\n{process.output()[-4000:]}")
        time.sleep(interval)
    detail = f"\n{process.output()[-4000:]}" if process is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}{detail}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DynamoCluster]:
    c = DynamoCluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def mistral_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF-format tokenizer directory built from mistral-common's sentencepiece model."""
    from tokenizer_fixture import build_mistral_tokenizer_dir

    return build_mistral_tokenizer_dir(tmp_path_factory.mktemp("mistral-tokenizer"))


@pytest.fixture
def etcd_server(tmp_path: Path):
    from servers import EtcdServer

    server = EtcdServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_server(tmp_path: Path):
    from servers import NatsServer

    server = NatsServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
