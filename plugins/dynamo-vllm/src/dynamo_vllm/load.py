"""A worker's load, from vLLM's scheduler statistics and the requests in flight.

vLLM's engine core sends `SchedulerStats` (running and waiting requests, KV cache usage) with
each step's outputs; a stat logger hands them to `SchedulerLoad.record`. They describe the last
step, so they trail the requests this worker has just accepted or finished: the in-flight count
caps them (a finished request is no longer running) and fills them (an accepted request not yet
scheduled is waiting).
"""

from __future__ import annotations

from typing import Protocol

from dynamo_core.protocols.kv_events import LoadMetrics


class _SchedulerStats(Protocol):
    num_running_reqs: int
    num_waiting_reqs: int
    kv_cache_usage: float


class SchedulerLoad:
    def __init__(self, total_kv_blocks: int = 0) -> None:
        self.total_kv_blocks = total_kv_blocks
        self.in_flight = 0
        self._running = 0
        self._kv_usage = 0.0

    def record(self, stats: _SchedulerStats | None) -> None:
        if stats is None:
            return
        # Preempted requests go back to vLLM's waiting queue: "running" holds KV blocks now.
        self._running = stats.num_running_reqs
        self._kv_usage = stats.kv_cache_usage

    def metrics(self, worker_id: str) -> LoadMetrics:
        in_flight = self.in_flight
        running = min(self._running, in_flight)
        active = round(self._kv_usage * self.total_kv_blocks) if in_flight else 0
        return LoadMetrics(
            worker_id=worker_id,
            running_requests=running,
            waiting_requests=in_flight - running,
            active_kv_blocks=min(active, self.total_kv_blocks),
            total_kv_blocks=self.total_kv_blocks,
        )
