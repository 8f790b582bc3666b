"""Built-in KV-transfer backend `tcp`: plain TCP reads into registered host buffers."""

from __future__ import annotations

from dynamo_core import hookimpl
from dynamo_core.transfer.base import TransferAgent, TransferConfig, TransferSpec


def _create(config: TransferConfig) -> TransferAgent:
    from dynamo_core.transfer.tcp import TcpTransferAgent

    return TcpTransferAgent(config)


@hookimpl
def dynamo_transfer_backends() -> list[TransferSpec]:
    return [TransferSpec("tcp", _create, "plain TCP reads into registered host buffers (no NIXL needed)")]
