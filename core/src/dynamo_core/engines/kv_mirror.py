"""A mirror of an engine's KV cache built from its own events, for `Engine.kv_snapshot()`.

Engines that publish KV events but cannot enumerate their cache (vLLM, SGLang) keep one: it
applies the translated events and answers snapshots, parents first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from dynamo_core.protocols.kv_events import KvBlock, KvCleared, KvEvent, KvRemoved, KvStored


class KvCacheMirror:
    """The blocks an engine holds, as its events describe them: answers `Engine.kv_snapshot()`.

    vLLM and SGLang cannot list their caches, so a router that connects late (or resynchronises
    after a gap) would otherwise see only blocks stored after it arrived.
    """

    def __init__(self) -> None:
        # hash -> (parent, tokens). Tuples of ints, which CPython's collector stops tracking:
        # the mirror holds every cached block (hundreds of thousands on a large GPU), and as
        # lists they would make each full collection walk them all.
        self._blocks: dict[int, tuple[int | None, tuple[int, ...]]] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def apply(self, events: Sequence[KvEvent]) -> None:
        blocks = self._blocks
        for event in events:
            if isinstance(event, KvStored):
                parent = event.parent_hash
                for block in event.blocks:
                    # A re-report of a cached block (vLLM's "full" report mode, say) keeps its entry.
                    if block.block_hash not in blocks:
                        blocks[block.block_hash] = (parent, tuple(block.token_ids))
                    parent = block.block_hash
            elif isinstance(event, KvRemoved):
                for block_hash in event.block_hashes:
                    blocks.pop(block_hash, None)
            elif isinstance(event, KvCleared):
                blocks.clear()

    def snapshot(self) -> list[KvStored]:
        """Every block reachable from a root, parents first, chains merged into one event.

        A block whose parent was evicted before it cannot be placed by a router (nor matched by
        any prompt, since matching walks from the root), so it is left out.
        """
        children: dict[int | None, list[int]] = {}
        for block_hash, (parent, _) in self._blocks.items():
            if parent is None or parent in self._blocks:
                children.setdefault(parent, []).append(block_hash)
        out: list[KvStored] = []
        for chain_parent, chain in self._chains(children):
            out.append(KvStored(parent_hash=chain_parent, blocks=[KvBlock(h, list(self._blocks[h][1])) for h in chain]))
        return out

    @staticmethod
    def _chains(children: dict[int | None, list[int]]) -> Iterator[tuple[int | None, list[int]]]:
        """Depth-first runs of blocks, each run a parent's child followed by its descendants for
        as long as each has exactly one child."""
        stack: list[int | None] = [None]
        while stack:
            parent = stack.pop()
            for head in children.get(parent, ()):
                chain = [head]
                while len(children.get(chain[-1], ())) == 1:
                    chain.append(children[chain[-1]][0])
                stack.append(chain[-1])
                yield parent, chain
