"""Hook implementations of dynamo-router-kv: the `kv` router and its options."""

from __future__ import annotations

import argparse

from dynamo_core.plugins import hookimpl
from dynamo_core.routers.base import RouterSpec


def _create(context):
    from dynamo_router_kv.router import KvRouter

    return KvRouter(context)


@hookimpl
def dynamo_routers() -> list[RouterSpec]:
    return [RouterSpec("kv", _create, "KV-cache-aware: most cached prefix, weighed against load")]


@hookimpl
def dynamo_router_options(router: str, group: argparse._ArgumentGroup) -> None:
    if router != "kv":
        return
    group.add_argument("--kv-overlap-weight", type=float, default=1.0,
                       help="weight of blocks to prefill against active decode blocks in the cost (default: %(default)s)")
    group.add_argument("--router-temperature", type=float, default=0.0,
                       help="0: always the lowest cost; > 0: sample from softmax of normalised costs (default: %(default)s)")
    group.add_argument("--no-kv-events", action="store_true",
                       help="approximate mode: ignore KV events, assume routed prefixes stay cached for --router-ttl")
    group.add_argument("--router-ttl", type=float, default=120.0,
                       help="approximate mode: seconds a routed prefix is assumed cached (default: %(default)s)")
