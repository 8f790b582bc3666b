"""Keeping Python's cyclic garbage collector off the serving path.

A serving process allocates its long-lived objects at start-up (imported modules, the
tokenizer, the web framework's routes, an engine's whole stack) and then churns through
short-lived ones per token. CPython's oldest-generation collection walks every tracked object
each time, so in a frontend or worker it scans the start-up heap again and again, holding the
event loop (and every stream on it) for tens of milliseconds. Freezing moves what exists into
the permanent generation, which collections skip; reference counting still frees those
objects when they go. vLLM's own server does the same after its start-up.

The youngest generation's threshold is raised as well: at CPython's default (700 net new
container objects) a burst of tokens for a few dozen streams triggers a collection every few
milliseconds, each walking every young token list and message. Most of those objects die by
reference counting anyway, so a higher threshold collects rarely, and cyclic garbage is still
bounded (a collection runs after that many net new objects).
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

GEN0_THRESHOLD = 10_000


def freeze_heap(reason: str) -> int:
    """Collect what is garbage now, freeze the rest and raise the youngest generation's
    threshold; returns how many objects are frozen."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GEN0_THRESHOLD:  # a threshold of 0 is collection turned off: left so
        gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    frozen = gc.get_freeze_count()
    log.debug("froze %d objects for the garbage collector (%s) in %.1f ms",
              frozen, reason, (time.perf_counter() - started) * 1e3)
    return frozen
