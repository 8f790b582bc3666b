"""KV transfer between processes: the contract (``base``), the ``tcp`` backend, and lookup by name.

Other backends (``nixl``) come from plugins through the ``dynamo_transfer_backends`` hook.
"""

from __future__ import annotations

from dynamo_core.transfer.base import (
    ReadPiece,
    RemoteRegion,
    TransferAgent,
    TransferConfig,
    TransferError,
    TransferSpec,
)

__all__ = [
    "ReadPiece",
    "RemoteRegion",
    "TransferAgent",
    "TransferConfig",
    "TransferError",
    "TransferSpec",
    "create_transfer_agent",
]


def create_transfer_agent(backend: str, config: TransferConfig | None = None) -> TransferAgent:
    """An agent of the installed backend ``backend`` (not started); PluginNotInstalledError if none."""
    from dynamo_core.plugins import get_registry

    spec: TransferSpec = get_registry().get("transfer", backend)
    return spec.create(config or TransferConfig())
