"""A worker's load, from SGLang's load snapshots and the requests in flight.

SGLang's schedulers write a `LoadSnapshot` to shared memory (`managers/load_snapshot.py`):
running and waiting requests, used and total KV tokens. The tokenizer manager's reader gives
the latest one per data-parallel rank cheaply, so it is read on every `load_metrics` call. A
snapshot trails the requests this worker has just accepted or finished: the in-flight count
caps it (a finished request no longer runs) and fills it (an accepted request not yet
scheduled is waiting). KV tokens become pages of the engine's page size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from dynamo_core.protocols.kv_events import LoadMetrics


class _LoadSnapshot(Protocol):
    num_running_reqs: int
    num_waiting_reqs: int
    num_used_tokens: int
    max_total_num_tokens: int


def load_metrics(
    worker_id: str, snapshots: Sequence[_LoadSnapshot], *, in_flight: int, page_size: int, total_pages: int
) -> LoadMetrics:
    running = min(sum(s.num_running_reqs for s in snapshots), in_flight)
    used_tokens = sum(s.num_used_tokens for s in snapshots) if in_flight else 0
    capacity = sum(s.max_total_num_tokens for s in snapshots) // page_size if snapshots else 0
    total = capacity or total_pages
    active = -(-used_tokens // page_size)  # a partly filled page is held
    return LoadMetrics(
        worker_id=worker_id,
        running_requests=running,
        waiting_requests=in_flight - running,
        active_kv_blocks=min(active, total),
        total_kv_blocks=total,
    )
