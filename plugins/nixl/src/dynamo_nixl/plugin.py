"""Hook implementations of dynamo-nixl: the `nixl` transfer backend."""

from __future__ import annotations

from dynamo_core import hookimpl
from dynamo_core.transfer import TransferAgent, TransferConfig, TransferSpec


def create(config: TransferConfig) -> TransferAgent:
    # Imported on use: listing plugins should not load NIXL's native libraries.
    from dynamo_nixl.agent import NixlTransferAgent

    return NixlTransferAgent(config)


@hookimpl
def dynamo_transfer_backends() -> list[TransferSpec]:
    return [TransferSpec("nixl", create, "NIXL over UCX: one-sided reads of host (DRAM) and GPU (VRAM) memory")]
