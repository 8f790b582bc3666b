"""The engine-independent half of relaying an engine's KV events (`engines/kv_mirror.py`): the
mirror that answers snapshots, the translator contract the engine plugins follow, and the
batch decoder that skips what does not decode. Engine wire formats are tested in their plugins
(`plugins/dynamo-vllm/tests`, `plugins/dynamo-sglang/tests`)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest

from dynamo_core.engines.base import KvEventSink
from dynamo_core.engines.kv_mirror import EventTranslator, KvCacheMirror, KvEventRelay, decode_events, stored_event
from dynamo_core.protocols.kv_events import KvBlock, KvCleared, KvEvent, KvRemoved, KvStored
from dynamo_core.runtime.event_plane import MALFORMED_MESSAGES


def _stored(parent: int | None, *hashes: int) -> KvStored:
    return KvStored(parent_hash=parent, blocks=[KvBlock(h, [h, h + 1]) for h in hashes])


def _chains(mirror: KvCacheMirror) -> list[tuple[int | None, list[int]]]:
    return sorted(((s.parent_hash or 0, [b.block_hash for b in s.blocks]) for s in mirror.snapshot()))


# --- the mirror -------------------------------------------------------------------------------


def test_a_block_stored_again_under_another_parent_moves_there():
    """1 → 2 → 3 cached; 1 and 2 are evicted and 3 is recomputed after a new prefix 10. The
    snapshot places 3 under 10: kept under its gone parent, it would be left out."""
    mirror = KvCacheMirror()
    mirror.apply([_stored(None, 1, 2, 3)])
    mirror.apply([KvRemoved(block_hashes=[1, 2]), _stored(None, 10), _stored(10, 3)])
    assert _chains(mirror) == [(0, [10, 3])]


def test_a_re_report_under_the_same_parent_changes_nothing():
    mirror = KvCacheMirror()
    mirror.apply([_stored(None, 1, 2)])
    mirror.apply([_stored(1, 2)])  # vLLM's "full" report mode sends cached blocks again
    assert len(mirror) == 2 and _chains(mirror) == [(0, [1, 2])]


def test_blocks_under_an_evicted_parent_leave_the_snapshot_and_cleared_empties_it():
    mirror = KvCacheMirror()
    mirror.apply([_stored(None, 1, 2), _stored(1, 5)])
    mirror.apply([KvRemoved(block_hashes=[1])])
    assert mirror.snapshot() == []
    mirror.apply([_stored(None, 7), KvCleared()])
    assert len(mirror) == 0


# --- the translator contract ------------------------------------------------------------------


class Put(msgspec.Struct, array_like=True, tag=True):  # an engine whose event types are not named like vLLM's
    hashes: list[int]
    tokens: list[int]


class Drop(msgspec.Struct, array_like=True, tag=True):
    hashes: list[int]


class Wipe(msgspec.Struct, array_like=True, tag=True):
    pass


class Other(msgspec.Struct, array_like=True, tag=True):
    pass


class PutDropWipe(EventTranslator):
    stored_type = Put
    removed_type = Drop
    cleared_type = Wipe

    def stored(self, event: Put) -> KvStored | None:
        return stored_event(event.hashes, None, event.tokens, 2, int)

    def removed(self, event: Drop) -> KvRemoved | None:
        return KvRemoved(block_hashes=event.hashes) if event.hashes else None


def test_the_translator_dispatches_on_the_event_types_the_engine_declares():
    events = PutDropWipe().translate([Put([1, 2], [1, 2, 3, 4]), Other(), Drop([]), Drop([2]), Wipe()])
    assert events == [KvStored(parent_hash=None, blocks=[KvBlock(1, [1, 2]), KvBlock(2, [3, 4])]),
                      KvRemoved(block_hashes=[2]), KvCleared()]


def test_a_translator_that_leaves_out_an_event_type_fails_when_defined():
    with pytest.raises(TypeError, match="cleared_type"):
        class Incomplete(EventTranslator):  # noqa: F841
            stored_type = Put
            removed_type = Drop

            def stored(self, event):
                return None

            def removed(self, event):
                return None


def test_the_engine_plugins_declare_their_event_types():
    vllm = pytest.importorskip("dynamo_vllm.kv_events")
    sglang = pytest.importorskip("dynamo_sglang.kv_events")
    for module in (vllm, sglang):
        translator = module.KvEventTranslator
        assert (translator.stored_type, translator.removed_type, translator.cleared_type) == (
            module.BlockStored, module.BlockRemoved, module.AllBlocksCleared)


# --- the batch decoder and the relay ----------------------------------------------------------


class Batch(msgspec.Struct, array_like=True):
    ts: float
    events: list[msgspec.Raw]


_batch = msgspec.msgpack.Decoder(Batch)
_event = msgspec.msgpack.Decoder(Put | Drop | Wipe)


def _payload(*events: msgspec.Struct) -> bytes:
    return msgspec.msgpack.encode([1.0, list(events)])


class ListSink(KvEventSink):
    def __init__(self) -> None:
        self.published: list[list[KvEvent]] = []

    def publish(self, events: Sequence[KvEvent]) -> None:
        self.published.append(list(events))


def test_a_malformed_batch_is_counted_and_skipped_and_the_next_one_applies():
    counted = MALFORMED_MESSAGES.labels("engine")
    before = counted._value.get()
    assert decode_events(b"\xc1 garbage", _batch, _event, "test") == []
    assert decode_events(msgspec.msgpack.encode({"ts": "x"}), _batch, _event, "test") == []  # wrong shape
    assert counted._value.get() == before + 2
    translator = PutDropWipe()
    sink = ListSink()
    relay = KvEventRelay("test", lambda p: translator.translate(decode_events(p, _batch, _event, "test")), sink)
    relay.on_batch(b"\x93 truncated")
    relay.on_batch(_payload(Put([5], [5, 6])))
    assert sink.published == [[KvStored(parent_hash=None, blocks=[KvBlock(5, [5, 6])])]] and len(relay.mirror) == 1


def test_an_event_of_an_unknown_kind_skips_only_itself():
    payload = msgspec.msgpack.encode([1.0, [["Moved", [1]], ["Put", [7], [7, 8]]]])
    assert decode_events(payload, _batch, _event, "test") == [Put([7], [7, 8])]
