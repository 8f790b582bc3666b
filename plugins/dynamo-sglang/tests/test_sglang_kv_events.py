"""SGLang's KV-event batches decoded and translated into dynamo's stored/removed/cleared events.

Batches are built as SGLang 0.5.15 encodes them: msgpack arrays, each event an array tagged by
its class name (`sglang/srt/disaggregation/kv_events.py`), hashes signed 64-bit ints.
"""

from __future__ import annotations

import msgspec

from dynamo_core.engines.kv_mirror import KvCacheMirror
from dynamo_core.protocols.kv_events import KvCleared, KvRemoved, KvStored
from dynamo_sglang.kv_events import KvEventTranslator, decode_batch

PAGE = 16
MASK = 2**64 - 1


def batch(*events: list) -> bytes:
    return msgspec.msgpack.encode([1733150000.5, list(events), 0])


def stored(hashes, parent, tokens, size=PAGE, lora=None, medium="GPU") -> list:
    return ["BlockStored", hashes, parent, tokens, size, lora, medium]


def translate(payload: bytes) -> list:
    return KvEventTranslator(PAGE).translate(decode_batch(payload))


def test_a_stored_page_chain_carries_its_tokens_and_unsigned_hashes():
    events = translate(batch(stored([-5], None, list(range(16))), stored([7], -5, list(range(16, 32)))))
    assert events == [KvStored(parent_hash=None, blocks=[events[0].blocks[0]]), events[1]]
    assert events[0].blocks[0].block_hash == (-5) & MASK and events[0].blocks[0].token_ids == list(range(16))
    assert events[1].parent_hash == (-5) & MASK and events[1].blocks[0].block_hash == 7


def test_removed_and_cleared():
    events = translate(batch(["BlockRemoved", [-5, 7], "GPU"], ["AllBlocksCleared"]))
    assert events == [KvRemoved(block_hashes=[(-5) & MASK, 7]), KvCleared()]


def test_what_dynamos_token_hashes_cannot_describe_is_left_out():
    events = translate(batch(
        stored([1], None, list(range(16)), lora=3),  # LoRA pages hash differently
        stored([2], None, list(range(16)), medium="CPU_PINNED"),  # host tier (HiCache), not GPU
        ["BlockRemoved", [3], "CPU_PINNED"],
        stored([4], None, list(range(8)), size=8),  # another page size
        stored([5], None, list(range(8))),  # fewer tokens than a page
    ))
    assert events == []


def test_an_unknown_event_kind_skips_only_itself():
    events = translate(batch(["BlockMoved", [1], "GPU"], stored([9], None, list(range(16)))))
    assert [e.blocks[0].block_hash for e in events] == [9]


def test_the_mirror_answers_snapshots_from_sglangs_events():
    mirror = KvCacheMirror()
    mirror.apply(translate(batch(stored([-5], None, list(range(16))), stored([7], -5, list(range(16, 32))),
                                 stored([8], -5, list(range(32, 48))))))
    mirror.apply(translate(batch(["BlockRemoved", [8], "GPU"])))
    snapshot = mirror.snapshot()
    assert [[b.block_hash for b in s.blocks] for s in snapshot] == [[(-5) & MASK, 7]]


class ListSink:
    def __init__(self) -> None:
        self.published: list = []

    def publish(self, events) -> None:
        self.published.append(list(events))


def test_the_relay_publishes_translated_batches_and_clears_on_a_lost_stretch():
    from dynamo_core.engines.kv_mirror import KvEventRelay

    sink = ListSink()
    relay = KvEventRelay("SGLang", translate, sink)
    relay.on_batch(batch(stored([-5], None, list(range(16)))))
    relay.on_batch(batch(["BlockMoved", [1], "GPU"]))  # nothing dynamo reports: nothing published
    assert len(sink.published) == 1 and len(relay.mirror) == 1
    relay.on_lost(3, 5)
    assert sink.published[-1] == [KvCleared()] and len(relay.mirror) == 0
