"""What a new user meets first on the command line: honest start-up messages, flags that do
what they say, help that names the env vars and backends, pipes that close early (run as real
subprocesses)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from conftest import http_get, wait_until

DYNAMO = [sys.executable, "-m", "dynamo_core.cli.main"]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(DYNAMO + list(args), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flag", [["--namespace", "x"], ["--lease-ttl", "5"], ["--preprocess-workers", "2"],
                                  ["--preprocess-min-chars", "9"]])
def test_check_refuses_flags_it_does_not_read(flag):
    result = _run("check", "--http-port", "0", *flag)
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr and flag[0] in result.stderr


def test_serve_help_names_dyn_workers_and_the_builtin_etcd():
    text = " ".join(_run("serve", "--help").stdout.split())
    assert "env DYN_WORKERS" in text
    assert "etcd (many hosts" in text


def test_plugins_json_into_a_closed_pipe_ends_without_a_traceback():
    read, write = os.pipe()
    os.close(read)  # the reader (`| head`) is already gone
    try:
        result = subprocess.run(DYNAMO + ["plugins", "--json"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode == 141


def test_check_says_what_failed_with_nats_and_how_to_fix_it():
    # A listener that never speaks NATS: the client times out (it said only "TimeoutError").
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True)
    accepting.start()
    try:
        url = f"nats://127.0.0.1:{silent.getsockname()[1]}"
        result = _run("check", "--http-port", "0", "--request-plane", "nats", "--nats-url", url)
    finally:
        silent.close()
    line = next(line for line in result.stdout.splitlines() if "nats" in line and "FAIL" in line)
    assert result.returncode == 1
    assert url in line and "nats-server" in line and "--nats-url" in line, line
    assert not line.rstrip().endswith("TimeoutError"), line


def test_serve_on_a_taken_port_exits_at_once_naming_it_without_claiming_to_serve():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    try:
        serve = _run("serve", "--engine", "echo", "--http-port", port, timeout=30)
        frontend = _run("frontend", "--http-port", port, timeout=30)
    finally:
        taken.close()
    for result in (serve, frontend):
        assert result.returncode != 0
        assert port in result.stderr and "--http-port" in result.stderr, result.stderr
        assert "listening" not in result.stdout + result.stderr and "serving" not in result.stdout, result


def test_health_says_when_the_last_worker_left(cluster):
    _, base = cluster.frontend()
    worker = cluster.start("worker", "--engine", "echo", "--lease-ttl", "1")
    cluster.wait_for_workers(base, 1)
    worker.stop()

    def left():
        status, body = http_get(f"{base}/health")
        return body if status == 503 else None

    body = wait_until(left, 30)
    assert "every worker has left" in body["message"] and "model 'echo'" in body["message"], body
    assert "no worker has registered" not in body["message"]
