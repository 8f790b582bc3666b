"""The core's own implementations, registered through the same hooks as any plugin."""

from __future__ import annotations

import argparse

from dynamo_core.engines.base import Engine, EngineContext, EngineSpec
from dynamo_core import hookimpl
from dynamo_core.routers.base import Router, RouterContext, RouterSpec
from dynamo_core.runtime.discovery import DiscoverySpec
from dynamo_core.transfer.base import TransferAgent, TransferConfig, TransferSpec


def _create_mocker(context: EngineContext) -> Engine:
    from dynamo_core.engines.mocker.engine import MockerEngine

    return MockerEngine.from_context(context)


def _create_echo(context: EngineContext) -> Engine:
    from dynamo_core.engines.echo import EchoEngine

    return EchoEngine.from_context(context)


@hookimpl
def dynamo_engines() -> list[EngineSpec]:
    return [
        EngineSpec("mocker", _create_mocker, "simulated engine: real scheduler, paged KV cache, timing model"),
        EngineSpec("echo", _create_echo, "streams back the tokens of the prompt's last message"),
    ]


@hookimpl
def dynamo_engine_options(engine: str, group: argparse._ArgumentGroup) -> None:
    if engine == "mocker":
        from dynamo_core.engines.mocker.options import add_mocker_options

        add_mocker_options(group)
    elif engine == "echo":
        from dynamo_core.engines.echo import add_echo_options

        add_echo_options(group)


def _router_factory(name: str):
    def create(context: RouterContext) -> Router:
        from dynamo_core.routers import simple

        return simple.create(name, context)

    return create


@hookimpl
def dynamo_routers() -> list[RouterSpec]:
    return [
        RouterSpec("round-robin", _router_factory("round-robin"), "each worker in turn"),
        RouterSpec("random", _router_factory("random"), "a uniformly random worker"),
        RouterSpec(
            "least-loaded",
            _router_factory("least-loaded"),
            "fewest in-flight requests, then fewest active KV blocks",
        ),
    ]


@hookimpl
def dynamo_discovery_backends() -> list[DiscoverySpec]:
    from dynamo_core.runtime.discovery import file_backend_spec, mem_backend_spec

    return [mem_backend_spec(), file_backend_spec(), DiscoverySpec("etcd", _create_etcd, "etcd v3 with leases (many hosts)")]


def _create_etcd(config):
    # Imported on use: the etcd client pulls in grpc, which single-host users never need.
    from dynamo_core.runtime.etcd_discovery import EtcdDiscovery

    return EtcdDiscovery(config)


def _create_tcp_transfer(config: TransferConfig) -> TransferAgent:
    from dynamo_core.transfer.tcp import TcpTransferAgent

    return TcpTransferAgent(config)


@hookimpl
def dynamo_transfer_backends() -> list[TransferSpec]:
    return [TransferSpec("tcp", _create_tcp_transfer, "plain TCP reads into registered host buffers (no NIXL needed)")]
