"""Every hook a dynamo plugin can implement. Each docstring is that hook's contract.

Plugins are distributions with an entry point in the ``dynamo`` group, e.g.::

    [project.entry-points.dynamo]
    my_router = "my_package.plugin"

The module named there defines functions decorated with ``dynamo_core.hookimpl``. The core's
own engines, routers and discovery backends register through exactly these hooks
(the modules of ``dynamo_core.builtins.DEFAULT_PLUGINS``); nothing built in takes a side door.
"""

from __future__ import annotations

import argparse
from typing import Any, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("dynamo")
# Plugin authors decorate their implementations with this (also importable as `dynamo_core.hookimpl`).
hookimpl = pluggy.HookimplMarker("dynamo")


class OptionGroup(Protocol):
    """Where an options hook adds its flags: an ``argparse`` argument group (what
    ``ArgumentParser.add_argument_group`` returns), named here by the one method hooks call."""

    def add_argument(self, *name_or_flags: str, **kwargs: Any) -> argparse.Action: ...

# ---------------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------------


@hookspec
def dynamo_engines() -> list["dynamo_core.engines.base.EngineSpec"]:  # noqa: F821
    """Return the inference engines this package provides.

    Called once when the plugin manager loads. Each ``EngineSpec`` names the engine (the value
    of ``--engine``) and a factory ``create(context: EngineContext) -> Engine``. Names must be
    unique across installed plugins; a duplicate is an error at start-up.
    """


@hookspec
def dynamo_engine_options(engine: str, group: OptionGroup) -> None:
    """Add command-line options for ``engine`` to ``group``, if this package provides it.

    Called by ``dynamo worker`` and ``dynamo serve`` after ``--engine`` is known, so that
    ``dynamo serve --engine NAME --help`` lists the engine's own options. Ignore engines that
    are not yours. Option values reach the engine factory as ``EngineContext.options``;
    ``dynamo serve`` passes every option it does not know itself through to its workers.
    """


# ---------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------


@hookspec
def dynamo_routers() -> list["dynamo_core.routers.base.RouterSpec"]:  # noqa: F821
    """Return the routing policies this package provides.

    Each ``RouterSpec`` names the policy (the value of ``--router``) and a factory
    ``create(context: RouterContext) -> Router``. The frontend creates one router per served
    model and feeds it worker changes, KV events and load metrics.
    """


@hookspec
def dynamo_router_options(router: str, group: OptionGroup) -> None:
    """Add command-line options for ``router`` to ``group``, if this package provides it.

    Same contract as ``dynamo_engine_options``; values reach the factory as
    ``RouterContext.options``.
    """


# ---------------------------------------------------------------------------------------------
# Runtime backends
# ---------------------------------------------------------------------------------------------


@hookspec
def dynamo_discovery_backends() -> list["dynamo_core.runtime.discovery.DiscoverySpec"]:  # noqa: F821
    """Return the discovery backends this package provides (the values of ``--discovery``).

    Each ``DiscoverySpec`` has a name and a factory ``create(config: DiscoveryConfig) ->
    DiscoveryBackend``. A backend stores records under keys with leases that lapse when the
    owning process stops renewing them, and lets watchers see puts and deletes.
    """


@hookspec
def dynamo_transfer_backends() -> list["dynamo_core.transfer.TransferSpec"]:  # noqa: F821
    """Return the KV-transfer backends this package provides (`tcp` in core, `nixl` in dynamo-nixl).

    Disaggregated serving moves KV blocks from a prefill worker to a decode worker with them
    (`--transfer`; the mocker's prefill/decode roles, `benchmarks/transfer_bench.py`).
    Each ``TransferSpec`` has a name and a factory ``create(config: TransferConfig) ->
    TransferAgent``. An agent registers local buffers, describes them as ``RemoteRegion``s
    (msgspec, sent to peers in request-plane messages) and reads peers' regions into its own;
    every failure raises ``TransferError``. The contract is in ``dynamo_core.transfer.base``.
    """
