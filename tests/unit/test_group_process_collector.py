"""`GroupProcessCollector` sums the CPU and memory of the live HTTP processes of one
`--http-workers N` frontend, read from /proc for real child processes: one that registered
itself counts; a dead child's pid, now another process's, does not."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from dynamo_core.frontend.http_processes import GroupProcessCollector, _stat_fields

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc (Linux)")

_REGISTER_AND_WAIT = ("from dynamo_core.frontend.http_processes import register_http_process; "
                      "register_http_process(); import time; time.sleep(60)")


def _collected(directory: str) -> dict[str, float]:
    return {family.name: family.samples[0].value for family in GroupProcessCollector(directory).collect()}


def _registered(directory: str, pid: int) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(f"http_process_{pid}_")]


def test_a_registered_live_process_is_counted_and_a_reused_pid_of_a_dead_one_is_not(tmp_path):
    directory = str(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", _REGISTER_AND_WAIT],
                             env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory})
    other = subprocess.Popen(["sleep", "60"])  # not an HTTP process: holds a pid "reused" below
    try:
        deadline = time.monotonic() + 30
        while not _registered(directory, child.pid):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
        rss = int(_stat_fields(child.pid)[21]) * os.sysconf("SC_PAGE_SIZE")
        counted = _collected(directory)
        assert counted["process_resident_memory_bytes"] >= rss * 0.5 > 0

        # A dead child's files, whose pid `other` holds now: it started after the child did
        # (a different start time), so it is not the child and is not counted.
        os.remove(os.path.join(directory, _registered(directory, child.pid)[0]))
        child.kill()
        child.wait()
        started = int(_stat_fields(other.pid)[19])
        open(os.path.join(directory, f"http_process_{other.pid}_{started - 1}"), "w").close()
        open(os.path.join(directory, f"counter_{other.pid}.db"), "wb").close()  # its metrics stay
        assert _collected(directory) == {"process_cpu_seconds": 0.0, "process_resident_memory_bytes": 0.0}
        # The same pid with its own start time is a live registered process again.
        open(os.path.join(directory, f"http_process_{other.pid}_{started}"), "w").close()
        assert _collected(directory)["process_resident_memory_bytes"] > 0
    finally:
        for proc in (child, other):
            proc.kill()
            proc.wait()
