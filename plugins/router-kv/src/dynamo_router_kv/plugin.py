"""Hook implementations of dynamo-router-kv: the `kv` router and its command-line options."""

from __future__ import annotations

import os

from dynamo_core import hookimpl
from dynamo_core.hookspecs import OptionGroup
from dynamo_core.routers.base import Router, RouterContext, RouterSpec

from dynamo_router_kv.config import DEFAULT_OVERLAP_WEIGHT, DEFAULT_TEMPERATURE, DEFAULT_TTL_S


def create(context: RouterContext) -> Router:
    """Build a `kv` router for one model."""
    # Imported here so that listing plugins or parsing flags does not load xxhash and
    # register the router's Prometheus metrics in processes that never route with it.
    from dynamo_router_kv.router import KvRouter

    return KvRouter(context)


@hookimpl
def dynamo_routers() -> list[RouterSpec]:
    description = "KV-cache-aware: the worker holding most of the prompt's prefix, weighed against load"
    return [RouterSpec("kv", create, description)]


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@hookimpl
def dynamo_router_options(router: str, group: OptionGroup) -> None:
    if router != "kv":
        return
    group.add_argument(
        "--kv-overlap-weight", type=float, default=_env_float("DYN_KV_OVERLAP_WEIGHT", DEFAULT_OVERLAP_WEIGHT),
        help="cost of one prompt block to prefill, relative to one active decode block "
             "(env DYN_KV_OVERLAP_WEIGHT; default: %(default)s)",
    )
    group.add_argument(
        "--router-temperature", type=float, default=_env_float("DYN_ROUTER_TEMPERATURE", DEFAULT_TEMPERATURE),
        help="0: the lowest cost wins; > 0: sample from softmax(-cost / (max cost × T)) "
             "(env DYN_ROUTER_TEMPERATURE; default: %(default)s)",
    )
    group.add_argument(
        "--no-kv-events", action="store_true", default=os.environ.get("DYN_NO_KV_EVENTS", "") not in ("", "0"),
        help="approximate mode: no KV event subscription; a prefix routed to a worker is assumed "
             "cached there for --router-ttl seconds (env DYN_NO_KV_EVENTS=1)",
    )
    group.add_argument(
        "--router-ttl", type=float, default=_env_float("DYN_ROUTER_TTL", DEFAULT_TTL_S),
        help="approximate mode: seconds a routed prefix is assumed cached (env DYN_ROUTER_TTL; default: %(default)s)",
    )
