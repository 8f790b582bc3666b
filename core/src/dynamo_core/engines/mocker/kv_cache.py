"""Paged KV cache: a pool of fixed-size blocks, per-sequence block tables, a prefix cache.

A full block is identified by a chained hash of (parent block's hash, its tokens), so equal
hashes mean equal prefixes. Blocks are reference counted. A cached block whose last user let
go stays in the cache (a later request with the same prefix reuses it) until an allocation
needs room: then the least recently freed goes first. Sequences free their blocks tail first,
so a prefix's deeper blocks are evicted before its shallower ones.

The pool records the KV events it causes (stored, removed, cleared); the engine takes and
publishes them once per step. With prefix caching off nothing is hashed, cached or recorded.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from dynamo_core.protocols.kv_events import KvBlock, KvCleared, KvEvent, KvRemoved, KvStored

_NO_PARENT = -1


def block_hash(parent: int | None, tokens: Sequence[int]) -> int:
    """The mocker's own block hash: blake2b of (parent, tokens), truncated to 63 bits.

    Routers compute theirs independently from the tokens in the events, as they must for any
    engine, so this need not match anyone else's.
    """
    data = struct.pack(f"<q{len(tokens)}I", _NO_PARENT if parent is None else parent, *tokens)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def extend_block_hashes(hashes: list[int], token_ids: Sequence[int], block_size: int) -> list[int]:
    """Append the chained hashes of the full blocks of `token_ids` that `hashes` lacks."""
    parent = hashes[-1] if hashes else None
    for start in range(len(hashes) * block_size, len(token_ids) - block_size + 1, block_size):
        parent = block_hash(parent, token_ids[start : start + block_size])
        hashes.append(parent)
    return hashes


class OutOfBlocksError(Exception):
    """No free or evictable block is left."""


@dataclass(eq=False, slots=True)
class BlockTable:
    """One sequence's blocks, in order, and how far it has offered them to the prefix cache."""

    block_ids: list[int] = field(default_factory=list)
    committed: int = 0  # leading full blocks already offered to the prefix cache


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        # Per cached block: its hash, its parent's hash, its tokens and its depth in the prefix.
        self._hash: list[int | None] = [None] * num_blocks
        self._parent: list[int | None] = [None] * num_blocks
        self._tokens: list[tuple[int, ...]] = [()] * num_blocks
        self._depth = [0] * num_blocks
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # uncached; pop() gives the lowest id
        self._cached: dict[int, int] = {}  # hash -> block id
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; least recently freed first
        self._events: list[KvEvent] = []

    # --- accounting -------------------------------------------------------------------------

    @property
    def free_blocks(self) -> int:
        """Blocks an allocation can take: uncached ones, or cached ones nobody references."""
        return len(self._free) + len(self._evictable)

    @property
    def active_blocks(self) -> int:
        """Blocks referenced by live sequences."""
        return self.num_blocks - self.free_blocks

    @property
    def cached_blocks(self) -> int:
        return len(self._cached)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def take_events(self) -> list[KvEvent]:
        events, self._events = self._events, []
        return events

    # --- prefix cache -----------------------------------------------------------------------

    def cached_prefix(self, hashes: Sequence[int]) -> tuple[int, int]:
        """How many leading `hashes` are cached, and how many of those blocks nobody references
        (taking them would remove them from the free count). Takes no references."""
        if not self.enable_prefix_caching:
            return 0, 0
        matched = unreferenced = 0
        for h in hashes:
            block_id = self._cached.get(h)
            if block_id is None:
                break
            matched += 1
            if self._ref_counts[block_id] == 0:
                unreferenced += 1
        return matched, unreferenced

    def acquire_prefix(self, table: BlockTable, hashes: Sequence[int]) -> None:
        """Start an empty `table` with references to the cached blocks of `hashes`, which the
        caller has found cached with `cached_prefix`."""
        assert not table.block_ids
        for h in hashes:
            block_id = self._cached[h]
            if self._ref_counts[block_id] == 0:
                del self._evictable[block_id]
            self._ref_counts[block_id] += 1
            table.block_ids.append(block_id)
        table.committed = len(hashes)

    # --- allocation -------------------------------------------------------------------------

    def grow(self, table: BlockTable, num_tokens: int) -> None:
        """Give `table` enough blocks for `num_tokens` tokens, evicting unreferenced cached
        blocks (least recently freed first) if needed; all or nothing."""
        count = self.blocks_for(num_tokens) - len(table.block_ids)
        if count <= 0:
            return
        if count > self.free_blocks:
            raise OutOfBlocksError(f"need {count} blocks, {self.free_blocks} free")
        removed: list[int] = []
        for _ in range(count):
            if self._free:
                block_id = self._free.pop()
            else:
                block_id, _ = self._evictable.popitem(last=False)
                h = self._hash[block_id]
                assert h is not None
                removed.append(h)
                del self._cached[h]
                self._hash[block_id], self._parent[block_id], self._tokens[block_id] = None, None, ()
            self._ref_counts[block_id] = 1
            table.block_ids.append(block_id)
        if removed:
            self._events.append(KvRemoved(block_hashes=removed))

    def release(self, table: BlockTable) -> None:
        """Drop the table's references, tail first, so deeper blocks become older in the LRU."""
        ref_counts = self._ref_counts
        for block_id in reversed(table.block_ids):
            ref_counts[block_id] -= 1
            if ref_counts[block_id] == 0:
                if self._hash[block_id] is not None:
                    self._evictable[block_id] = None
                else:
                    self._free.append(block_id)
        table.block_ids = []
        table.committed = 0

    def commit_full_blocks(self, table: BlockTable, hashes: Sequence[int], token_ids: Sequence[int], full: int) -> None:
        """Offer the table's blocks `committed..full-1`, now full of computed tokens, to the
        prefix cache; `hashes` holds at least `full` chained block hashes.

        A block whose hash is already cached under another block id (two sequences computed
        the same prefix at once) stays private: the cache keeps the first copy. Newly cached
        blocks are announced as one `stored` event per contiguous run.
        """
        first = table.committed
        table.committed = full
        if not self.enable_prefix_caching or full <= first:
            return
        size = self.block_size
        run: list[KvBlock] = []
        run_parent: int | None = None
        for index in range(first, full):
            h = hashes[index]
            parent = hashes[index - 1] if index else None
            block_id = table.block_ids[index]
            if h not in self._cached and self._hash[block_id] is None:
                tokens = tuple(token_ids[index * size : (index + 1) * size])
                self._hash[block_id], self._parent[block_id] = h, parent
                self._tokens[block_id], self._depth[block_id] = tokens, index
                self._cached[h] = block_id
                if not run:
                    run_parent = parent
                run.append(KvBlock(h, list(tokens)))
            elif run:
                self._events.append(KvStored(parent_hash=run_parent, blocks=run))
                run = []
        if run:
            self._events.append(KvStored(parent_hash=run_parent, blocks=run))

    # --- whole cache ------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget the whole prefix cache, as `cleared` tells subscribers. Blocks still in use
        stay with their sequences, but privately: nothing new can match them."""
        if not self.enable_prefix_caching:
            return
        for block_id in self._cached.values():
            self._hash[block_id], self._parent[block_id], self._tokens[block_id] = None, None, ()
        self._free.extend(self._evictable)
        self._evictable.clear()
        self._cached.clear()
        self._events.append(KvCleared())

    def snapshot(self) -> list[KvStored]:
        """Every cached block as a `stored` event, parents before children."""
        snapshot: list[KvStored] = []
        for block_id in sorted(self._cached.values(), key=self._depth.__getitem__):
            h = self._hash[block_id]
            assert h is not None
            snapshot.append(KvStored(parent_hash=self._parent[block_id], blocks=[KvBlock(h, list(self._tokens[block_id]))]))
        return snapshot
