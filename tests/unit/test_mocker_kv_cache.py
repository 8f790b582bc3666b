"""The mocker's paged KV cache: block tables, prefix cache, LRU eviction and the events they cause."""

from __future__ import annotations

import pytest

from dynamo_core.engines.mocker.kv_cache import BlockPool, BlockTable, OutOfBlocksError, block_hash, extend_block_hashes
from dynamo_core.protocols.kv_events import KvBlock, KvCleared, KvRemoved, KvStored


def _fill(pool: BlockPool, token_ids: list[int]) -> tuple[BlockTable, list[int]]:
    """A sequence that computed all of `token_ids`: blocks taken, full ones offered to the cache."""
    table = BlockTable()
    pool.grow(table, len(token_ids))
    hashes = extend_block_hashes([], token_ids, pool.block_size)
    pool.commit_full_blocks(table, hashes, token_ids, len(token_ids) // pool.block_size)
    return table, hashes


def test_block_hash_is_chained_over_the_prefix_and_fits_63_bits():
    a = extend_block_hashes([], [1, 2, 3, 4, 5, 6], block_size=2)
    b = extend_block_hashes([], [9, 9, 3, 4, 5, 6], block_size=2)
    assert len(a) == 3 and a[0] == block_hash(None, [1, 2]) and a[1] == block_hash(a[0], [3, 4])
    assert a[1] != b[1] and a[2] != b[2]  # same tokens, different prefix
    assert all(0 <= h < 2**63 for h in a + b)
    assert extend_block_hashes(a[:1], [1, 2, 3, 4, 5, 6, 7], block_size=2) == a  # partial block: no hash


def test_prefix_match_reuses_cached_blocks_and_counts_references():
    pool = BlockPool(num_blocks=8, block_size=4)
    first, hashes = _fill(pool, list(range(12)))
    first_ids = list(first.block_ids)
    assert pool.cached_prefix(hashes) == (3, 0)
    pool.release(first)
    assert pool.active_blocks == 0 and pool.cached_blocks == 3 and pool.free_blocks == 8
    assert pool.cached_prefix(hashes[:2] + [12345]) == (2, 2)  # both unreferenced now

    second = BlockTable()
    pool.acquire_prefix(second, hashes[:2])
    assert second.block_ids == first_ids[:2] and second.committed == 2
    assert pool.active_blocks == 2 and pool.free_blocks == 6
    third = BlockTable()
    pool.acquire_prefix(third, hashes[:1])
    pool.release(second)
    assert pool.active_blocks == 1  # the first block is still referenced by `third`


def test_eviction_publishes_removed_events_lru_order():
    pool = BlockPool(num_blocks=4, block_size=2)
    a, a_hashes = _fill(pool, [1, 2, 3, 4])
    b, b_hashes = _fill(pool, [5, 6, 7, 8])
    pool.take_events()
    pool.release(a)  # freed first, so evicted first, and its deeper block before its root
    pool.release(b)

    for expected in (a_hashes[1], a_hashes[0], b_hashes[1]):
        pool.grow(BlockTable(), 1)
        assert pool.take_events() == [KvRemoved(block_hashes=[expected])]
    assert pool.cached_prefix(b_hashes) == (1, 1)


def test_one_allocation_evicting_several_blocks_reports_them_in_one_event():
    pool = BlockPool(num_blocks=4, block_size=2)
    table, hashes = _fill(pool, [1, 2, 3, 4, 5, 6])
    pool.release(table)
    pool.take_events()
    pool.grow(BlockTable(), 8)  # one uncached block, then three evictions
    assert pool.take_events() == [KvRemoved(block_hashes=[hashes[2], hashes[1], hashes[0]])]


def test_referenced_blocks_are_never_evicted():
    pool = BlockPool(num_blocks=4, block_size=2)
    held, _ = _fill(pool, [1, 2, 3, 4])
    other = BlockTable()
    pool.grow(other, 4)
    with pytest.raises(OutOfBlocksError):
        pool.grow(other, 5)
    assert len(other.block_ids) == 2 and pool.cached_blocks == 2  # all or nothing
    pool.release(held)
    pool.grow(other, 5)
    assert len(other.block_ids) == 3


def test_stored_events_group_contiguous_blocks_under_their_parent():
    pool = BlockPool(num_blocks=16, block_size=2)
    tokens = [1, 2, 3, 4, 5, 6, 7, 8]
    table = BlockTable()
    pool.grow(table, 8)
    hashes = extend_block_hashes([], tokens, 2)
    pool.commit_full_blocks(table, hashes, tokens, 1)
    pool.commit_full_blocks(table, hashes, tokens, 4)
    assert pool.take_events() == [
        KvStored(parent_hash=None, blocks=[KvBlock(hashes[0], [1, 2])]),
        KvStored(parent_hash=hashes[0], blocks=[
            KvBlock(hashes[1], [3, 4]), KvBlock(hashes[2], [5, 6]), KvBlock(hashes[3], [7, 8]),
        ]),
    ]


def test_prefix_computed_twice_at_once_is_cached_once():
    pool = BlockPool(num_blocks=8, block_size=2)
    _, hashes = _fill(pool, [1, 2, 3, 4])
    pool.take_events()
    twin, twin_hashes = _fill(pool, [1, 2, 3, 4, 5, 6])  # same first two blocks, computed privately
    assert twin_hashes[:2] == hashes
    assert pool.take_events() == [KvStored(parent_hash=hashes[1], blocks=[KvBlock(twin_hashes[2], [5, 6])])]
    assert pool.cached_blocks == 3
    pool.release(twin)
    assert pool.free_blocks == 6  # the private copies went back uncached, the third is evictable


def test_clear_empties_the_prefix_cache_and_says_so():
    pool = BlockPool(num_blocks=4, block_size=2)
    in_use, hashes = _fill(pool, [1, 2, 3, 4])
    idle, _ = _fill(pool, [5, 6])
    pool.release(idle)
    pool.take_events()
    pool.clear()
    assert pool.take_events() == [KvCleared()]
    assert pool.cached_blocks == 0 and pool.cached_prefix(hashes) == (0, 0)
    assert pool.active_blocks == 2  # blocks in use stay with their sequence
    pool.release(in_use)
    assert pool.free_blocks == 4 and pool.take_events() == []


def test_snapshot_lists_parents_before_children():
    pool = BlockPool(num_blocks=16, block_size=2)
    _fill(pool, [1, 2, 3, 4, 5, 6])
    _fill(pool, [1, 2, 3, 4, 9, 9, 8, 8])  # a branch below the second block
    snapshot = pool.snapshot()
    assert len(snapshot) == 5
    known: set[int | None] = {None}
    for event in snapshot:
        assert event.parent_hash in known
        known.update(block.block_hash for block in event.blocks)


def test_without_prefix_caching_nothing_is_cached_or_announced():
    pool = BlockPool(num_blocks=4, block_size=2, enable_prefix_caching=False)
    table, hashes = _fill(pool, [1, 2, 3, 4])
    assert pool.cached_prefix(hashes) == (0, 0)
    pool.release(table)
    pool.clear()
    assert pool.cached_blocks == 0 and pool.free_blocks == 4
    assert pool.take_events() == [] and pool.snapshot() == []
