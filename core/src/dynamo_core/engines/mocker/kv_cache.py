"""Paged KV cache: a pool of fixed-size blocks with prefix caching and LRU eviction.

A full block is identified by a chained hash of (parent block's hash, its tokens), so equal
hashes mean equal prefixes. Blocks are reference counted. A cached block whose last user
finished stays in the cache (reusable by a later request with the same prefix) until an
allocation needs room: then the least recently freed goes first. Requests free their blocks
tail first, so a prefix's deeper blocks are evicted before its shallower ones.

The pool records the KV events it causes (stored, removed, cleared); the engine publishes
them once per step.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from dynamo_core.protocols.kv_events import KvBlock, KvCleared, KvEvent, KvRemoved, KvStored


def block_hash(parent: int | None, tokens: Sequence[int]) -> int:
    """The mocker's own block hash (routers compute theirs independently from the tokens)."""
    data = struct.pack(f"<q{len(tokens)}I", -1 if parent is None else parent, *tokens)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


@dataclass
class _Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None  # set once the block is full and cached
    parent: int | None = None
    depth: int = 0  # index of the block within its sequence
    tokens: tuple[int, ...] = ()


class OutOfBlocksError(Exception):
    """No free or evictable block is left."""


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [_Block(i) for i in range(num_blocks)]
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() gives the lowest id
        self._cached: dict[int, int] = {}  # hash -> block id
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; oldest first
        self.events: list[KvEvent] = []

    # --- accounting -------------------------------------------------------------------------

    @property
    def free_blocks(self) -> int:
        """Blocks an allocation can take: never used, or cached but unreferenced."""
        return len(self._free) + len(self._evictable)

    @property
    def active_blocks(self) -> int:
        return self.num_blocks - self.free_blocks

    @property
    def cached_blocks(self) -> int:
        return len(self._cached)

    def take_events(self) -> list[KvEvent]:
        events, self.events = self.events, []
        return events

    # --- prefix cache -----------------------------------------------------------------------

    def prompt_hashes(self, token_ids: Sequence[int]) -> list[int]:
        """Chained hashes of the prompt's full blocks."""
        hashes: list[int] = []
        parent = None
        size = self.block_size
        for start in range(0, len(token_ids) - size + 1, size):
            parent = block_hash(parent, token_ids[start : start + size])
            hashes.append(parent)
        return hashes

    def match_prefix(self, hashes: Sequence[int]) -> list[int]:
        """Reference the cached blocks of the longest cached run of leading `hashes`."""
        if not self.enable_prefix_caching:
            return []
        matched: list[int] = []
        for h in hashes:
            block_id = self._cached.get(h)
            if block_id is None:
                break
            self._ref(block_id)
            matched.append(block_id)
        return matched

    def cached_prefix_length(self, hashes: Sequence[int]) -> int:
        """How many leading `hashes` are cached, without taking references."""
        if not self.enable_prefix_caching:
            return 0
        n = 0
        for h in hashes:
            if h not in self._cached:
                break
            n += 1
        return n

    # --- allocation -------------------------------------------------------------------------

    def _ref(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.ref_count == 0 and block.hash is not None:
            self._evictable.pop(block_id, None)
        block.ref_count += 1

    def allocate(self, count: int) -> list[int]:
        """Take `count` blocks, evicting unreferenced cached blocks (LRU) if needed."""
        if count > self.free_blocks:
            raise OutOfBlocksError(f"need {count} blocks, {self.free_blocks} free")
        taken = []
        removed: list[int] = []
        for _ in range(count):
            if self._free:
                block_id = self._free.pop()
            else:
                block_id, _ = self._evictable.popitem(last=False)
                block = self._blocks[block_id]
                removed.append(block.hash)  # type: ignore[arg-type]
                del self._cached[block.hash]  # type: ignore[arg-type]
                block.hash, block.parent, block.tokens = None, None, ()
            self._blocks[block_id].ref_count = 1
            taken.append(block_id)
        if removed:
            self.events.append(KvRemoved(block_hashes=removed))
        return taken

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one reference to each block, tail first (deeper blocks become older in the LRU)."""
        for block_id in reversed(block_ids):
            block = self._blocks[block_id]
            block.ref_count -= 1
            if block.ref_count > 0:
                continue
            if block.hash is not None:
                self._evictable[block_id] = None
            else:
                self._free.append(block_id)

    def commit_full_blocks(
        self, block_ids: Sequence[int], token_ids: Sequence[int], first: int, last: int, parent: int | None
    ) -> int | None:
        """Cache blocks `first..last-1` of a sequence, now full; returns the last block's hash.

        A block whose hash is already cached under another block id (two requests computed
        the same prefix at once) stays private: the cache keeps the first copy.
        """
        size = self.block_size
        stored: list[KvBlock] = []
        stored_parent = parent
        for index in range(first, last):
            tokens = tuple(token_ids[index * size : (index + 1) * size])
            h = block_hash(parent, tokens)
            block = self._blocks[block_ids[index]]
            if self.enable_prefix_caching and h not in self._cached and block.hash is None:
                block.hash, block.parent, block.depth, block.tokens = h, parent, index, tokens
                self._cached[h] = block.block_id
                if not stored:
                    stored_parent = parent
                stored.append(KvBlock(h, list(tokens)))
            elif stored:
                self.events.append(KvStored(parent_hash=stored_parent, blocks=stored))
                stored = []
            parent = h
        if stored:
            self.events.append(KvStored(parent_hash=stored_parent, blocks=stored))
        return parent

    def clear(self) -> None:
        """Forget the whole prefix cache, as `cleared` tells subscribers. Blocks still in use
        stay with their requests, but privately: nothing new can match them."""
        for block_id in self._cached.values():
            block = self._blocks[block_id]
            block.hash, block.parent, block.tokens = None, None, ()
        self._free.extend(self._evictable)
        self._evictable.clear()
        self._cached.clear()
        self.events.append(KvCleared())

    def snapshot(self) -> list[KvStored]:
        """Every cached block as a `stored` event, parents before children."""
        blocks = sorted((self._blocks[i] for i in self._cached.values()), key=lambda b: b.depth)
        return [KvStored(parent_hash=b.parent, blocks=[KvBlock(b.hash, list(b.tokens))]) for b in blocks]  # type: ignore[arg-type]
