"""Which worker holds which prompt prefixes, built from the workers' KV events.

Conceptually a prefix tree over block hashes. Because the router's hashes are chained (a
block's hash names its whole prefix, see `hashing`), the tree needs no edges: it is stored
flattened, as one dict from block hash to the set of workers holding that block, the set
being an int bitmask over small per-worker indices. `find_matches` walks a request's hashes
from the first block and stops when no worker holds the next one; per worker, the depth at
which its bit dropped out is the number of leading blocks it holds. A block held without its
parent (an engine may evict a parent first) is kept but never counted, as in a real tree.

KV events name blocks by the engine's hashes. Per worker the index keeps the map from engine
hash to our hash: a `stored` event finds its parent's hash there (to chain from), and a
`removed` event, which carries engine hashes only, finds the blocks to drop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dynamo_core.protocols.kv_events import KvBlock

from dynamo_router_kv.hashing import block_hash


class UnknownParentError(LookupError):
    """A stored run's parent block is not indexed for that worker: an event was lost."""


class _WorkerBlocks:
    """One worker's part of the index."""

    __slots__ = ("bit", "engine_to_ours", "duplicates", "held")

    def __init__(self, bit: int) -> None:
        self.bit = bit
        self.engine_to_ours: dict[int, int] = {}
        # Our hash -> how many engine blocks beyond the first have that content (rare: two
        # requests computed the same prefix at once). Kept apart so the common case costs
        # no second dict entry per block.
        self.duplicates: dict[int, int] = {}
        self.held = 0  # distinct blocks (our hashes) this worker holds


class KvIndexer:
    """A flattened prefix tree: block hash -> bitmask of the workers that hold that block.

    Not thread-safe; the router calls it from the frontend's event loop only.
    """

    def __init__(self) -> None:
        self._owners: dict[int, int] = {}
        self._workers: dict[str, _WorkerBlocks] = {}
        self._worker_of_bit: dict[int, str] = {}
        self._free_indices: list[int] = []  # bit indices of removed workers, reused first
        self._next_index = 0

    # --- workers ----------------------------------------------------------------------------

    def _worker(self, worker_id: str) -> _WorkerBlocks:
        worker = self._workers.get(worker_id)
        if worker is None:
            # Reusing freed indices keeps the masks, and so every `&` and `|`, small.
            index = self._free_indices.pop() if self._free_indices else self._next_index
            if index == self._next_index:
                self._next_index += 1
            worker = self._workers[worker_id] = _WorkerBlocks(1 << index)
            self._worker_of_bit[worker.bit] = worker_id
        return worker

    def clear_worker(self, worker_id: str) -> None:
        """Forget every block of ``worker_id`` (it keeps its place in the index)."""
        worker = self._workers.get(worker_id)
        if worker is None:
            return
        owners = self._owners
        keep = ~worker.bit
        for ours in worker.engine_to_ours.values():
            mask = owners.get(ours, 0) & keep
            if mask:
                owners[ours] = mask
            else:
                owners.pop(ours, None)
        worker.engine_to_ours = {}
        worker.duplicates = {}
        worker.held = 0

    def remove_worker(self, worker_id: str) -> None:
        """Forget ``worker_id`` and its blocks; its bit index goes to the next new worker."""
        if worker_id not in self._workers:
            return
        self.clear_worker(worker_id)
        worker = self._workers.pop(worker_id)
        del self._worker_of_bit[worker.bit]
        self._free_indices.append(worker.bit.bit_length() - 1)

    # --- blocks -----------------------------------------------------------------------------

    def _hold(self, worker: _WorkerBlocks, ours: int) -> None:
        mask = self._owners.get(ours, 0)
        if mask & worker.bit:
            worker.duplicates[ours] = worker.duplicates.get(ours, 0) + 1
        else:
            self._owners[ours] = mask | worker.bit
            worker.held += 1

    def _release(self, worker: _WorkerBlocks, ours: int) -> None:
        extra = worker.duplicates.get(ours)
        if extra:
            if extra == 1:
                del worker.duplicates[ours]
            else:
                worker.duplicates[ours] = extra - 1
            return
        mask = self._owners.get(ours, 0) & ~worker.bit
        if mask:
            self._owners[ours] = mask
        else:
            self._owners.pop(ours, None)
        worker.held -= 1

    def apply_stored(self, worker_id: str, parent_engine_hash: int | None, blocks: Sequence[KvBlock]) -> None:
        """Index a run of full blocks that ``worker_id`` cached, in prefix order.

        ``parent_engine_hash`` is the engine's hash of the block before the first one (None:
        the run starts the sequence). Raises `UnknownParentError`, before changing anything,
        when that parent is not indexed for this worker. An engine hash stored again with
        other content replaces the old block.
        """
        worker = self._worker(worker_id)
        engine_to_ours = worker.engine_to_ours
        if parent_engine_hash is None:
            parent = None
        else:
            parent = engine_to_ours.get(parent_engine_hash)
            if parent is None:
                raise UnknownParentError(f"worker {worker_id}: parent block {parent_engine_hash:#x} is not indexed")
        for block in blocks:
            ours = block_hash(parent, block.token_ids)
            previous = engine_to_ours.get(block.block_hash)
            if previous != ours:
                if previous is not None:
                    self._release(worker, previous)
                engine_to_ours[block.block_hash] = ours
                self._hold(worker, ours)
            parent = ours

    def apply_removed(self, worker_id: str, engine_hashes: Iterable[int]) -> None:
        """Drop blocks ``worker_id`` evicted; engine hashes it never stored are ignored."""
        worker = self._workers.get(worker_id)
        if worker is None:
            return
        engine_to_ours = worker.engine_to_ours
        for engine_hash in engine_hashes:
            ours = engine_to_ours.pop(engine_hash, None)
            if ours is not None:
                self._release(worker, ours)

    def insert_hashes(self, worker_id: str, hashes: Iterable[int]) -> None:
        """Mark blocks named by *our* hashes as held by ``worker_id`` (idempotent).

        For the approximate mode, where the router itself plays the engine: the blocks' names
        are our hashes, so `remove_hashes` can drop them again.
        """
        worker = self._worker(worker_id)
        engine_to_ours = worker.engine_to_ours
        for ours in hashes:
            if ours not in engine_to_ours:
                engine_to_ours[ours] = ours
                self._hold(worker, ours)

    def remove_hashes(self, worker_id: str, hashes: Iterable[int]) -> None:
        """Undo `insert_hashes` for these hashes."""
        self.apply_removed(worker_id, hashes)

    # --- queries ----------------------------------------------------------------------------

    def find_matches(self, block_hashes: Sequence[int]) -> dict[str, int]:
        """Per worker, how many leading blocks of ``block_hashes`` it holds.

        Workers holding none of them are left out, so an empty dict means no cache hit.
        """
        owners = self._owners
        result: dict[str, int] = {}
        if not block_hashes:
            return result
        active = owners.get(block_hashes[0], 0)
        for depth in range(1, len(block_hashes)):
            if not active:
                return result
            still = active & owners.get(block_hashes[depth], 0)
            if still != active:
                self._record(active & ~still, depth, result)
                active = still
        self._record(active, len(block_hashes), result)
        return result

    def _record(self, bits: int, depth: int, result: dict[str, int]) -> None:
        worker_of_bit = self._worker_of_bit
        while bits:
            lowest = bits & -bits
            result[worker_of_bit[lowest]] = depth
            bits ^= lowest

    def worker_blocks(self, worker_id: str) -> int:
        """How many distinct blocks ``worker_id`` holds in the index."""
        worker = self._workers.get(worker_id)
        return worker.held if worker else 0

    @property
    def distinct_blocks(self) -> int:
        """Distinct blocks held by at least one worker (the size of the flattened tree)."""
        return len(self._owners)

    @property
    def workers(self) -> list[str]:
        return list(self._workers)
