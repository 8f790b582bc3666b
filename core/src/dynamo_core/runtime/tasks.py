"""Stopping background tasks: every component that owns some stops them the same way."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel `tasks` and wait until every one has ended.

    A task that ends cancelled ends quietly; one that failed (before or while it stopped) is
    logged, not raised, so the others are still waited for and the caller's own shutdown goes
    on. The caller's own cancellation is not swallowed: it propagates from here (the tasks have
    been told to stop by then).
    """
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            log.error("background task %s failed", task.get_name(), exc_info=result)
