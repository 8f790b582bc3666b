"""The prefix index, checked against a brute-force model on random operation sequences."""

from __future__ import annotations

import random

import pytest

from dynamo_core.protocols.kv_events import KvBlock
from dynamo_router_kv.hashing import prompt_block_hashes
from dynamo_router_kv.indexer import KvIndexer, UnknownParentError

BLOCK = 4
Prefix = tuple[tuple[int, ...], ...]


class BruteForceCache:
    """What each worker's engine holds: engine hash -> the whole token prefix that block ends."""

    def __init__(self) -> None:
        self.held: dict[str, dict[int, Prefix]] = {}

    def store(self, worker: str, parent: Prefix, blocks: list[tuple[int, tuple[int, ...]]]) -> None:
        held = self.held.setdefault(worker, {})
        prefix = parent
        for engine_hash, tokens in blocks:
            prefix = prefix + (tokens,)
            held[engine_hash] = prefix

    def remove(self, worker: str, engine_hashes: list[int]) -> None:
        for h in engine_hashes:
            self.held.get(worker, {}).pop(h, None)

    def drop(self, worker: str) -> None:
        self.held.pop(worker, None)

    def matches(self, prompt: list[tuple[int, ...]]) -> dict[str, int]:
        result = {}
        for worker, held in self.held.items():
            prefixes = set(held.values())
            n = 0
            while n < len(prompt) and tuple(prompt[: n + 1]) in prefixes:
                n += 1
            if n:
                result[worker] = n
        return result

    def distinct_blocks(self) -> int:
        return len({p for held in self.held.values() for p in held.values()})

    def worker_blocks(self, worker: str) -> int:
        return len(set(self.held.get(worker, {}).values()))


def _tokens(prompt: list[tuple[int, ...]], tail: int) -> list[int]:
    return [t for block in prompt for t in block] + [7] * tail


@pytest.mark.parametrize("seed", range(8))
def test_index_agrees_with_brute_force_on_random_operations(seed):
    rng = random.Random(seed)
    index, model = KvIndexer(), BruteForceCache()
    workers = [f"w{i}" for i in range(6)]
    # A small vocabulary of blocks, so that workers share prefixes and contents repeat.
    vocab = [tuple(rng.randrange(50) for _ in range(BLOCK)) for _ in range(5)]
    next_engine_hash = 1
    for _ in range(600):
        worker = rng.choice(workers)
        held = model.held.get(worker, {})
        op = rng.random()
        if op < 0.45:
            # A run under one of the worker's blocks or at the root; engine hashes are
            # sometimes reused for new content, and contents sometimes repeat.
            parent_hash, parent_prefix = rng.choice([(None, ())] + list(held.items()))
            blocks = []
            for _ in range(rng.randint(1, 4)):
                if held and rng.random() < 0.1:
                    engine_hash = rng.choice(list(held))
                else:
                    engine_hash, next_engine_hash = next_engine_hash, next_engine_hash + 1
                blocks.append((engine_hash, rng.choice(vocab)))
            index.apply_stored(worker, parent_hash, [KvBlock(h, list(t)) for h, t in blocks])
            model.store(worker, parent_prefix, blocks)
        elif op < 0.5:
            unknown = next_engine_hash + 10_000
            with pytest.raises(UnknownParentError):
                index.apply_stored(worker, unknown, [KvBlock(next_engine_hash, list(vocab[0]))])
        elif op < 0.75 and held:
            victims = rng.sample(list(held), k=min(len(held), rng.randint(1, 4)))
            victims.append(next_engine_hash + 20_000)  # never stored: ignored
            index.apply_removed(worker, victims)
            model.remove(worker, victims)
        elif op < 0.85:
            index.clear_worker(worker)
            model.drop(worker)
        elif op < 0.92:
            index.remove_worker(worker)
            model.drop(worker)
        # Query with a prefix some worker holds, extended at random, and with a random prompt.
        all_prefixes = [p for h in model.held.values() for p in h.values()]
        held_prompt = list(rng.choice(all_prefixes)) if all_prefixes else []
        for prompt in (held_prompt + [rng.choice(vocab) for _ in range(rng.randint(0, 2))],
                       [rng.choice(vocab) for _ in range(rng.randint(1, 6))]):
            tokens = _tokens(prompt, rng.randint(0, BLOCK - 1))
            assert index.find_matches(prompt_block_hashes(tokens, BLOCK)) == model.matches(prompt)
        assert index.distinct_blocks == model.distinct_blocks()
        assert index.worker_blocks(worker) == model.worker_blocks(worker)


def test_engines_with_different_hashes_map_to_the_same_router_hashes():
    index = KvIndexer()
    tokens = list(range(12))
    index.apply_stored("a", None, [KvBlock(111, tokens[0:4]), KvBlock(222, tokens[4:8])])
    index.apply_stored("a", 222, [KvBlock(333, tokens[8:12])])  # chained from a's own parent
    index.apply_stored("b", None, [KvBlock(0xBEEF, tokens[0:4])])  # another engine's scheme
    hashes = prompt_block_hashes(tokens, 4)
    assert index.find_matches(hashes) == {"a": 3, "b": 1}
    assert index.distinct_blocks == 3


def test_removed_events_find_blocks_through_the_engine_hash_map():
    index = KvIndexer()
    tokens = list(range(12))
    index.apply_stored("a", None, [KvBlock(111, tokens[0:4]), KvBlock(222, tokens[4:8]), KvBlock(333, tokens[8:12])])
    index.apply_removed("a", [333])
    assert index.find_matches(prompt_block_hashes(tokens, 4)) == {"a": 2}
    index.apply_removed("a", [111])
    # The second block is still held, but without its parent it is not a leading block.
    assert index.find_matches(prompt_block_hashes(tokens, 4)) == {}
    assert index.worker_blocks("a") == 1


def test_stored_run_with_unknown_parent_raises_and_changes_nothing():
    index = KvIndexer()
    index.apply_stored("a", None, [KvBlock(1, [1, 2, 3, 4])])
    with pytest.raises(UnknownParentError):
        index.apply_stored("a", 999, [KvBlock(2, [5, 6, 7, 8])])
    with pytest.raises(UnknownParentError):
        index.apply_stored("b", 1, [KvBlock(2, [5, 6, 7, 8])])  # a's block is not b's parent
    assert index.distinct_blocks == 1 and index.worker_blocks("a") == 1 and index.worker_blocks("b") == 0


def test_engine_hash_stored_again_with_new_content_replaces_the_block():
    index = KvIndexer()
    index.apply_stored("a", None, [KvBlock(1, [1, 2, 3, 4])])
    index.apply_stored("a", None, [KvBlock(1, [9, 9, 9, 9])])
    assert index.find_matches(prompt_block_hashes([1, 2, 3, 4], 4)) == {}
    assert index.find_matches(prompt_block_hashes([9, 9, 9, 9], 4)) == {"a": 1}
    assert index.distinct_blocks == 1


def test_same_content_under_two_engine_hashes_stays_until_both_are_removed():
    index = KvIndexer()
    hashes = prompt_block_hashes([1, 2, 3, 4], 4)
    index.apply_stored("a", None, [KvBlock(1, [1, 2, 3, 4])])
    index.apply_stored("a", None, [KvBlock(2, [1, 2, 3, 4])])
    assert index.worker_blocks("a") == 1
    index.apply_removed("a", [1])
    assert index.find_matches(hashes) == {"a": 1}
    index.apply_removed("a", [2])
    assert index.find_matches(hashes) == {} and index.distinct_blocks == 0


def test_removed_worker_drops_its_blocks_and_its_bit_goes_to_the_next_worker():
    index = KvIndexer()
    hashes = prompt_block_hashes([1, 2, 3, 4], 4)
    index.apply_stored("a", None, [KvBlock(1, [1, 2, 3, 4])])
    index.apply_stored("b", None, [KvBlock(7, [1, 2, 3, 4])])
    index.remove_worker("a")
    assert index.workers == ["b"] and index.find_matches(hashes) == {"b": 1}
    index.apply_stored("c", None, [KvBlock(1, [5, 5, 5, 5])])  # takes a's old bit
    assert index.find_matches(hashes) == {"b": 1}
    assert index.find_matches(prompt_block_hashes([5, 5, 5, 5], 4)) == {"c": 1}


def test_inserted_router_hashes_can_be_removed_again():
    index = KvIndexer()
    hashes = prompt_block_hashes(list(range(16)), 4)
    index.insert_hashes("a", hashes)
    index.insert_hashes("a", hashes[:2])  # idempotent
    assert index.find_matches(hashes) == {"a": 4} and index.worker_blocks("a") == 4
    index.remove_hashes("a", hashes[2:])
    assert index.find_matches(hashes) == {"a": 2}


def test_empty_prompt_matches_nothing():
    index = KvIndexer()
    index.apply_stored("a", None, [KvBlock(1, [1, 2, 3, 4])])
    assert index.find_matches([]) == {}
