"""The router's own block hashes: xxh3-64 over a full block's token ids, chained by seeding each
block's hash with its parent's hash, so that equal hashes mean equal prefixes.

Engines hash blocks their own way (and differently from one another); the router recomputes
these hashes from the token ids that KV events carry, so one scheme covers every engine and
a prompt hashed here can be compared with any worker's cache.

Token ids are packed as unsigned 32-bit integers (every tokenizer's vocabulary fits). A partial
trailing block has no hash: engines cache only full blocks.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import xxhash

# The seed of a first block, i.e. the hash of the empty prefix. Any constant works as long as
# every router uses the same one; a non-zero value keeps it apart from xxh3's default seed.
ROOT_SEED = 0x5EED_D1A0

_digest = xxhash.xxh3_64_intdigest


def block_hash(parent: int | None, token_ids: Sequence[int]) -> int:
    """The hash of one full block whose parent block has hash ``parent`` (None: first block)."""
    return _digest(array("I", token_ids).tobytes(), seed=ROOT_SEED if parent is None else parent)


def prompt_block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """Chained hashes of every full ``block_size`` block of ``token_ids``, in order.

    Equal to folding ``block_hash`` over the blocks; done on one packed buffer because this
    runs for every request and a long prompt has hundreds of blocks.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    data = memoryview(array("I", token_ids).tobytes())
    step = block_size * 4
    hashes: list[int] = []
    seed = ROOT_SEED
    for start in range(0, len(data) - step + 1, step):
        seed = _digest(data[start : start + step], seed=seed)
        hashes.append(seed)
    return hashes
