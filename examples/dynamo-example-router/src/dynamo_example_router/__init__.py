"""A complete, minimal dynamo plugin: the `shortest-backlog` router.

It sends each request to the worker with the fewest prompt tokens still waiting for their
first output token, counting only what this frontend sent. It shows the three things every
plugin has: a `dynamo` entry point (see pyproject.toml), hook implementations marked with
`dynamo_core.hookimpl`, and an implementation of a core contract (here `Router`).
"""

from __future__ import annotations

from collections.abc import Sequence

from dynamo_core import hookimpl
from dynamo_core.hookspecs import OptionGroup
from dynamo_core.protocols.engine import PreprocessedRequest
from dynamo_core.routers.base import Router, RouterContext, RouterSpec, WorkerState


class ShortestBacklogRouter(Router):
    def __init__(self, context: RouterContext):
        self._backlog: dict[str, int] = {}  # worker_id -> prompt tokens not yet prefilled
        self._pending: dict[str, tuple[str, int]] = {}  # request_id -> (worker_id, tokens)
        # Our own option, added by `dynamo_router_options` below.
        self._count_requests = getattr(context.options, "backlog_count_requests", False)

    def _cost(self, worker: WorkerState) -> tuple[int, int]:
        backlog = self._backlog.get(worker.worker_id, 0)
        return (worker.in_flight, backlog) if self._count_requests else (backlog, worker.in_flight)

    def select_worker(self, request: PreprocessedRequest, workers: Sequence[WorkerState]) -> str:
        chosen = min(workers, key=self._cost).worker_id
        tokens = len(request.token_ids)
        self._backlog[chosen] = self._backlog.get(chosen, 0) + tokens
        self._pending[request.request_id] = (chosen, tokens)
        return chosen

    def _settle(self, request_id: str) -> None:
        worker_id, tokens = self._pending.pop(request_id, (None, 0))
        if worker_id is not None:
            self._backlog[worker_id] = max(0, self._backlog.get(worker_id, 0) - tokens)

    def on_first_token(self, request_id: str, worker_id: str) -> None:
        self._settle(request_id)

    def on_request_finished(self, request_id: str, worker_id: str, output_tokens: int) -> None:
        self._settle(request_id)

    def on_worker_removed(self, worker_id: str) -> None:
        self._backlog.pop(worker_id, None)

    def debug_scores(self, request: PreprocessedRequest, workers: Sequence[WorkerState]) -> dict:
        return {w.worker_id: {"backlog_tokens": self._backlog.get(w.worker_id, 0), "in_flight": w.in_flight} for w in workers}


@hookimpl
def dynamo_routers() -> list[RouterSpec]:
    return [RouterSpec("shortest-backlog", ShortestBacklogRouter, "fewest prompt tokens awaiting prefill")]


@hookimpl
def dynamo_router_options(router: str, group: OptionGroup) -> None:
    if router == "shortest-backlog":
        group.add_argument(
            "--backlog-count-requests", action="store_true",
            help="compare in-flight requests first and prompt tokens second",
        )
