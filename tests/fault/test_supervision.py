"""`dynamo serve` restarts a worker that died, gives up on one that dies at start-up (by an error
or a signal), and stops every child whatever ends it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
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
    return _children(parent, b"worker")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(parent: int, role: bytes) -> list[int]:
    """Pids of `dynamo <role>` processes whose parent is `parent` (read from /proc)."""
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
        if ppid == parent and role in argv:
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


# `dynamo serve` whose spawns fail once the first three (frontend, two workers) are up: a
# restart then raises in the supervisor itself (as a fork refused for want of memory would).
FAILING_RESTART = """
import sys
from dynamo_core.cli import main, serve
spawned = []
real = serve.dynamo_command
def command():
    spawned.append(1)
    return real() if len(spawned) <= 3 else ["/nonexistent/dynamo"]
serve.dynamo_command = command
sys.exit(main.main(sys.argv[1:]))
"""


def test_serve_stops_every_child_when_the_supervisor_itself_fails(cluster):
    port = free_port()
    log = cluster.tmp_path / "failing-serve.log"
    with open(log, "wb") as out:  # a file, not a pipe: the children hold a pipe open until they end
        serve = subprocess.Popen([sys.executable, "-c", FAILING_RESTART, "serve", "--workers", "2", "--http-port",
                                  str(port)], env=cluster.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        instances = cluster.wait_for_workers(f"http://127.0.0.1:{port}", 2)
        children = _children(serve.pid, b"frontend") + _children(serve.pid, b"worker")
        assert len(children) == 3
        os.kill(instances[0]["pid"], signal.SIGKILL)
        serve.wait(60)
        running = [pid for pid in children if _alive(pid)]
        output = log.read_text(errors="replace")
        # Stopped by serve before it exits (the surviving worker drains and leaves discovery),
        # not left running past its exit for the parent-death signal to reach later.
        assert serve.returncode == 1, output[-3000:]
        assert not running, output[-3000:]
        assert "dynamo serve failed; stopping every process it started" in output
        assert "FileNotFoundError" in output
        assert re.search(r"worker\[\d+\] \S+: worker \S+ stopping", output), output[-3000:]
        assert output.rstrip().endswith("stopped"), output[-3000:]
    finally:
        if serve.poll() is None:
            serve.kill()


def test_serve_reads_the_api_key_file_once_so_a_worker_restart_does_not_need_it(cluster, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("sk-once\n")
    serve, base = cluster.serve("--api-key-file", str(keys), workers=1)
    victim = http_get(f"{base}/health")[1]["instances"][0]
    keys.unlink()  # rotated away after start: only the frontend ever needed it, at its start
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced():
        now = http_get(f"{base}/health")[1]["instances"]
        return len(now) == 1 and now[0]["pid"] != victim["pid"]
    wait_until(replaced, 30, serve)
    assert "Traceback" not in serve.output()
