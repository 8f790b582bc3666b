"""Approximate mode (`--no-kv-events`): the router guesses each worker's cache from its own
decisions instead of subscribing to KV events.

A prompt routed to a worker is assumed cached there for `ttl_s` seconds; routing it again
renews the TTL. A worker is assumed to hold at most its KV capacity (from its model card,
when known): beyond it, the blocks routed longest ago are assumed evicted first, as an LRU
cache would. Only prompt blocks are recorded: the output is not known when routing.

The guesses go into the same `KvIndexer` as events would, named by the router's own hashes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from dynamo_router_kv.indexer import KvIndexer


class AssumedCache:
    """Per worker, the blocks assumed cached and when each assumption expires."""

    def __init__(self, indexer: KvIndexer, ttl_s: float, clock: Callable[[], float]) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self._indexer = indexer
        self._ttl_s = ttl_s
        self._clock = clock
        # Per worker: our hash -> expiry time, oldest first. The TTL is the same for every
        # entry and the clock is monotonic, so renewal order is expiry order and expiring is
        # popping from the front.
        self._expiries: dict[str, OrderedDict[int, float]] = {}
        self._capacity: dict[str, int] = {}

    def add_worker(self, worker_id: str, capacity_blocks: int = 0) -> None:
        """Track ``worker_id``; ``capacity_blocks`` > 0 caps how much it is assumed to hold."""
        self._expiries.setdefault(worker_id, OrderedDict())
        if capacity_blocks > 0:
            self._capacity[worker_id] = capacity_blocks

    def remove_worker(self, worker_id: str) -> None:
        """Stop tracking ``worker_id`` (its index entries are the caller's to drop)."""
        self._expiries.pop(worker_id, None)
        self._capacity.pop(worker_id, None)

    def routed(self, worker_id: str, block_hashes: Sequence[int]) -> None:
        """A prompt with these block hashes went to ``worker_id``: assume them cached there."""
        if not block_hashes:
            return
        entries = self._expiries.setdefault(worker_id, OrderedDict())
        expiry = self._clock() + self._ttl_s
        # Last block first, so a prompt's head counts as used most recently and is evicted
        # last, as engines evict a sequence's tail before the prefix others share.
        for h in reversed(block_hashes):
            entries[h] = expiry
            entries.move_to_end(h)
        self._indexer.insert_hashes(worker_id, block_hashes)
        capacity = self._capacity.get(worker_id, 0)
        if capacity and len(entries) > capacity:
            evicted = [entries.popitem(last=False)[0] for _ in range(len(entries) - capacity)]
            self._indexer.remove_hashes(worker_id, evicted)

    def expire(self) -> None:
        """Drop every assumption whose TTL has passed."""
        now = self._clock()
        for worker_id, entries in self._expiries.items():
            expired = []
            while entries:
                h, expiry = next(iter(entries.items()))
                if expiry > now:
                    break
                entries.popitem(last=False)
                expired.append(h)
            if expired:
                self._indexer.remove_hashes(worker_id, expired)

    def blocks(self, worker_id: str) -> int:
        entries = self._expiries.get(worker_id)
        return len(entries) if entries else 0
