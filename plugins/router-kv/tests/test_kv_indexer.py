"""The prefix index, checked against a brute-force model on random operation sequences."""

from __future__ import annotations

import random

import pytest

from dynamo_core.protocols.kv_events import KvBlock
from dynamo_router_kv.hashing import block_hash, prompt_block_hashes
from dynamo_router_kv.indexer import KvIndexer, UnknownParentError

BLOCK = 4


class BruteForce:
    """Per worker, the set of token prefixes (as tuples of blocks) it holds."""

    def __init__(self):
        self.held: dict[str, dict[int, tuple]] = {}  # worker -> engine hash -> prefix (tuple of blocks)

    def store(self, worker, parent_prefix, blocks):
        held = self.held.setdefault(worker, {})
        prefix = parent_prefix
        for engine_hash, tokens in blocks:
            prefix = prefix + (tuple(tokens),)
            held[engine_hash] = prefix

    def remove(self, worker, engine_hashes):
        for h in engine_hashes:
            self.held.get(worker, {}).pop(h, None)

    def matches(self, prompt_blocks):
        result = {}
        for worker, held in self.held.items():
            prefixes = set(held.values())
            n = 0
            while n < len(prompt_blocks) and tuple(prompt_blocks[: n + 1]) in prefixes:
                n += 1
            if n:
                result[worker] = n
        return result


@pytest.mark.parametrize("seed", range(6))
def test_index_matches_brute_force_on_random_operations(seed):
    rng = random.Random(seed)
    index, model = KvIndexer(), BruteForce()
    workers = [f"w{i}" for i in range(5)]
    # A small block vocabulary so that prefixes are shared often.
    vocab = [[rng.randrange(50) for _ in range(BLOCK)] for _ in range(6)]
    chains: dict[str, list[tuple[int, tuple]]] = {w: [] for w in workers}  # stored (engine hash, prefix)
    next_engine_hash = 1
    for _ in range(400):
        worker = rng.choice(workers)
        op = rng.random()
        if op < 0.55:
            # store a run under an existing prefix of this worker (or at the root)
            options = [(None, ())] + chains[worker]
            parent_hash, parent_prefix = rng.choice(options)
            blocks = []
            for _ in range(rng.randint(1, 3)):
                blocks.append((next_engine_hash, rng.choice(vocab)))
                next_engine_hash += 1
            index.apply_stored(worker, parent_hash, [KvBlock(h, list(t)) for h, t in blocks])
            model.store(worker, parent_prefix, blocks)
            prefix = parent_prefix
            for h, t in blocks:
                prefix = prefix + (tuple(t),)
                chains[worker].append((h, prefix))
        elif op < 0.8 and chains[worker]:
            victims = rng.sample(chains[worker], k=min(len(chains[worker]), rng.randint(1, 3)))
            index.apply_removed(worker, [h for h, _ in victims])
            model.remove(worker, [h for h, _ in victims])
            chains[worker] = [c for c in chains[worker] if c not in victims]
        elif op < 0.9:
            index.clear_worker(worker)
            model.held.pop(worker, None)
            chains[worker] = []
        else:
            index.remove_worker(worker)
            model.held.pop(worker, None)
            chains[worker] = []
        # query with a random prompt made of vocabulary blocks
        prompt_blocks = [rng.choice(vocab) for _ in range(rng.randint(1, 5))]
        tokens = [t for block in prompt_blocks for t in block] + [7] * rng.randint(0, BLOCK - 1)
        got = index.find_matches(prompt_block_hashes(tokens, BLOCK))
        assert got == model.matches([tuple(b) for b in prompt_blocks])


def test_our_hashes_ignore_engine_hashes_and_match_prompt_hashes():
    index = KvIndexer()
    tokens = list(range(12))
    index.apply_stored("a", None, [KvBlock(111, tokens[0:4]), KvBlock(222, tokens[4:8])])
    index.apply_stored("b", None, [KvBlock(999, tokens[0:4])])  # another engine, other hashes
    index.apply_stored("a", 222, [KvBlock(333, tokens[8:12])])
    assert index.find_matches(prompt_block_hashes(tokens, 4)) == {"a": 3, "b": 1}
    assert prompt_block_hashes(tokens, 4)[1] == block_hash(block_hash(None, tokens[0:4]), tokens[4:8])
    index.apply_removed("a", [222])
    assert index.find_matches(prompt_block_hashes(tokens, 4)) == {"a": 1, "b": 1}


def test_stored_event_with_unknown_parent_is_reported():
    index = KvIndexer()
    with pytest.raises(UnknownParentError):
        index.apply_stored("a", 12345, [KvBlock(1, [1, 2, 3, 4])])


def test_removed_worker_frees_its_blocks_and_bit():
    index = KvIndexer()
    index.apply_stored("a", None, [KvBlock(1, [1, 2, 3, 4])])
    index.remove_worker("a")
    assert index.distinct_blocks == 0 and index.workers == []
    index.apply_stored("b", None, [KvBlock(1, [1, 2, 3, 4])])
    assert index.find_matches(prompt_block_hashes([1, 2, 3, 4], 4)) == {"b": 1}
