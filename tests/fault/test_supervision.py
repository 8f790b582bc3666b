"""`dynamo serve` restarts a worker that died, and gives up on one that dies at start-up."""

from __future__ import annotations

import os
import signal

import pytest

from conftest import free_port, http_get, wait_until

pytestmark = pytest.mark.timeout(120)


def test_serve_restarts_a_killed_worker_with_a_log_line(cluster):
    serve, base = cluster.serve("--speedup-ratio", "100", workers=2)
    instances = http_get(f"{base}/health")[1]["instances"]
    victim = instances[0]
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced():
        now = http_get(f"{base}/health")[1]["instances"]
        pids = {i["pid"] for i in now}
        return len(now) == 2 and victim["pid"] not in pids
    wait_until(replaced, 30, serve)
    assert "restarting it in 0.5 s (restart 1)" in serve.output()
    assert "restarted (pid" in serve.output()
    status, _ = http_get(f"{base}/health")
    assert status == 200


def test_serve_gives_up_on_a_worker_that_keeps_crashing_at_start_up(cluster):
    # The mocker refuses this flag when its engine starts, in the worker process.
    serve = cluster.start("serve", "--workers", "1", "--http-port", str(free_port()), "--speedup-ratio", "-1")
    code = serve.proc.wait(90)
    output = serve.output()
    assert code == 1, output[-3000:]
    assert output.count("MockerConfigError: --speedup-ratio must be positive") == 3, output[-3000:]
    assert "3 times in a row; giving up on it" in output
    assert "no worker is left; stopping" in output
