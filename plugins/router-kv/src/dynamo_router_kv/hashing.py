"""The router's block hashes: xxh3-64 over a full block's token ids, chained by seeding each
block's hash with its parent's, so equal hashes mean equal prefixes.

Engines hash blocks their own way; the router recomputes these from the tokens that KV events
carry, so one scheme covers every engine.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import xxhash

_ROOT_SEED = 0x5EED_D1A0


def block_hash(parent: int | None, tokens: Sequence[int]) -> int:
    return xxhash.xxh3_64_intdigest(array("I", tokens).tobytes(), seed=_ROOT_SEED if parent is None else parent)


def prompt_block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """Chained hashes of every full block of the prompt (a partial last block has none)."""
    data = array("I", token_ids).tobytes()
    step = block_size * 4
    hashes: list[int] = []
    seed = _ROOT_SEED
    digest = xxhash.xxh3_64_intdigest
    for start in range(0, len(data) - step + 1, step):
        seed = digest(data[start : start + step], seed=seed)
        hashes.append(seed)
    return hashes
