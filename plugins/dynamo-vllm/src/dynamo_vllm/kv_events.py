"""vLLM's KV cache events, decoded from its ZMQ publisher and translated into dynamo's.

vLLM's scheduler publishes `KVEventBatch`es (msgpack, `vllm/distributed/kv_events.py`): a batch
is an array `[ts, events, data_parallel_rank]`, each event a map tagged by its class name under
`type`. The structs below mirror that wire format with only the fields dynamo needs, so the
decoding runs (and is tested) without importing vLLM; unknown fields are ignored and unknown
event kinds skipped, so a newer vLLM's additions do not break a worker.

Translation: each `BlockStored` becomes a `KvStored` whose blocks carry their own tokens (the
router recomputes its hashes from them); `BlockRemoved` becomes `KvRemoved`, and
`AllBlocksCleared` `KvCleared`. vLLM's hashes are 64-bit ints by default
(`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`), else 32-byte digests, folded here to 64 bits the way
vLLM folds them. Only GPU-resident blocks of the first KV cache group, of the engine's block
size and without LoRA, are reported: that is what dynamo's token-only block hashes describe.
"""

from __future__ import annotations

import msgspec

from dynamo_core.engines.kv_mirror import EventTranslator, decode_events, stored_event
from dynamo_core.protocols.kv_events import KvRemoved, KvStored

_MASK64 = (1 << 64) - 1
GPU_MEDIUM = "GPU"


class BlockStored(msgspec.Struct, tag="BlockStored"):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    group_idx: int | None = None


class BlockRemoved(msgspec.Struct, tag="BlockRemoved"):
    block_hashes: list[int | bytes]
    medium: str | None = None
    group_idx: int | None = None


class AllBlocksCleared(msgspec.Struct, tag="AllBlocksCleared"):
    pass


VllmKvEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KVEventBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[msgspec.Raw]  # decoded one by one, so an unknown kind skips only itself
    data_parallel_rank: int | None = None


_batch_decoder = msgspec.msgpack.Decoder(KVEventBatch)
_event_decoder = msgspec.msgpack.Decoder(VllmKvEvent)


def decode_batch(payload: bytes) -> list[VllmKvEvent]:
    """The events of one published batch, in order; events of unknown kinds are dropped."""
    return decode_events(payload, _batch_decoder, _event_decoder, "vLLM")


def engine_hash(value: int | bytes) -> int:
    """vLLM's block hash as the 64-bit int dynamo's events carry."""
    if isinstance(value, bytes):
        return int.from_bytes(value, "big") & _MASK64
    return value & _MASK64


class KvEventTranslator(EventTranslator):
    """Turns decoded vLLM events into dynamo events for an engine of `block_size` tokens a block."""

    stored_type = BlockStored
    removed_type = BlockRemoved
    cleared_type = AllBlocksCleared

    def __init__(self, block_size: int, group_idx: int = 0):
        self.block_size = block_size
        self.group_idx = group_idx

    def _reported(self, medium: str | None, group_idx: int | None) -> bool:
        return (medium is None or medium == GPU_MEDIUM) and (group_idx is None or group_idx == self.group_idx)

    def removed(self, event: BlockRemoved) -> KvRemoved | None:
        if not self._reported(event.medium, event.group_idx) or not event.block_hashes:
            return None
        return KvRemoved(block_hashes=[engine_hash(h) for h in event.block_hashes])

    def stored(self, event: BlockStored) -> KvStored | None:
        if not self._reported(event.medium, event.group_idx):
            return None
        if event.lora_id is not None or event.lora_name is not None:
            return None  # LoRA blocks hash differently in vLLM; dynamo's hashes are tokens only
        if event.block_size != self.block_size:
            return None  # a partial-block prefix entry (hybrid models): not a full block
        return stored_event(event.block_hashes, event.parent_block_hash, event.token_ids, self.block_size, engine_hash)
