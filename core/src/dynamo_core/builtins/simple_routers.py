"""Built-in routers `round-robin`, `random`, `least-loaded` (``dynamo_core.routers.simple``)."""

from __future__ import annotations

from collections.abc import Callable

from dynamo_core import hookimpl
from dynamo_core.routers.base import Router, RouterContext, RouterSpec


def _factory(name: str) -> Callable[[RouterContext], Router]:
    def create(context: RouterContext) -> Router:
        from dynamo_core.routers import simple

        return simple.create(name, context)

    return create


@hookimpl
def dynamo_routers() -> list[RouterSpec]:
    return [
        RouterSpec("round-robin", _factory("round-robin"), "each worker in turn"),
        RouterSpec("random", _factory("random"), "a uniformly random worker"),
        RouterSpec("least-loaded", _factory("least-loaded"), "fewest in-flight requests, then fewest active KV blocks"),
    ]
