"""TensorRT-LLM's KV cache events as dynamo's.

The inputs are dicts exactly as `tensorrt_llm/_utils.py:KVCacheEventSerializer.to_json_str`
writes them for `LLM.get_kv_cache_events_async`: `{"event_id", "data", "window_size"}` (plus
`attention_dp_rank` under attention DP), `data` typed created / stored (with `stored_block`s of
`unique_token`s; later releases add `mm_keys` and `cache_salt` to each) / removed / updated
(with `event_diff`s).
"""

from __future__ import annotations

import pytest

from dynamo_core.protocols.kv_events import KvBlock, KvRemoved, KvStored
from dynamo_trtllm.kv_events import KvEventTranslator

FULL, SLIDING = 4096, 512


def token(t: int, extra: int = 0) -> dict:
    return {"type": "unique_token", "token_id": t, "token_extra_id": extra}


def block(h: int, tokens: list[int], cache_level: int = 0, extra: int = 0, **later) -> dict:
    """A stored block as the releases read write it; `later`: the fields later ones add
    (`mm_keys`, `cache_salt`)."""
    return {"type": "stored_block", "block_hash": h, "tokens": [token(t, extra) for t in tokens],
            "cache_level": cache_level, "priority": 35, **later}


def event(event_id: int, data: dict, window: int = FULL, dp_rank: int | None = None) -> dict:
    out = {"event_id": event_id, "data": data, "window_size": window}
    if dp_rank is not None:
        out["attention_dp_rank"] = dp_rank
    return out


def created(window: int, gpu_blocks: int) -> dict:
    return event(0, {"type": "created", "num_blocks_per_cache_level": [gpu_blocks, 0]}, window)


def stored(parent: int | None, *blocks: dict, window: int = FULL) -> dict:
    return event(1, {"type": "stored", "parent_hash": parent, "blocks": list(blocks)}, window)


def removed(*hashes: int, window: int = FULL) -> dict:
    return event(2, {"type": "removed", "block_hashes": list(hashes)}, window)


def test_stored_and_removed_blocks_carry_their_tokens_and_parent():
    t = KvEventTranslator(block_size=4)
    assert t.translate([
        created(FULL, 1000),
        stored(None, block(11, [1, 2, 3, 4]), block(12, [5, 6, 7, 8])),
        stored(12, block(13, [9, 10, 11, 12])),
        removed(11, 12),
    ]) == [
        KvStored(parent_hash=None, blocks=[KvBlock(11, [1, 2, 3, 4]), KvBlock(12, [5, 6, 7, 8])]),
        KvStored(parent_hash=12, blocks=[KvBlock(13, [9, 10, 11, 12])]),
        KvRemoved(block_hashes=[11, 12]),
    ]
    assert t.kv_capacity_blocks == 1000


def test_hashes_stay_unsigned_64_bit():
    big = (1 << 64) - 5
    t = KvEventTranslator(block_size=2)
    [out] = t.translate([stored(None, block(big, [1, 2]))])
    assert out.blocks[0].block_hash == big


def test_a_partial_block_is_dropped_with_what_is_stored_under_it_and_its_removal():
    t = KvEventTranslator(block_size=4)
    out = t.translate([
        created(FULL, 100),
        # A prompt of 10 tokens: two full blocks and the partly filled last one (block reuse
        # stores it too).
        stored(None, block(21, [1, 2, 3, 4]), block(22, [5, 6, 7, 8]), block(23, [9, 10])),
        stored(23, block(24, [11, 12, 13, 14])),  # under the partial block: unreachable for us
        removed(23, 24, 22),
    ])
    assert out == [
        KvStored(parent_hash=None, blocks=[KvBlock(21, [1, 2, 3, 4]), KvBlock(22, [5, 6, 7, 8])]),
        KvRemoved(block_hashes=[22]),
    ]
    assert t.translate([removed(23)]) == [KvRemoved(block_hashes=[23])]  # forgotten once removed


def test_only_the_largest_attention_window_is_reported():
    t = KvEventTranslator(block_size=2)
    out = t.translate([
        created(SLIDING, 3000), created(FULL, 700),
        stored(None, block(31, [1, 2]), window=SLIDING),
        stored(None, block(41, [1, 2]), window=FULL),
        removed(31, window=SLIDING),
    ])
    assert out == [KvStored(parent_hash=None, blocks=[KvBlock(41, [1, 2])])]
    assert (t.window_size, t.kv_capacity_blocks) == (FULL, 700)


def test_host_memory_blocks_multimodal_blocks_and_updates_are_left_out():
    t = KvEventTranslator(block_size=2)
    out = t.translate([
        stored(None, block(51, [1, 2], cache_level=1)),
        stored(None, block(61, [3, 4], extra=77)),  # image content: its tokens carry an extra id
        event(3, {"type": "updated", "block_hash": 71,
                  "cache_level": {"type": "event_diff", "new_value": 1, "old_value": 0},
                  "priority": {"type": "event_diff", "new_value": 35, "old_value": 35}}),
        stored(None, block(81, [5, 6]), window=FULL) | {"attention_dp_rank": 0},
        event(4, {"type": "something_new"}),
    ])
    assert out == [KvStored(parent_hash=None, blocks=[KvBlock(81, [5, 6])])]


def test_later_releases_fields_keep_text_blocks_and_drop_multimodal_and_salted_ones():
    t = KvEventTranslator(block_size=2)
    mm_key = {"type": "mm_key", "hash": "ab" * 32, "start_offset": 0}
    out = t.translate([
        stored(None, block(91, [1, 2], mm_keys=[], cache_salt=None)),
        stored(None, block(92, [3, 4], mm_keys=[mm_key], cache_salt=None)),
        stored(None, block(93, [5, 6], mm_keys=[], cache_salt="tenant-a")),
    ])
    assert out == [KvStored(parent_hash=None, blocks=[KvBlock(91, [1, 2])])]


def test_a_salted_or_adapter_event_is_dropped_with_its_later_removal():
    # NVIDIA's Dynamo (for 1.3.0rc22) reads `cache_salt` from the blocks and from the event
    # itself, and the event's `lora_name`.
    t = KvEventTranslator(block_size=2)
    salted = event(1, {"type": "stored", "parent_hash": None, "cache_salt": "tenant-a",
                       "blocks": [block(94, [1, 2]), block(95, [3, 4])]})
    adapter = event(2, {"type": "stored", "parent_hash": None, "lora_name": "my-adapter",
                        "blocks": [block(96, [1, 2])]})
    plain = event(3, {"type": "stored", "parent_hash": None, "lora_name": None, "blocks": [block(97, [1, 2])]})
    assert t.translate([salted, adapter, plain]) == [KvStored(parent_hash=None, blocks=[KvBlock(97, [1, 2])])]
    assert t.translate([stored(95, block(98, [5, 6])), removed(94, 96, 97)]) == [KvRemoved(block_hashes=[97])]


def test_the_kv_router_indexes_trtllm_workers_from_these_events():
    """router-kv recomputes its hashes from the tokens: a prompt whose full blocks TensorRT-LLM
    stored matches them on that worker, its partial last block never does."""
    indexer_module = pytest.importorskip("dynamo_router_kv.indexer")
    hashing = pytest.importorskip("dynamo_router_kv.hashing")
    prompt = list(range(100, 110))  # two full blocks of 4 and a partial one of 2
    t = KvEventTranslator(block_size=4)
    events = t.translate([
        created(FULL, 64),
        stored(None, block(1, prompt[0:4]), block(2, prompt[4:8]), block(3, prompt[8:10])),
    ])
    indexer = indexer_module.KvIndexer()
    for e in events:
        indexer.apply_stored("trtllm-a", e.parent_hash, e.blocks)
    assert indexer.find_matches(hashing.prompt_block_hashes(prompt + [7, 7], 4)) == {"trtllm-a": 2}
    for e in t.translate([removed(3, 2)]):
        indexer.apply_removed("trtllm-a", e.block_hashes)
    assert indexer.find_matches(hashing.prompt_block_hashes(prompt, 4)) == {"trtllm-a": 1}
