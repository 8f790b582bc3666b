"""What engine plugins that relay their engine's own KV events share (vLLM, SGLang).

- `KvCacheMirror`: the cache as the events describe it, for `Engine.kv_snapshot()` (these
  engines cannot enumerate their caches).
- `KvEventRelay`: a published batch in, translated events out to the worker's sink through the
  mirror; a lost stretch of batches becomes a cleared cache, so routers resynchronise.
- `EventTranslator`: the loop over an engine's decoded `BlockStored` / `BlockRemoved` /
  `AllBlocksCleared` events (vLLM's names, which SGLang shares); each engine says which of
  its stored and removed events dynamo reports, and how.
- `stored_event` and `decode_events`: the pieces of an engine's wire format translation that
  do not depend on the engine (per-block hashes and tokens into one `KvStored`; a msgpack batch
  decoded event by event, so an unknown event kind skips only itself).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec

from dynamo_core.engines.base import KvEventSink
from dynamo_core.protocols.kv_events import KvBlock, KvCleared, KvEvent, KvRemoved, KvStored

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
    """Decoded engine events in, dynamo's events out, in order; kinds it does not know are skipped."""

    def translate(self, events: Sequence[Any]) -> list[KvEvent]:
        out: list[KvEvent] = []
        for event in events:
            kind = type(event).__name__
            if kind == "BlockStored":
                translated: KvEvent | None = self.stored(event)
            elif kind == "BlockRemoved":
                translated = self.removed(event)
            elif kind == "AllBlocksCleared":
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
    in order; events `event` does not know are dropped."""
    events = []
    for raw in batch.decode(payload).events:
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
                    # A re-report of a cached block (vLLM's "full" report mode, say) keeps its entry.
                    if block.block_hash not in blocks:
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
