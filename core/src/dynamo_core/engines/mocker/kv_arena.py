"""The mocker's KV memory in disaggregated roles: real bytes that a transfer must move intact.

Each block of the pool owns `block_size * bytes_per_token` bytes of one registered buffer.
A prefill worker fills the blocks of a prompt with bytes derived from the prompt's tokens
(a block's bytes depend on every token up to the block's end, as real KV does); the decode
worker pulls them into its own blocks and checks every byte against the same derivation, so a
misplaced, stale or damaged block cannot pass unnoticed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from dynamo_core.engines.mocker.kv_cache import block_hash, extend_block_hashes
from dynamo_core.transfer.base import RemoteRegion, TransferAgent


def block_seeds(token_ids: Sequence[int], block_size: int) -> list[int]:
    """One seed per block of `token_ids` (the last may be partial): its chained block hash."""
    seeds = extend_block_hashes([], token_ids, block_size)
    tail = len(token_ids) % block_size
    if tail:
        seeds.append(block_hash(seeds[-1] if seeds else None, token_ids[len(token_ids) - tail :]))
    return seeds


def block_content(seed: int, length: int) -> bytes:
    """The bytes of a block with this seed: a 64-byte digest of it, repeated."""
    digest = hashlib.blake2b(seed.to_bytes(8, "little"), digest_size=64).digest()
    return (digest * (length // 64 + 1))[:length]


class KvArena:
    """Every block's bytes, in one buffer registered with the worker's transfer agent."""

    def __init__(self, agent: TransferAgent, num_blocks: int, block_size: int, bytes_per_token: int):
        self.agent = agent
        self.block_size = block_size
        self.bytes_per_token = bytes_per_token
        self.block_bytes = block_size * bytes_per_token
        self._memory = bytearray(num_blocks * self.block_bytes)  # calloc: pages are touched on first write
        self.view = memoryview(self._memory)
        self.region_id = agent.register(self._memory)
        self.region: RemoteRegion = agent.describe(self.region_id)

    def _extent(self, index: int, num_tokens: int) -> int:
        """Bytes of block `index` (in a sequence of `num_tokens`) that hold KV."""
        return min(self.block_size, num_tokens - index * self.block_size) * self.bytes_per_token

    def fill(self, block_ids: Sequence[int], token_ids: Sequence[int]) -> None:
        """Write the KV of `token_ids` into their blocks (as a prefill computes it)."""
        for index, seed in enumerate(block_seeds(token_ids, self.block_size)):
            start = block_ids[index] * self.block_bytes
            length = self._extent(index, len(token_ids))
            self.view[start : start + length] = block_content(seed, length)

    def damage(self, block_id: int) -> None:
        """Flip one byte of a block (fault injection for tests: `--inject-kv-corruption`)."""
        position = block_id * self.block_bytes
        self.view[position] ^= 0xFF

    def pieces(self, remote_block_ids: Sequence[int], local_block_ids: Sequence[int], first: int, num_tokens: int) -> list[tuple[int, int, int]]:
        """The reads that copy blocks `first..` of a `num_tokens` prompt from a peer's arena
        (same geometry) into ours."""
        size = self.block_bytes
        return [
            (remote_block_ids[i] * size, local_block_ids[i] * size, self._extent(i, num_tokens))
            for i in range(first, len(remote_block_ids))
        ]

    def first_mismatch(self, block_ids: Sequence[int], token_ids: Sequence[int], first: int) -> int | None:
        """The index of the first block from `first` on whose bytes are not the KV of
        `token_ids`, or None when all match."""
        for index, seed in enumerate(block_seeds(token_ids, self.block_size)):
            if index < first:
                continue
            start = block_ids[index] * self.block_bytes
            length = self._extent(index, len(token_ids))
            # tobytes(): bytes compare with memcmp; a memoryview compares item by item.
            if self.view[start : start + length].tobytes() != block_content(seed, length):
                return index
        return None

    def close(self) -> None:
        self.agent.deregister(self.region_id)
        self.view.release()
