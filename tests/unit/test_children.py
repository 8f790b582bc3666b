"""`ChildGroup`: real child processes restarted with backoff, given up on, and stopped together."""

from __future__ import annotations

import asyncio
import logging
import sys

from dynamo_core.runtime.children import ChildExit, ChildGroup


def _python(code: str):
    async def spawn() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    return spawn


async def test_a_child_that_keeps_failing_at_start_is_restarted_then_given_up_on(caplog):
    caplog.set_level(logging.INFO)
    group = ChildGroup(logging.getLogger("test.children"), giving_up="giving up on it")
    heard: list[ChildExit] = []

    def on_exit(exit: ChildExit) -> int | None:
        heard.append(exit)
        return None if exit.restarting else 7

    await group.start("failing", _python("raise SystemExit(3)"))
    assert await asyncio.wait_for(group.supervise(asyncio.Event(), on_exit), 30) == 7
    assert [(e.name, e.returncode, e.restarting) for e in heard] == [("failing", 3, True)] * 2 + [("failing", 3, False)]
    assert "failing (pid %d) exited with code 3; restarting it in 0.5 s (restart 1)" % heard[0].pid in caplog.text
    assert "restarting it in 1.0 s (restart 2)" in caplog.text and "failing restarted (pid" in caplog.text
    assert "failing exited with code 3 within 15 s of its start 3 times in a row; giving up on it" in caplog.text


async def test_stop_ends_supervision_and_stop_all_ends_every_child():
    group = ChildGroup(logging.getLogger("test.children"), giving_up="giving up on it", stop_timeout_s=5)
    for name in ("a", "b"):
        await group.start(name, _python("import time; time.sleep(60)"))
    stop = asyncio.Event()
    supervising = asyncio.ensure_future(group.supervise(stop, lambda exit: 1))
    await asyncio.sleep(0.1)
    stop.set()
    assert await supervising == 0
    await group.stop_all(["b", "a"])
    assert all(proc.returncode is not None for proc in group.procs.values())
