"""The router's chained block hashes."""

from __future__ import annotations

import random

import pytest

from dynamo_router_kv.hashing import block_hash, prompt_block_hashes


def test_only_full_blocks_are_hashed():
    assert prompt_block_hashes(list(range(15)), 4) == prompt_block_hashes(list(range(12)), 4)
    assert len(prompt_block_hashes(list(range(15)), 4)) == 3
    assert prompt_block_hashes(list(range(3)), 4) == []
    assert prompt_block_hashes([], 4) == []


@pytest.mark.parametrize("seed", range(3))
def test_prompt_hashes_fold_block_hash_over_the_blocks(seed):
    rng = random.Random(seed)
    tokens = [rng.randrange(200_000) for _ in range(rng.randint(0, 300))]
    expected, parent = [], None
    for start in range(0, len(tokens) - 15, 16):
        parent = block_hash(parent, tokens[start : start + 16])
        expected.append(parent)
    assert prompt_block_hashes(tokens, 16) == expected


def test_a_block_hash_depends_on_its_whole_prefix():
    a, b, c = [1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]
    after_a = prompt_block_hashes(a + c, 4)[1]
    after_b = prompt_block_hashes(b + c, 4)[1]
    assert after_a != after_b
    assert prompt_block_hashes(a + c, 4)[1] == prompt_block_hashes(a + c + b, 4)[1]
    # The same tokens first or later in a prompt are different blocks.
    assert prompt_block_hashes(c, 4)[0] != prompt_block_hashes(a + c, 4)[1]


def test_block_size_must_be_positive():
    with pytest.raises(ValueError):
        prompt_block_hashes([1, 2, 3], 0)
