"""The built-in routing policies: round-robin, random and least-loaded."""

from __future__ import annotations

import random
from collections.abc import Sequence

from dynamo_core.protocols.engine import PreprocessedRequest
from dynamo_core.routers.base import Router, RouterContext, WorkerState


class RoundRobinRouter(Router):
    def __init__(self) -> None:
        self._next = 0

    def select_worker(self, request: PreprocessedRequest, workers: Sequence[WorkerState]) -> str:
        worker = workers[self._next % len(workers)]
        self._next += 1
        return worker.worker_id


class RandomRouter(Router):
    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def select_worker(self, request: PreprocessedRequest, workers: Sequence[WorkerState]) -> str:
        return self._random.choice(workers).worker_id


class LeastLoadedRouter(Router):
    """Fewest requests in flight from this frontend, then fewest active KV blocks reported by
    the worker (which also counts other frontends' requests), then at random."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    @staticmethod
    def _load(worker: WorkerState) -> tuple[int, int]:
        reported = worker.load
        running = max(worker.in_flight, reported.running_requests + reported.waiting_requests) if reported else worker.in_flight
        active_blocks = reported.active_kv_blocks if reported else 0
        return running, active_blocks

    def select_worker(self, request: PreprocessedRequest, workers: Sequence[WorkerState]) -> str:
        best = min(self._load(w) for w in workers)
        return self._random.choice([w for w in workers if self._load(w) == best]).worker_id

    def debug_scores(self, request: PreprocessedRequest, workers: Sequence[WorkerState]) -> dict:
        return {w.worker_id: {"requests": self._load(w)[0], "active_kv_blocks": self._load(w)[1]} for w in workers}


def create(name: str, context: RouterContext) -> Router:
    seed = getattr(context.options, "router_seed", None)
    if name == "round-robin":
        return RoundRobinRouter()
    if name == "random":
        return RandomRouter(seed)
    if name == "least-loaded":
        return LeastLoadedRouter(seed)
    raise ValueError(f"unknown built-in router {name!r}")
