"""`cancel_and_wait`: stops every background task, logs failures, never hides the caller's cancel."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dynamo_core.runtime.tasks import cancel_and_wait


async def _slow_to_stop(stopped: asyncio.Event) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(0.2)  # cleanup that takes a while (a last publish, a lease revoke)
        stopped.set()
        raise


async def test_the_callers_own_cancellation_propagates():
    stopped = asyncio.Event()
    background = asyncio.create_task(_slow_to_stop(stopped))
    await asyncio.sleep(0)
    closing = asyncio.create_task(cancel_and_wait([background]))
    await asyncio.sleep(0.05)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert closing.cancelled()
    assert background.cancelling() or background.done()


async def test_a_failed_task_is_logged_and_the_others_are_still_waited_for(caplog):
    async def fails() -> None:
        raise RuntimeError("broken heartbeat")

    stopped = asyncio.Event()
    failing = asyncio.create_task(fails(), name="heartbeat")
    slow = asyncio.create_task(_slow_to_stop(stopped))
    await asyncio.sleep(0.01)  # `failing` has failed by now
    with caplog.at_level(logging.ERROR, logger="dynamo_core.runtime.tasks"):
        await cancel_and_wait([failing, slow])
    assert stopped.is_set() and slow.done()
    assert "background task heartbeat failed" in caplog.text
    assert "broken heartbeat" in caplog.text


async def test_cancelled_tasks_end_quietly(caplog):
    stopped = asyncio.Event()
    tasks = [asyncio.create_task(_slow_to_stop(stopped)) for _ in range(3)]
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR):
        await cancel_and_wait(tasks)
    assert all(t.cancelled() for t in tasks)
    assert not caplog.records
