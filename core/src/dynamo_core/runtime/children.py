"""Child processes: they never outlive their parent, and a group of them is supervised as one.

`ChildGroup` is what `dynamo serve` (a frontend and its workers) and `dynamo frontend
--http-workers N` (N HTTP processes) share: start children by name, restart one that exits
after the backoff of its `RestartPolicy` (logging why), give up on one that keeps dying at
start-up, and stop them all (SIGTERM, then SIGKILL past a timeout). What an exit means for the
whole command (keep serving, or end with which code) is the owner's: its `on_exit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from dynamo_core.runtime.restart_policy import RestartPolicy, describe_exit
from dynamo_core.runtime.tasks import cancel_and_wait

STOP_TIMEOUT_S = 15.0

Spawn = Callable[[], Awaitable[asyncio.subprocess.Process]]


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent thread ends, even by SIGKILL, so none
    is orphaned. Call it in the child (a `preexec_fn`, a pool initializer); elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class ChildExit:
    """One child's exit as the group's owner hears of it."""

    name: str
    pid: int
    returncode: int  # as asyncio gives it (negative: killed by that signal)
    restarting: bool  # False: not restartable, or its policy gave up on it (logged)


class ChildGroup:
    """Child processes by name, each restarted as its `RestartPolicy` says, stopped together.

    Invariant: `procs[name]` is the process last started for `name`, and while `supervise`
    runs each child is either watched or waiting for its restart, never both.
    """

    def __init__(self, log: logging.Logger, giving_up: str, stop_timeout_s: float = STOP_TIMEOUT_S):
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.policies: dict[str, RestartPolicy] = {}
        self._spawns: dict[str, Spawn] = {}
        self._restartable: set[str] = set()
        self._log = log
        self._giving_up = giving_up  # what giving up on a child means, for its log line
        self._stop_timeout_s = stop_timeout_s

    async def start(self, name: str, spawn: Spawn, restart: bool = True) -> asyncio.subprocess.Process:
        """Start `name` with `spawn` (kept: a restart calls it again). Its policy's clock starts
        here; a `spawn` may hold it (`started_at = math.inf`) until the child says it is up."""
        self._spawns[name] = spawn
        if restart:
            self._restartable.add(name)
        self.policies.setdefault(name, RestartPolicy()).on_start()
        self.procs[name] = proc = await spawn()
        return proc

    async def supervise(self, stop: asyncio.Event, on_exit: Callable[[ChildExit], int | None]) -> int:
        """Watch the children until `stop` is set (0) or `on_exit` returns the command's exit
        code. A restartable child that exits is restarted after its policy's delay, or given up
        on; either is logged before `on_exit` hears of it. A restart that cannot spawn raises."""
        watchers = {asyncio.create_task(p.wait(), name=n): n for n, p in self.procs.items()}
        restarts: dict[asyncio.Task, str] = {}
        stop_task = asyncio.create_task(stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait({*watchers, *restarts, stop_task}, return_when=asyncio.FIRST_COMPLETED)
                if stop_task in done or stop.is_set():
                    return 0  # (children that exit as they are told to stop are not restarted)
                for task in done:
                    if task in restarts:
                        name = restarts.pop(task)
                        task.result()  # a spawn that failed raises here
                        watchers[asyncio.create_task(self.procs[name].wait(), name=name)] = name
                        continue
                    name = watchers.pop(task)
                    code, pid = task.result(), self.procs[name].pid
                    delay = self._after_exit(name, code)
                    if delay is not None:
                        restarts[asyncio.create_task(self._restart(name, delay), name=f"restart-{name}")] = name
                    exit_code = on_exit(ChildExit(name, pid, code, delay is not None))
                    if exit_code is not None:
                        return exit_code
        finally:
            await cancel_and_wait([*watchers, *restarts, stop_task])

    def _after_exit(self, name: str, code: int) -> float | None:
        """The delay before `name` starts again, logged; None when it does not."""
        if name not in self._restartable:
            return None
        policy = self.policies[name]
        delay = policy.on_exit(code)
        if delay is None:
            self._log.error("%s %s within %.0f s of its start %d times in a row; %s (its log above says why)", name,
                            describe_exit(code), policy.startup_window_s, policy.quick_deaths, self._giving_up)
        else:
            self._log.warning("%s (pid %d) %s; restarting it in %.1f s (restart %d); the others keep serving", name,
                              self.procs[name].pid, describe_exit(code), delay, policy.restarts)
        return delay

    async def _restart(self, name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.start(name, self._spawns[name])
        self._log.info("%s restarted (pid %d)", name, self.procs[name].pid)

    async def stop_all(self, order: Iterable[str] | None = None) -> None:
        """SIGTERM to each child still running (in `order`, else as started), then wait for each;
        one that outlasts the stop timeout is killed."""
        names = list(order) if order is not None else list(self.procs)
        for name in names:
            proc = self.procs[name]
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for name in names:
            proc = self.procs[name]
            try:
                await asyncio.wait_for(proc.wait(), self._stop_timeout_s)
            except asyncio.TimeoutError:
                self._log.warning("%s did not stop in %.0f s; killing it", name, self._stop_timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
