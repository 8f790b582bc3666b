"""TensorRT-LLM's KV cache events, translated into dynamo's.

`LLM.get_kv_cache_events_async(timeout)` yields one dict per event, as
`tensorrt_llm/_utils.py:KVCacheEventSerializer` writes them:
`{"event_id", "window_size", "attention_dp_rank"?, "data": {...}}` with `data["type"]` one of

- `created`: `num_blocks_per_cache_level` (GPU blocks first, then host blocks), once per
  attention window size when the cache is made;
- `stored`: `parent_hash` (None for a root) and `blocks`, each with `block_hash`, `tokens`
  (`{"token_id", "token_extra_id"}` each), `cache_level` and `priority`, and in later releases
  `mm_keys` (empty for text) and `cache_salt` (None unless the request was salted; 1.3 writes
  it on each block, NVIDIA's Dynamo also reads it from the event) and the event's `lora_name`;
- `removed`: `block_hashes`;
- `updated`: a block's `cache_level` / `priority` changed (`{"new_value", "old_value"}`).

Translation: `stored` becomes `KvStored` with each block's token ids (routers recompute their
own hashes from them), `removed` becomes `KvRemoved`. Hashes are unsigned 64-bit ints and stay
so. Left out, because dynamo's token-only block hashes cannot describe them:

- **Partial blocks.** With block reuse TensorRT-LLM also stores a prompt's last, partly filled
  block. It is no full block of ours; it and any block stored under it are dropped, and their
  later removal too.
- **Other attention windows.** A model with sliding-window layers keeps one pool per window
  size, each with its own events. Only the largest window (full attention, the one that holds
  a whole prefix) is reported; the `created` events say which sizes exist.
- Blocks of other cache levels (host memory, when offloading), blocks of multimodal content
  (token extra ids, `mm_keys`), salted blocks (`cache_salt`) and a LoRA adapter's blocks
  (`lora_name`). `updated` events (offloads, priority changes) are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from dynamo_core.protocols.kv_events import KvBlock, KvEvent, KvRemoved, KvStored

log = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1
GPU_CACHE_LEVEL = 0


def engine_hash(value: int) -> int:
    return int(value) & _MASK64


class KvEventTranslator:
    """Turns TensorRT-LLM's event dicts into dynamo events for a cache of `block_size` tokens a block.

    Reads `created` events too: they give the GPU capacity (`kv_capacity_blocks`) and the
    window sizes; events of windows smaller than the largest seen are dropped.
    """

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.windows: dict[int, int] = {}  # window size -> GPU blocks of its pool
        self._dropped: set[int] = set()  # hashes of blocks not reported (partial, or under one)

    @property
    def window_size(self) -> int | None:
        return max(self.windows) if self.windows else None

    @property
    def kv_capacity_blocks(self) -> int:
        window = self.window_size
        return self.windows[window] if window is not None else 0

    def _reported_window(self, event: Mapping[str, Any]) -> bool:
        window = self.window_size
        size = event.get("window_size")
        return window is None or size is None or size == window

    def translate(self, events: Iterable[Mapping[str, Any]]) -> list[KvEvent]:
        out: list[KvEvent] = []
        for event in events:
            data = event.get("data") or {}
            kind = data.get("type")
            if kind == "created":
                levels = data.get("num_blocks_per_cache_level") or [0]
                self.windows[int(event.get("window_size") or 0)] = int(levels[0])
            elif not self._reported_window(event):
                continue
            elif kind == "stored":
                stored = self._stored(data)
                if stored is not None:
                    out.append(stored)
            elif kind == "removed":
                hashes = [engine_hash(h) for h in data.get("block_hashes") or ()]
                kept = [h for h in hashes if h not in self._dropped]
                self._dropped.difference_update(hashes)
                if kept:
                    out.append(KvRemoved(block_hashes=kept))
            elif kind != "updated":
                log.debug("skipping a TensorRT-LLM KV event dynamo does not know: %s", kind)
        return out

    def _stored(self, data: Mapping[str, Any]) -> KvStored | None:
        parent = data.get("parent_hash")
        parent = None if parent is None else engine_hash(parent)
        blocks: list[KvBlock] = []
        cut = parent is not None and parent in self._dropped  # stored under an unreported block
        # Salted or adapter blocks hash differently from the same tokens elsewhere.
        cut = cut or data.get("cache_salt") is not None or bool(data.get("lora_name"))
        for block in data.get("blocks") or ():
            block_hash = engine_hash(block["block_hash"])
            tokens = block.get("tokens") or ()
            if not cut and (
                len(tokens) != self.block_size
                or block.get("cache_level", GPU_CACHE_LEVEL) != GPU_CACHE_LEVEL
                or any(t.get("token_extra_id") for t in tokens)
                or block.get("mm_keys")
                or block.get("cache_salt") is not None
            ):
                cut = True  # this block and the ones chained under it
            if cut:
                self._dropped.add(block_hash)
                continue
            blocks.append(KvBlock(block_hash, [int(t["token_id"]) for t in tokens]))
        if not blocks:
            return None
        return KvStored(parent_hash=parent, blocks=blocks)
