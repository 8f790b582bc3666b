"""A worker's load, from TensorRT-LLM's iteration statistics and the requests in flight.

`LLM.get_stats_async(timeout)` yields one dict per executor iteration (with
`enable_iter_perf_stats`), the C++ `IterationStats` as JSON: `numActiveRequests`,
`numQueuedRequests`, `maxNumActiveRequests`, and `kvCacheStats` with `usedNumBlocks`,
`maxNumBlocks`, `freeNumBlocks`, `tokensPerBlock`, ... An iteration's numbers trail the
requests this worker has just accepted or finished, so the in-flight count caps them (a
finished request is no longer active) and fills them (an accepted one not yet scheduled is
waiting). With nothing in flight no iteration runs and no stats come: the load is then zero
active blocks, although reused blocks may still sit in the cache (they are evictable).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynamo_core.protocols.kv_events import LoadMetrics


class IterationLoad:
    def __init__(self, total_kv_blocks: int = 0) -> None:
        self.total_kv_blocks = total_kv_blocks
        self.in_flight = 0
        self._active = 0
        self._used_blocks = 0

    def record(self, stats: Mapping[str, Any]) -> None:
        kv = stats.get("kvCacheStats") or {}
        if kv.get("maxNumBlocks"):
            self.total_kv_blocks = int(kv["maxNumBlocks"])
        if "usedNumBlocks" in kv:
            self._used_blocks = int(kv["usedNumBlocks"])
        if "numActiveRequests" in stats:
            self._active = int(stats["numActiveRequests"])

    def metrics(self, worker_id: str) -> LoadMetrics:
        in_flight = self.in_flight
        running = min(self._active, in_flight)
        used = min(self._used_blocks, self.total_kv_blocks) if in_flight else 0
        return LoadMetrics(
            worker_id=worker_id,
            running_requests=running,
            waiting_requests=in_flight - running,
            active_kv_blocks=used,
            total_kv_blocks=self.total_kv_blocks,
        )
