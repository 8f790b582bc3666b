"""`dynamo serve` restarts a worker that died, and gives up on one that dies at start-up."""

from __future__ import annotations

import os
import signal
import time

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
    assert "was killed by SIGKILL; restarting it in 0.5 s (restart 1)" in serve.output()
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


def _worker_children(parent: int) -> list[int]:
    """Pids of `dynamo worker` processes whose parent is `parent` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # it ended while we looked
        if ppid == parent and b"worker" in argv:
            found.append(int(entry))
    return found


def test_serve_backs_off_and_gives_up_on_a_worker_killed_by_a_signal_at_each_start(cluster):
    # Whatever kills the worker as it starts (here this test, elsewhere the OOM killer while the
    # model loads), each restart would be killed again: serve backs off and gives up.
    serve = cluster.start("serve", "--workers", "1", "--http-port", str(free_port()))
    killed: set[int] = set()
    deadline = time.monotonic() + 60
    while serve.proc.poll() is None and time.monotonic() < deadline:
        for pid in _worker_children(serve.pid):
            if pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.02)
    output = serve.output()
    assert serve.proc.wait(10) == 1, output[-3000:]
    assert len(killed) == 3, output[-3000:]
    assert "was killed by SIGKILL; restarting it in 0.5 s (restart 1)" in output
    assert "was killed by SIGKILL; restarting it in 1.0 s (restart 2)" in output
    assert "worker-0 was killed by SIGKILL within 15 s of its start 3 times in a row; giving up on it" in output
    assert "no worker is left; stopping" in output
