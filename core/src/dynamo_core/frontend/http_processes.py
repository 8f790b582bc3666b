"""`dynamo frontend --http-workers N`: N full frontend processes serving one port.

One Python process is one event loop: past a few hundred requests a second its loop, not the
workers, is the gateway's limit. So the command becomes a supervisor of N `dynamo frontend`
children, each binding the same port with ``SO_REUSEPORT`` (the kernel spreads new
connections among them). Each child is a whole frontend: its own loop, tokenizer, prompt
pool, routers and KV-event subscriptions. They route as one through the routing peers
(`runtime/peer_plane.py`): without NATS, loopback UDP to the addresses they register in
discovery (`runtime/peer_transports.py`), so each knows what the others have in flight on
every worker.

What the supervisor keeps:
- Readiness: each child writes a line to an inherited pipe once its server listens; the
  supervisor logs each, and "all N ready" once they all are.
- Supervision (`runtime/children.py`'s `ChildGroup`, as `dynamo serve`'s): a child that exits
  is restarted with the backoff of `RestartPolicy` (the others keep serving); one that keeps
  failing at start-up (exits with an error before it listens, or within the policy's window
  after) makes the whole command exit non-zero. SIGINT/SIGTERM stops every child.
- Metrics: prometheus_client's multiprocess mode, over a directory of this supervisor's
  (``PROMETHEUS_MULTIPROC_DIR``), so `/metrics` from any child reports the sum over all of them
  (counters and histograms summed, the in-flight gauge summed over live processes). That mode
  has no process metrics; `GroupProcessCollector` adds ``process_cpu_seconds_total`` and
  ``process_resident_memory_bytes`` summed over the live children (each names its pid and
  start time in the directory, so a dead child's pid reused by another process is not counted).
- The prompt pool: unless ``--preprocess-workers`` is given, the host's default is divided
  among the children, so N of them do not start N times as many tokenizer processes as CPUs
  (`cli/frontend_processes.py` builds the children's command line).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import re
import shutil
import signal
import tempfile

from dynamo_core.runtime.children import ChildExit, ChildGroup, die_with_parent

log = logging.getLogger("dynamo_core.frontend.http_processes")
# Set in each child: its index among the N, and the pipe it reports readiness on.
PROCESS_INDEX_ENV = "DYN_HTTP_PROCESS_INDEX"
READY_FD_ENV = "DYN_HTTP_READY_FD"


# One file per HTTP process in the metrics directory, named by its pid and its start time
# (field 22 of /proc/PID/stat, in clock ticks since boot): a pid alone may be a dead child's,
# reused since by another process.
_PROCESS_FILE = re.compile(r"^http_process_(\d+)_(\d+)$")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _stat_fields(pid: int | str) -> list[bytes]:
    """/proc/PID/stat from field 3 (state) on: the command name, which may hold spaces, is cut off."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()


def register_http_process() -> None:
    """In a child, at start: name this process in the metrics directory (when its supervisor
    gave one), so that `GroupProcessCollector` counts it, and not whatever later takes its pid."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    with contextlib.suppress(OSError):  # no /proc (not Linux): the group reports no CPU
        start = int(_stat_fields("self")[19])
        open(os.path.join(directory, f"http_process_{os.getpid()}_{start}"), "w").close()


class GroupProcessCollector:
    """CPU and memory of the live HTTP processes registered in ``directory``
    (`register_http_process`): a dead one's CPU leaves the sum with it, and a process that
    reuses its pid, started later, is not counted in its place."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cpu = rss = 0.0
        for name in os.listdir(self._directory):
            if (m := _PROCESS_FILE.match(name)) is None:
                continue
            try:
                fields = _stat_fields(int(m.group(1)))
            except OSError:
                continue  # exited
            if int(fields[19]) != int(m.group(2)):
                continue  # exited, and its pid is another process's now
            cpu += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
            rss += int(fields[21]) * _PAGE
        yield CounterMetricFamily("process_cpu_seconds", "CPU seconds of the live HTTP processes, summed", value=cpu)
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory of the live HTTP processes, summed",
                                value=rss)


_ready_fd: int | None = None


def claim_ready_pipe() -> None:
    """In a child, first thing: take the readiness pipe out of the environment and keep it
    from the processes this one starts (the prompt pool), so that only we write or hold it."""
    global _ready_fd
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is not None:
        _ready_fd = int(fd)
        with contextlib.suppress(OSError):
            os.set_inheritable(_ready_fd, False)


def signal_ready() -> None:
    """In a child: tell the supervisor that this process listens (no-op when alone)."""
    global _ready_fd
    if _ready_fd is None:
        return
    fd, _ready_fd = _ready_fd, None
    with contextlib.suppress(OSError):
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)


async def _read_ready(fd: int) -> bool:
    """True once the child wrote its line; False at EOF (it died first)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        if not done.done():
            try:
                done.set_result(os.read(fd, 64))
            except OSError:
                done.set_result(b"")

    loop.add_reader(fd, readable)
    try:
        return bool(await done)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class HttpProcessGroup:
    """Start, watch and stop the N HTTP processes of one `dynamo frontend` (a `ChildGroup`)."""

    def __init__(self, command: list[str], argv: list[str], processes: int, env: dict[str, str]):
        self._command = command  # how to start `dynamo` again
        self._argv = argv
        self._count = processes
        self._env = env
        self._children = ChildGroup(log, giving_up="stopping the frontend")
        self._ready: set[str] = set()
        self._announcers: set[asyncio.Task] = set()
        self._metrics_dir = ""

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        read_fd, write_fd = os.pipe()
        env = {**self._env, PROCESS_INDEX_ENV: str(index), READY_FD_ENV: str(write_fd),
               "PROMETHEUS_MULTIPROC_DIR": self._metrics_dir}
        try:
            proc = await asyncio.create_subprocess_exec(*self._command, *self._argv, env=env, pass_fds=(write_fd,),
                                                        preexec_fn=die_with_parent)
        finally:
            os.close(write_fd)
        # Until it listens a child is still starting, however long its imports take on a busy
        # host: an error exit before then is a start-up failure (`_announce` starts the clock).
        self._children.policies[_name(index)].started_at = math.inf
        self._announcers.add(asyncio.create_task(self._announce(index, proc.pid, read_fd), name=f"http-{index}-ready"))
        return proc

    async def _announce(self, index: int, pid: int, read_fd: int) -> None:
        if not await _read_ready(read_fd):
            return
        name = _name(index)
        self._ready.add(name)
        self._children.policies[name].on_start()
        log.info("%s/%d ready (pid %d)", name, self._count, pid)
        if len(self._ready) == self._count:
            log.info("all %d HTTP processes ready", self._count)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        self._metrics_dir = tempfile.mkdtemp(prefix="dynamo-frontend-metrics-")
        try:
            for index in range(self._count):
                await self._children.start(_name(index), functools.partial(self._spawn, index))
            return await self._children.supervise(stop, self._on_exit)
        finally:
            await self._children.stop_all()
            for task in self._announcers:
                task.cancel()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _on_exit(self, exit: ChildExit) -> int | None:
        """Another keeps serving while one restarts; one given up on ends the frontend."""
        from prometheus_client import multiprocess

        self._ready.discard(exit.name)
        multiprocess.mark_process_dead(exit.pid, self._metrics_dir)  # its live gauges stop counting
        self._announcers = {task for task in self._announcers if not task.done()}
        if exit.restarting:
            return None
        return exit.returncode if exit.returncode > 0 else 1  # a signal death is a failure too, not a negative status


def _name(index: int) -> str:
    return f"HTTP process {index + 1}"
