"""`freeze_heap`: what exists is frozen out of the collector and young collections get rarer."""

from __future__ import annotations

import subprocess
import sys

from dynamo_core.runtime.gc_heap import GEN0_THRESHOLD

PROBE = """
import gc
from dynamo_core.runtime.gc_heap import freeze_heap
before = gc.get_freeze_count()
{setup}
frozen = freeze_heap("test")
print(before, frozen, *gc.get_threshold())
"""


def _probe(setup: str = "") -> list[int]:
    # A child process: freezing the test runner's own heap would outlive the test.
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True, check=True)
    return [int(word) for word in out.stdout.split()]


def test_the_heap_is_frozen_and_the_young_threshold_raised():
    before, frozen, gen0, gen1, gen2 = _probe()
    assert before == 0 and frozen > 1_000  # the interpreter and its imports at least
    assert gen0 == GEN0_THRESHOLD and (gen1, gen2) == (10, 10)


def test_a_collector_turned_off_stays_off():
    _, _, gen0, _, _ = _probe("gc.set_threshold(0)")
    assert gen0 == 0
