"""A plugin that implements every hook, for tests/unit/test_plugins.py (registered as a module)."""

from __future__ import annotations

from dynamo_core import hookimpl
from dynamo_core.engines.base import EngineSpec
from dynamo_core.hookspecs import OptionGroup
from dynamo_core.routers.base import RouterSpec
from dynamo_core.runtime.discovery import DiscoverySpec, MemDiscovery
from dynamo_core.transfer.base import TransferSpec


def _create_engine(context):
    from dynamo_core.engines.echo import EchoEngine

    return EchoEngine.from_context(context)


def _create_router(context):
    from dynamo_core.routers import simple

    return simple.create("round-robin", context)


def _create_transfer(config):
    from dynamo_core.transfer.tcp import TcpTransferAgent

    return TcpTransferAgent(config)


@hookimpl
def dynamo_engines():
    return [EngineSpec("sample-engine", _create_engine, "sample")]


@hookimpl
def dynamo_engine_options(engine: str, group: OptionGroup) -> None:
    if engine == "sample-engine":
        group.add_argument("--sample-engine-level", type=int, default=1)


@hookimpl
def dynamo_routers():
    return [RouterSpec("sample-router", _create_router, "sample")]


@hookimpl
def dynamo_router_options(router: str, group: OptionGroup) -> None:
    if router == "sample-router":
        group.add_argument("--sample-router-bias", type=float, default=0.0)


@hookimpl
def dynamo_discovery_backends():
    return [DiscoverySpec("sample-discovery", MemDiscovery, "sample")]


@hookimpl
def dynamo_transfer_backends():
    return [TransferSpec("sample-transfer", _create_transfer, "sample")]
