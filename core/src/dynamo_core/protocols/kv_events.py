"""The event plane boundary: KV cache events and load metrics from workers to routers.

Block hashes here are the *engine's* own hashes; routers recompute their own from
`token_ids` (see DESIGN: KV-aware routing). `event_id` increases by one per batch for a given
worker incarnation (`worker_id`), so a subscriber detects lost batches as a gap.
"""

from __future__ import annotations

import msgspec


class KvBlock(msgspec.Struct, array_like=True):
    block_hash: int
    token_ids: list[int]


class KvStored(msgspec.Struct, tag="stored", kw_only=True):
    """Full blocks newly cached, in prefix order; the first one's parent is `parent_hash`."""

    parent_hash: int | None
    blocks: list[KvBlock]


class KvRemoved(msgspec.Struct, tag="removed", kw_only=True):
    block_hashes: list[int]


class KvCleared(msgspec.Struct, tag="cleared", kw_only=True):
    pass


KvEvent = KvStored | KvRemoved | KvCleared


class KvEventBatch(msgspec.Struct, tag="kv", kw_only=True):
    worker_id: str
    event_id: int
    events: list[KvEvent]


class LoadMetrics(msgspec.Struct, tag="load", kw_only=True):
    worker_id: str
    running_requests: int
    waiting_requests: int
    active_kv_blocks: int
    total_kv_blocks: int


class KvSnapshot(msgspec.Struct, tag="snapshot", kw_only=True):
    """The worker's whole cache as of `event_id`: sent first to every new subscriber, and again
    when one asks to resynchronise after a gap. Equivalent to `cleared` followed by `stored`."""

    worker_id: str
    event_id: int
    stored: list[KvStored]


EventPlaneMessage = KvEventBatch | LoadMetrics | KvSnapshot
