"""What engine plugins that relay their engine's own KV events share (vLLM, SGLang).

- `KvCacheMirror`: the cache as the events describe it, for `Engine.kv_snapshot()` (these
  engines cannot enumerate their caches).
- `KvEventRelay`: a published batch in, translated events out to the worker's sink through the
  mirror; a lost stretch of batches becomes a cleared cache, so routers resynchronise.
- `EventTranslator`: the loop over an engine's decoded events. Each engine declares its event
  types (``stored_type``, ``removed_type``, ``cleared_type``: vLLM's `BlockStored` /
  `BlockRemoved` / `AllBlocksCleared`, which SGLang mirrors) and says which of its stored and
  removed events dynamo reports, and how.
- `stored_event` and `decode_events`: the pieces of an engine's wire format translation that
  do not depend on the engine (per-block hashes and tokens into one `KvStored`; a msgpack batch
  decoded event by event, so an unknown event kind skips only itself, and a batch that does not
  decode at all is logged, counted and skipped).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import msgspec

from dynamo_core.engines.base import KvEventSink
from dynamo_core.protocols.kv_events import KvBlock, KvCleared, KvEvent, KvRemoved, KvStored
from dynamo_core.runtime.event_plane import MALFORMED_MESSAGES

log = logging.getLogger(__name__)


def stored_event(hashes: Sequence[Any], parent: Any, tokens: Sequence[int], block_size: int,
                 fold: Callable[[Any], int]) -> KvStored | None:
    """One `KvStored` for consecutive blocks of `block_size` tokens, each hash covering the next
    block's tokens (a short tail is no block); `fold` turns the engine's hashes into dynamo's
    64-bit ints. None when no full block is described."""
    count = min(len(hashes), len(tokens) // block_size)
    if count == 0:
        return None
    blocks = [KvBlock(fold(hashes[i]), list(tokens[i * block_size : (i + 1) * block_size])) for i in range(count)]
    return KvStored(parent_hash=None if parent is None else fold(parent), blocks=blocks)


class EventTranslator(abc.ABC):
    """Decoded engine events in, dynamo's events out, in order; kinds it does not know are skipped.

    Every subclass declares the engine's three event types, the ones its decoder produces: events
    are told apart by type, not by class name, and a subclass that leaves one out fails when
    it is defined, not by dropping every such event at run time. (No abstract intermediate base
    is exempt: none exists, and one would declare the types its engine's subclasses share.)"""

    stored_type: ClassVar[type]  # becomes `KvStored` through `stored`
    removed_type: ClassVar[type]  # becomes `KvRemoved` through `removed`
    cleared_type: ClassVar[type]  # becomes `KvCleared`

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        missing = [name for name in ("stored_type", "removed_type", "cleared_type")
                   if not isinstance(getattr(cls, name, None), type)]
        if missing:
            raise TypeError(f"{cls.__name__} must declare the engine event types {', '.join(missing)}")

    def translate(self, events: Sequence[Any]) -> list[KvEvent]:
        out: list[KvEvent] = []
        for event in events:
            if isinstance(event, self.stored_type):
                translated: KvEvent | None = self.stored(event)
            elif isinstance(event, self.removed_type):
                translated = self.removed(event)
            elif isinstance(event, self.cleared_type):
                translated = KvCleared()
            else:
                translated = None
            if translated is not None:
                out.append(translated)
        return out

    @abc.abstractmethod
    def stored(self, event: Any) -> KvStored | None:
        """The engine's `BlockStored` as ours, or None when dynamo does not report it."""

    @abc.abstractmethod
    def removed(self, event: Any) -> KvRemoved | None:
        """The engine's `BlockRemoved` as ours, or None when dynamo does not report it."""


def decode_events(payload: bytes, batch: msgspec.msgpack.Decoder, event: msgspec.msgpack.Decoder, engine: str) -> list:
    """The events of one published batch (`batch` decodes it with its events as `msgspec.Raw`),
    in order; events `event` does not know are dropped. A batch that does not decode is logged,
    counted (``dynamo_event_plane_malformed_messages{source="engine"}``) and yields no events:
    the engine's stream goes on with the next batch."""
    try:
        raws = batch.decode(payload).events
    except msgspec.DecodeError as exc:  # ValidationError (well-formed, wrong shape) included
        MALFORMED_MESSAGES.labels("engine").inc()
        log.warning("skipping a malformed %s KV event batch (%d bytes): %s", engine, len(payload), exc)
        return []
    events = []
    for raw in raws:
        try:
            events.append(event.decode(raw))
        except msgspec.ValidationError as exc:
            log.debug("skipping a %s KV event dynamo does not know: %s", engine, exc)
    return events


class KvCacheMirror:
    """The blocks an engine holds, as its events describe them: answers `Engine.kv_snapshot()`.

    vLLM and SGLang cannot list their caches, so a router that connects late (or resynchronises
    after a gap) would otherwise see only blocks stored after it arrived.
    """

    def __init__(self) -> None:
        # hash -> (parent, tokens). Tuples of ints, which CPython's collector stops tracking:
        # the mirror holds every cached block (hundreds of thousands on a large GPU), and as
        # lists they would make each full collection walk them all.
        self._blocks: dict[int, tuple[int | None, tuple[int, ...]]] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def apply(self, events: Sequence[KvEvent]) -> None:
        blocks = self._blocks
        for event in events:
            if isinstance(event, KvStored):
                parent = event.parent_hash
                for block in event.blocks:
                    # A re-report of a cached block (vLLM's "full" report mode, say) keeps its
                    # entry; one stored again under another parent (the engine recomputed it
                    # after its old parent went) moves there, or a snapshot would place it
                    # under a parent that is gone and leave it out.
                    known = blocks.get(block.block_hash)
                    if known is None or known[0] != parent:
                        blocks[block.block_hash] = (parent, tuple(block.token_ids))
                    parent = block.block_hash
            elif isinstance(event, KvRemoved):
                for block_hash in event.block_hashes:
                    blocks.pop(block_hash, None)
            elif isinstance(event, KvCleared):
                blocks.clear()

    def snapshot(self) -> list[KvStored]:
        """Every block reachable from a root, parents first, chains merged into one event.

        A block whose parent was evicted before it cannot be placed by a router (nor matched by
        any prompt, since matching walks from the root), so it is left out.
        """
        children: dict[int | None, list[int]] = {}
        for block_hash, (parent, _) in self._blocks.items():
            if parent is None or parent in self._blocks:
                children.setdefault(parent, []).append(block_hash)
        out: list[KvStored] = []
        for chain_parent, chain in self._chains(children):
            out.append(KvStored(parent_hash=chain_parent, blocks=[KvBlock(h, list(self._blocks[h][1])) for h in chain]))
        return out

    @staticmethod
    def _chains(children: dict[int | None, list[int]]) -> Iterator[tuple[int | None, list[int]]]:
        """Depth-first runs of blocks, each run a parent's child followed by its descendants for
        as long as each has exactly one child."""
        stack: list[int | None] = [None]
        while stack:
            parent = stack.pop()
            for head in children.get(parent, ()):
                chain = [head]
                while len(children.get(chain[-1], ())) == 1:
                    chain.append(children[chain[-1]][0])
                stack.append(chain[-1])
                yield parent, chain


class KvEventRelay:
    """An engine's published KV event batches to the worker's event sink, through a mirror."""

    def __init__(self, engine: str, translate: Callable[[bytes], list[KvEvent]], sink: KvEventSink):
        self.engine = engine
        self.mirror = KvCacheMirror()
        self._translate = translate
        self._sink = sink

    def on_batch(self, payload: bytes) -> None:
        events = self._translate(payload)
        if events:
            self.mirror.apply(events)
            self._sink.publish(events)

    def on_lost(self, first: int, end: int) -> None:
        # What those batches stored is unknown: start over from an empty view of the cache.
        log.warning("%s KV event batches %d..%d are lost; reporting the cache as cleared", self.engine, first, end - 1)
        events = [KvCleared()]
        self.mirror.apply(events)
        self._sink.publish(events)
