"""Keeping the index in step with each worker's stream of KV events.

Each worker numbers its event batches; ``event_id`` grows by one per batch. A stream is in
step from a `KvSnapshot` (what every subscription starts with) onwards. A batch whose id is
not the previous one plus one means batches were lost, and so does a `stored` run whose
parent block the index does not know for that worker. Either way the worker's index entries
are dropped (they may be wrong in ways no later event fixes), a fresh snapshot is asked for,
and the worker's batches are ignored until it arrives and replaces its state. A batch whose
id is not above the last one applied is a duplicate of one already applied and is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from dynamo_core.protocols.kv_events import KvCleared, KvEventBatch, KvRemoved, KvSnapshot, KvStored

from dynamo_router_kv import metrics
from dynamo_router_kv.indexer import KvIndexer, UnknownParentError

log = logging.getLogger("dynamo_router_kv")


@dataclass(slots=True)
class _Stream:
    last_event_id: int | None = None  # None: waiting for a snapshot


class KvEventApplier:
    """Applies workers' event batches and snapshots to a `KvIndexer`, detecting lost events."""

    def __init__(self, indexer: KvIndexer, request_resync: Callable[[str], None], model: str) -> None:
        self._indexer = indexer
        self._request_resync = request_resync
        self._streams: dict[str, _Stream] = {}
        self._counted = {
            kind: metrics.EVENTS.labels(model, kind) for kind in ("stored", "removed", "cleared", "snapshot")
        }
        self._gaps = metrics.EVENT_GAPS.labels(model)

    def add_worker(self, worker_id: str) -> None:
        """Expect events from ``worker_id``; they apply from its first snapshot on."""
        self._streams.setdefault(worker_id, _Stream())

    def remove_worker(self, worker_id: str) -> None:
        """Stop following ``worker_id`` (its index entries are the caller's to drop)."""
        self._streams.pop(worker_id, None)

    def in_step(self, worker_id: str) -> bool:
        """Whether ``worker_id``'s events are being applied (not waiting for a snapshot)."""
        stream = self._streams.get(worker_id)
        return stream is not None and stream.last_event_id is not None

    def apply_snapshot(self, snapshot: KvSnapshot) -> None:
        """Replace the worker's index state with ``snapshot``; its stream is in step again."""
        stream = self._streams.get(snapshot.worker_id)
        if stream is None:
            log.debug("snapshot of unknown worker %s ignored", snapshot.worker_id)
            return
        worker = snapshot.worker_id
        self._indexer.clear_worker(worker)
        for run in snapshot.stored:
            try:
                self._indexer.apply_stored(worker, run.parent_hash, run.blocks)
            except UnknownParentError as exc:
                # A snapshot is the engine's whole cache: a dangling parent is the engine's
                # inconsistency, and asking again would return the same. Keep the rest.
                log.warning("snapshot of %s: %s; run of %d blocks skipped", worker, exc, len(run.blocks))
        stream.last_event_id = snapshot.event_id
        self._counted["snapshot"].inc()

    def apply_batch(self, batch: KvEventBatch) -> None:
        worker = batch.worker_id
        stream = self._streams.get(worker)
        if stream is None or stream.last_event_id is None:
            return  # unknown worker, or the snapshot asked for will cover this batch
        if batch.event_id <= stream.last_event_id:
            log.debug("worker %s: batch %d already applied (last %d)", worker, batch.event_id, stream.last_event_id)
            return
        if batch.event_id != stream.last_event_id + 1:
            self._lost(worker, stream, f"batch {batch.event_id} follows {stream.last_event_id}")
            return
        stream.last_event_id = batch.event_id
        indexer = self._indexer
        for event in batch.events:
            if isinstance(event, KvStored):
                try:
                    indexer.apply_stored(worker, event.parent_hash, event.blocks)
                except UnknownParentError as exc:
                    self._lost(worker, stream, str(exc))
                    return
                self._counted["stored"].inc()
            elif isinstance(event, KvRemoved):
                indexer.apply_removed(worker, event.block_hashes)
                self._counted["removed"].inc()
            elif isinstance(event, KvCleared):
                indexer.clear_worker(worker)
                self._counted["cleared"].inc()

    def _lost(self, worker: str, stream: _Stream, reason: str) -> None:
        log.warning("worker %s: KV events lost (%s); dropping its index entries until a fresh snapshot", worker, reason)
        self._gaps.inc()
        self._indexer.clear_worker(worker)
        stream.last_event_id = None
        self._request_resync(worker)
