"""SGLang's KV cache events, decoded from its ZMQ publisher and translated into dynamo's.

SGLang's scheduler publishes `KVEventBatch`es (msgpack, `sglang/srt/disaggregation/kv_events.py`):
a batch is an array `[ts, events, attn_dp_rank]`, each event an array tagged by its class name
(`["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium]`,
`["BlockRemoved", block_hashes, medium]`, `["AllBlocksCleared"]`). The structs below mirror
that wire format, so decoding runs (and is tested) without SGLang; an unknown event kind skips
only itself.

SGLang reports one `BlockStored` per page (`mem_cache/events.py`), its hash the first 8 bytes
of `sha256(parent digest || page token ids)` as a signed int64. dynamo's router recomputes its
own hashes from each block's tokens, so SGLang's are only the keys that link parents and
removals; they are folded to unsigned 64 bits. Only GPU-resident pages without LoRA, of the
engine's page size, are reported: that is what dynamo's token-only block hashes describe.
"""

from __future__ import annotations

import msgspec

from dynamo_core.engines.kv_mirror import EventTranslator, decode_events, stored_event
from dynamo_core.protocols.kv_events import KvRemoved, KvStored

_MASK64 = (1 << 64) - 1
GPU_MEDIUM = "GPU"


class BlockStored(msgspec.Struct, array_like=True, tag=True):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None


class BlockRemoved(msgspec.Struct, array_like=True, tag=True):
    block_hashes: list[int]
    medium: str | None = None


class AllBlocksCleared(msgspec.Struct, array_like=True, tag=True):
    pass


SglangKvEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KVEventBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[msgspec.Raw]  # decoded one by one, so an unknown kind skips only itself
    attn_dp_rank: int | None = None


_batch_decoder = msgspec.msgpack.Decoder(KVEventBatch)
_event_decoder = msgspec.msgpack.Decoder(SglangKvEvent)


def decode_batch(payload: bytes) -> list[SglangKvEvent]:
    """The events of one published batch, in order; events of unknown kinds are dropped."""
    return decode_events(payload, _batch_decoder, _event_decoder, "SGLang")


def engine_hash(value: int) -> int:
    """SGLang's signed 64-bit page hash as the unsigned 64-bit int dynamo's events carry."""
    return value & _MASK64


class KvEventTranslator(EventTranslator):
    """Turns decoded SGLang events into dynamo events for an engine of `page_size` tokens a page."""

    stored_type = BlockStored
    removed_type = BlockRemoved
    cleared_type = AllBlocksCleared

    def __init__(self, page_size: int):
        self.page_size = page_size

    def removed(self, event: BlockRemoved) -> KvRemoved | None:
        if event.medium not in (None, GPU_MEDIUM) or not event.block_hashes:
            return None
        return KvRemoved(block_hashes=[engine_hash(h) for h in event.block_hashes])

    def stored(self, event: BlockStored) -> KvStored | None:
        if event.medium not in (None, GPU_MEDIUM) or event.lora_id is not None:
            return None  # host/disk tiers are not GPU cache; LoRA pages hash differently
        if event.block_size != self.page_size:
            return None
        return stored_event(event.block_hashes, event.parent_block_hash, event.token_ids, self.page_size, engine_hash)
