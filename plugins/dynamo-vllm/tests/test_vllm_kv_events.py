"""vLLM's KV event batches, as its ZMQ publisher encodes them, into dynamo's events.

The `BlockStored`/`BlockRemoved`/`AllBlocksCleared`/`KVEventBatch` structs below are declared
the way vLLM 0.26 declares them (`vllm/distributed/kv_events.py`), so the payloads are
byte-for-byte what a vLLM worker publishes; `test_vllm_wire_compat.py` checks the same against
vLLM's own classes where vLLM is installed.
"""

from __future__ import annotations

import gc
from typing import Any

import msgspec
import pytest

from dynamo_core.protocols.kv_events import KvBlock, KvCleared, KvRemoved, KvStored
from dynamo_core.engines.kv_mirror import KvCacheMirror
from dynamo_vllm import kv_events as kv


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[bytes | int]
    parent_block_hash: bytes | int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[bytes | int]
    medium: str | None
    group_idx: int | None = None
    locality: str | None = None


class AllBlocksCleared(KVCacheEvent):
    pass


class BlockMoved(KVCacheEvent):  # a kind this plugin does not know
    block_hashes: list[int]


_encoder = msgspec.msgpack.Encoder()
BS = 4


def payload(*events: KVCacheEvent) -> bytes:
    return _encoder.encode(EventBatch(ts=1.0, events=list(events)))


def stored(hashes, parent, tokens, *, block_size=BS, medium="GPU", group_idx=0, **kw) -> BlockStored:
    return BlockStored(block_hashes=hashes, parent_block_hash=parent, token_ids=tokens, block_size=block_size,
                       lora_id=kw.pop("lora_id", None), medium=medium, lora_name=kw.pop("lora_name", None),
                       group_idx=group_idx, **kw)


def translate(*events: KVCacheEvent) -> list:
    return kv.KvEventTranslator(block_size=BS).translate(kv.decode_batch(payload(*events)))


def test_stored_blocks_carry_their_own_tokens_and_parent():
    events = translate(
        stored([101, 102], None, list(range(8)), extra_keys=[None, None], kv_cache_spec_kind="full"),
        stored([103], 102, [8, 9, 10, 11], locality="LOCAL"),
    )
    assert events == [
        KvStored(parent_hash=None, blocks=[KvBlock(101, [0, 1, 2, 3]), KvBlock(102, [4, 5, 6, 7])]),
        KvStored(parent_hash=102, blocks=[KvBlock(103, [8, 9, 10, 11])]),
    ]


def test_removed_and_cleared():
    events = translate(BlockRemoved(block_hashes=[101, 102], medium="GPU", group_idx=0), AllBlocksCleared())
    assert events == [KvRemoved(block_hashes=[101, 102]), KvCleared()]


def test_digest_hashes_fold_to_64_bits_as_vllm_folds_them():
    digest, parent = bytes(range(32)), bytes(range(1, 33))
    (event,) = translate(stored([digest], parent, [1, 2, 3, 4]))
    assert event.blocks[0].block_hash == int.from_bytes(digest, "big") & (2**64 - 1)
    assert event.parent_hash == int.from_bytes(parent, "big") & (2**64 - 1)
    (removed,) = translate(BlockRemoved(block_hashes=[digest], medium="GPU"))
    assert removed.block_hashes == [event.blocks[0].block_hash]


@pytest.mark.parametrize(
    "event",
    [
        stored([1], None, [1, 2, 3, 4], medium="CPU"),  # offloaded copy, not in GPU memory
        stored([1], None, [1, 2, 3, 4], group_idx=1),  # another KV cache group (hybrid models)
        stored([1], None, [1, 2], block_size=2),  # a partial-block prefix entry
        stored([1], None, [1, 2, 3, 4], lora_name="adapter", lora_id=1),  # LoRA blocks hash differently
        BlockRemoved(block_hashes=[1], medium="CPU"),
        BlockRemoved(block_hashes=[1], medium="GPU", group_idx=2),
    ],
)
def test_events_dynamo_hashes_cannot_describe_are_left_out(event):
    assert translate(event) == []


def test_unknown_event_kinds_are_skipped_and_the_rest_kept():
    events = translate(BlockMoved(block_hashes=[5]), stored([7], None, [1, 2, 3, 4]))
    assert events == [KvStored(parent_hash=None, blocks=[KvBlock(7, [1, 2, 3, 4])])]


def test_events_without_medium_or_group_count_as_gpu_and_first_group():
    (event,) = translate(stored([7], None, [1, 2, 3, 4], medium=None, group_idx=None))
    assert event.blocks == [KvBlock(7, [1, 2, 3, 4])]


# --- mirror: snapshots for late or resynchronising routers ------------------------------------


def blocks_of(snapshot: list[KvStored]) -> list[tuple[int | None, list[int]]]:
    return [(s.parent_hash, [b.block_hash for b in s.blocks]) for s in snapshot]


def test_snapshot_lists_reachable_blocks_parents_first_in_chains():
    mirror = KvCacheMirror()
    mirror.apply(translate(
        stored([1, 2, 3], None, list(range(12))),
        stored([4, 5], 3, list(range(12, 20))),
        stored([6], 2, list(range(20, 24))),  # a branch off block 2
        stored([9], None, list(range(30, 34))),
    ))
    assert len(mirror) == 7
    snapshot = blocks_of(mirror.snapshot())
    assert sorted(snapshot, key=str) == sorted([(None, [1, 2]), (2, [3, 4, 5]), (2, [6]), (None, [9])], key=str)
    seen: set[int] = set()
    for parent, chain in snapshot:
        assert parent is None or parent in seen
        seen.update(chain)


def test_snapshot_leaves_out_blocks_whose_parent_was_evicted():
    mirror = KvCacheMirror()
    mirror.apply(translate(stored([1, 2, 3], None, list(range(12)))))
    mirror.apply(translate(BlockRemoved(block_hashes=[2], medium="GPU")))
    assert blocks_of(mirror.snapshot()) == [(None, [1])]
    # Re-storing the parent makes its child reachable again, in parent-first order.
    mirror.apply(translate(stored([2], 1, [4, 5, 6, 7])))
    assert blocks_of(mirror.snapshot()) == [(None, [1, 2, 3])]
    mirror.apply([KvCleared()])
    assert mirror.snapshot() == [] and len(mirror) == 0


def test_mirrored_blocks_are_left_alone_by_the_garbage_collector():
    """The mirror holds every cached block; none of it should be walked by full collections."""
    mirror = KvCacheMirror()
    mirror.apply(translate(stored(list(range(1, 101)), None, list(range(400)))))
    # The collector untracks a tuple of untracked values when a collection meets it: the token
    # tuples at the first, the (parent, tokens) pairs holding them at the next.
    gc.collect()
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in mirror._blocks.values())
    assert blocks_of(mirror.snapshot()) == [(None, list(range(1, 101)))]
    assert mirror.snapshot()[0].blocks[1].token_ids == [4, 5, 6, 7]


def test_a_re_reported_block_keeps_its_place():
    mirror = KvCacheMirror()
    mirror.apply(translate(stored([1, 2], None, list(range(8)))))
    mirror.apply(translate(stored([1, 2], None, list(range(8)))))  # vLLM's "full" report mode
    assert blocks_of(mirror.snapshot()) == [(None, [1, 2])]


def test_the_kv_router_indexes_vllm_workers_from_these_events():
    """router-kv recomputes its hashes from the tokens: a prompt whose prefix vLLM stored
    matches that many blocks on that worker, through live events and through a snapshot."""
    indexer_module = pytest.importorskip("dynamo_router_kv.indexer")
    hashing = pytest.importorskip("dynamo_router_kv.hashing")
    prompt = list(range(100, 118))  # four full blocks and a partial one
    events = translate(
        stored([11, 12], None, prompt[:8]),
        stored([13, 14], 12, prompt[8:16]),
        stored([21], None, [7, 7, 7, 7]),
    )
    indexer = indexer_module.KvIndexer()
    for event in events:
        indexer.apply_stored("vllm-a", event.parent_hash, event.blocks)
    assert indexer.find_matches(hashing.prompt_block_hashes(prompt, BS)) == {"vllm-a": 4}

    removed = translate(BlockRemoved(block_hashes=[14], medium="GPU"))
    indexer.apply_removed("vllm-a", removed[0].block_hashes)
    assert indexer.find_matches(hashing.prompt_block_hashes(prompt, BS)) == {"vllm-a": 3}

    mirror = KvCacheMirror()
    mirror.apply(events + removed)
    fresh = indexer_module.KvIndexer()
    for event in mirror.snapshot():
        fresh.apply_stored("vllm-b", event.parent_hash, event.blocks)
    assert fresh.find_matches(hashing.prompt_block_hashes(prompt, BS)) == {"vllm-b": 3}
