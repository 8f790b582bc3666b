"""Which worker holds which prompt prefixes: a prefix tree over chained block hashes.

Because a block's hash is chained from its parent's, a hash names a whole prefix, and the tree
flattens into one dict from block hash to the set of workers holding that block (a bitmask
over small per-worker indices). `find_matches` walks a request's hashes from the root and
stops when no worker holds the next block: per worker, the depth at which it dropped out is
the number of leading blocks it already holds.

KV events carry engine hashes; each worker's map from engine hash to ours lets `removed`
events (engine hashes only) find our blocks, and lets a `stored` event find its parent.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynamo_core.protocols.kv_events import KvBlock

from dynamo_router_kv.hashing import block_hash


class UnknownParentError(Exception):
    """A stored event's parent block is not indexed for that worker: an event was lost."""


class KvIndexer:
    def __init__(self) -> None:
        self._owners: dict[int, int] = {}  # our block hash -> bitmask of workers holding it
        self._bit: dict[str, int] = {}  # worker id -> its bit
        self._free_bits: list[int] = []
        self._next_bit = 0
        self._engine_map: dict[str, dict[int, int]] = {}  # worker -> engine hash -> our hash
        # worker -> our hash -> how many of its engine blocks have it (an engine may hold the
        # same content twice, e.g. two requests computed it at once)
        self._refs: dict[str, dict[int, int]] = {}
        self._worker_of_bit: dict[int, str] = {}

    # --- workers ----------------------------------------------------------------------------

    def _worker_bit(self, worker: str) -> int:
        bit = self._bit.get(worker)
        if bit is None:
            index = self._free_bits.pop() if self._free_bits else self._next_bit
            if index == self._next_bit:
                self._next_bit += 1
            bit = self._bit[worker] = 1 << index
            self._worker_of_bit[bit] = worker
            self._engine_map[worker] = {}
            self._refs[worker] = {}
        return bit

    def clear_worker(self, worker: str) -> None:
        bit = self._bit.get(worker)
        if bit is None:
            return
        owners = self._owners
        keep = ~bit
        for ours in self._refs[worker]:
            mask = owners.get(ours, 0) & keep
            if mask:
                owners[ours] = mask
            else:
                owners.pop(ours, None)
        self._engine_map[worker] = {}
        self._refs[worker] = {}

    def remove_worker(self, worker: str) -> None:
        self.clear_worker(worker)
        bit = self._bit.pop(worker, None)
        if bit is not None:
            self._engine_map.pop(worker, None)
            self._refs.pop(worker, None)
            self._worker_of_bit.pop(bit, None)
            self._free_bits.append(bit.bit_length() - 1)

    # --- events -----------------------------------------------------------------------------

    def apply_stored(self, worker: str, parent_engine_hash: int | None, blocks: Sequence[KvBlock]) -> list[int]:
        """Index a run of blocks; return our hashes of them. Raises UnknownParentError."""
        bit = self._worker_bit(worker)
        engine_map = self._engine_map[worker]
        if parent_engine_hash is None:
            parent = None
        else:
            parent = engine_map.get(parent_engine_hash)
            if parent is None:
                raise UnknownParentError(f"worker {worker}: parent block {parent_engine_hash} is not indexed")
        owners = self._owners
        refs = self._refs[worker]
        ours_list = []
        for block in blocks:
            ours = block_hash(parent, block.token_ids)
            previous = engine_map.get(block.block_hash)
            if previous != ours:
                if previous is not None:  # the engine reused a hash for new content
                    self._unref(worker, bit, previous)
                engine_map[block.block_hash] = ours
                refs[ours] = refs.get(ours, 0) + 1
                owners[ours] = owners.get(ours, 0) | bit
            ours_list.append(ours)
            parent = ours
        return ours_list

    def _unref(self, worker: str, bit: int, ours: int) -> None:
        refs = self._refs[worker]
        count = refs.get(ours, 0) - 1
        if count > 0:
            refs[ours] = count
            return
        refs.pop(ours, None)
        mask = self._owners.get(ours, 0) & ~bit
        if mask:
            self._owners[ours] = mask
        else:
            self._owners.pop(ours, None)

    def apply_removed(self, worker: str, engine_hashes: Sequence[int]) -> None:
        bit = self._bit.get(worker)
        if bit is None:
            return
        engine_map = self._engine_map[worker]
        for engine_hash in engine_hashes:
            ours = engine_map.pop(engine_hash, None)
            if ours is not None:
                self._unref(worker, bit, ours)

    # Approximate mode: the router records its own guesses, keyed by our hashes directly.
    def add_own_hashes(self, worker: str, hashes: Sequence[int]) -> None:
        bit = self._worker_bit(worker)
        engine_map = self._engine_map[worker]
        refs = self._refs[worker]
        owners = self._owners
        for h in hashes:
            if h not in engine_map:
                engine_map[h] = h
                refs[h] = refs.get(h, 0) + 1
                owners[h] = owners.get(h, 0) | bit

    def remove_own_hashes(self, worker: str, hashes: Sequence[int]) -> None:
        self.apply_removed(worker, hashes)

    # --- queries ----------------------------------------------------------------------------

    def find_matches(self, hashes: Sequence[int]) -> dict[str, int]:
        """Per worker, how many leading blocks of `hashes` it holds (workers with 0 omitted)."""
        owners = self._owners
        result: dict[str, int] = {}
        active = 0
        for depth, h in enumerate(hashes):
            mask = owners.get(h, 0)
            if depth == 0:
                active = mask
            else:
                dropped = active & ~mask
                if dropped:
                    self._record(dropped, depth, result)
                active &= mask
            if not active:
                return result
        self._record(active, len(hashes), result)
        return result

    def _record(self, bits: int, depth: int, result: dict[str, int]) -> None:
        worker_of = self._worker_of_bit
        while bits:
            low = bits & -bits
            result[worker_of[low]] = depth
            bits ^= low

    def worker_block_count(self, worker: str) -> int:
        return len(self._refs.get(worker, ()))

    @property
    def distinct_blocks(self) -> int:
        return len(self._owners)

    @property
    def workers(self) -> list[str]:
        return list(self._bit)
