"""The `kv` router: send each request where most of its prompt is already cached, weighed
against how busy each worker is.

cost(worker) = overlap_weight × blocks_to_prefill + active_decode_blocks + queued_prefill_blocks

- blocks_to_prefill: the prompt's blocks minus the leading blocks the worker holds (indexer);
- active_decode_blocks: KV blocks in use there: the larger of what the worker last reported
  and what this router has sent it since (a report lags a burst of requests);
- queued_prefill_blocks: uncached prompt tokens this router sent that have not produced their
  first token yet, in blocks.

The lowest cost wins (ties go to the worker chosen least recently). With `--router-temperature T > 0` the choice is sampled
from softmax(-normalised_cost / T), where costs are min-max normalised to [0, 1] so that T
means the same at any scale. For each request the router counts its prompt blocks plus one
as decode load until it finishes (it cannot know the output length in advance).

Without KV events (`--no-kv-events`), the router assumes the prefix it routed is cached on
that worker for `--router-ttl` seconds.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dynamo_core.protocols.engine import PreprocessedRequest
from dynamo_core.protocols.kv_events import KvCleared, KvEventBatch, KvRemoved, KvSnapshot, KvStored, LoadMetrics
from dynamo_core.routers.base import Router, RouterContext, WorkerState

from dynamo_router_kv import metrics
from dynamo_router_kv.hashing import prompt_block_hashes
from dynamo_router_kv.indexer import KvIndexer, UnknownParentError

log = logging.getLogger("dynamo_router_kv")


@dataclass
class _Sent:
    worker: str
    prefill_tokens: int
    decode_blocks: int
    prefilling: bool = True


@dataclass
class _WorkerLoad:
    prefill_tokens: int = 0
    decode_blocks: int = 0
    reported: LoadMetrics | None = None
    last_event_id: int | None = None
    awaiting_snapshot: bool = True


@dataclass(frozen=True)
class KvRouterConfig:
    overlap_weight: float = 1.0
    temperature: float = 0.0
    use_kv_events: bool = True
    ttl_s: float = 120.0

    @classmethod
    def from_options(cls, options) -> "KvRouterConfig":
        config = cls(
            overlap_weight=getattr(options, "kv_overlap_weight", 1.0),
            temperature=getattr(options, "router_temperature", 0.0),
            use_kv_events=not getattr(options, "no_kv_events", False),
            ttl_s=getattr(options, "router_ttl", 120.0),
        )
        if config.overlap_weight < 0 or config.temperature < 0 or config.ttl_s <= 0:
            raise ValueError("--kv-overlap-weight and --router-temperature must be >= 0, --router-ttl > 0")
        return config


class KvRouter(Router):
    def __init__(self, context: RouterContext, config: KvRouterConfig | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.model = context.model
        self.block_size = context.block_size
        self.config = config or KvRouterConfig.from_options(context.options)
        self._request_resync = context.request_resync
        self._clock = clock
        self._rng = rng or random.Random()
        self.indexer = KvIndexer()
        self._loads: dict[str, _WorkerLoad] = {}
        self._sent: dict[str, _Sent] = {}
        # Approximate mode: (expiry, worker, hashes) and the latest expiry per (worker, hash).
        self._expiries: list[tuple[float, int, str, tuple[int, ...]]] = []
        self._expiry_of: dict[tuple[str, int], float] = {}
        self._seq = 0
        self._last_pick: dict[str, int] = {}
        self._picks = 0

    # --- decisions --------------------------------------------------------------------------

    def _load(self, worker: str) -> _WorkerLoad:
        load = self._loads.get(worker)
        if load is None:
            load = self._loads[worker] = _WorkerLoad()
        return load

    def _scores(self, request: PreprocessedRequest, workers: Sequence[WorkerState]):
        if not self.config.use_kv_events:
            self._expire()
        hashes = prompt_block_hashes(request.token_ids, self.block_size)
        overlaps = self.indexer.find_matches(hashes)
        prompt_blocks = -(-len(request.token_ids) // self.block_size)
        rows = []
        for w in workers:
            load = self._load(w.worker_id)
            overlap = overlaps.get(w.worker_id, 0)
            to_prefill = prompt_blocks - overlap
            reported = load.reported.active_kv_blocks if load.reported else 0
            decode = max(reported, load.decode_blocks)
            queued = load.prefill_tokens / self.block_size
            cost = self.config.overlap_weight * to_prefill + decode + queued
            rows.append((w.worker_id, cost, overlap, to_prefill, decode, queued))
        return hashes, prompt_blocks, rows

    def _choose(self, rows) -> tuple:
        costs = [r[1] for r in rows]
        low, high = min(costs), max(costs)
        if self.config.temperature > 0 and high > low:
            weights = [math.exp(-((c - low) / (high - low)) / self.config.temperature) for c in costs]
            return self._rng.choices(rows, weights=weights)[0]
        # Ties go to the worker chosen least recently, so equal workers take turns.
        tied = [r for r in rows if r[1] == low]
        oldest = min(self._last_pick.get(r[0], -1) for r in tied)
        return self._rng.choice([r for r in tied if self._last_pick.get(r[0], -1) == oldest])

    def select_worker(self, request: PreprocessedRequest, workers: Sequence[WorkerState]) -> str:
        started = time.perf_counter()
        hashes, prompt_blocks, rows = self._scores(request, workers)
        chosen = self._choose(rows)
        worker, cost, overlap, to_prefill = chosen[0], chosen[1], chosen[2], chosen[3]
        self._picks += 1
        self._last_pick[worker] = self._picks
        load = self._load(worker)
        sent = _Sent(worker, prefill_tokens=max(len(request.token_ids) - overlap * self.block_size, 1),
                     decode_blocks=prompt_blocks + 1)
        self._sent[request.request_id] = sent
        load.prefill_tokens += sent.prefill_tokens
        load.decode_blocks += sent.decode_blocks
        if not self.config.use_kv_events:
            self._assume_cached(worker, hashes)
        metrics.DECISIONS.labels(self.model, worker).inc()
        metrics.REQUESTED_BLOCKS.labels(self.model).inc(len(hashes))
        metrics.MATCHED_BLOCKS.labels(self.model).inc(overlap)
        metrics.DECISION_SECONDS.labels(self.model).observe(time.perf_counter() - started)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "route %s (%d blocks) -> %s; scores: %s", request.request_id, prompt_blocks, worker,
                ", ".join(f"{r[0]}: cost={r[1]:.1f} overlap={r[2]} prefill={r[3]} decode={r[4]} queued={r[5]:.1f}" for r in rows),
            )
        return worker

    def debug_scores(self, request: PreprocessedRequest, workers: Sequence[WorkerState]) -> dict:
        _, prompt_blocks, rows = self._scores(request, workers)
        best = min(r[1] for r in rows)
        return {
            r[0]: {
                "overlap_blocks": r[2], "prompt_blocks": prompt_blocks, "blocks_to_prefill": r[3],
                "active_decode_blocks": r[4], "queued_prefill_blocks": r[5], "cost": r[1], "lowest_cost": r[1] == best,
            }
            for r in rows
        }

    # --- request lifecycle ------------------------------------------------------------------

    def on_first_token(self, request_id: str, worker_id: str) -> None:
        sent = self._sent.get(request_id)
        if sent is not None and sent.prefilling:
            sent.prefilling = False
            self._load(sent.worker).prefill_tokens -= sent.prefill_tokens

    def on_request_finished(self, request_id: str, worker_id: str, output_tokens: int) -> None:
        sent = self._sent.pop(request_id, None)
        if sent is None:
            return
        load = self._load(sent.worker)
        if sent.prefilling:
            load.prefill_tokens -= sent.prefill_tokens
        load.decode_blocks -= sent.decode_blocks

    # --- workers and events -----------------------------------------------------------------

    def on_worker_added(self, worker: WorkerState) -> None:
        self._load(worker.worker_id)
        metrics.WORKERS.labels(self.model).set(len(self._loads))

    def on_worker_removed(self, worker_id: str) -> None:
        self.indexer.remove_worker(worker_id)
        self._loads.pop(worker_id, None)
        metrics.WORKERS.labels(self.model).set(len(self._loads))
        metrics.INDEXED_BLOCKS.labels(self.model).set(self.indexer.distinct_blocks)

    def on_load(self, report: LoadMetrics) -> None:
        self._load(report.worker_id).reported = report

    def wants_kv_events(self) -> bool:
        return self.config.use_kv_events

    def _resync(self, worker: str, reason: str) -> None:
        log.warning("worker %s: %s; resynchronising its KV index", worker, reason)
        metrics.EVENT_GAPS.labels(self.model).inc()
        self.indexer.clear_worker(worker)
        load = self._load(worker)
        load.awaiting_snapshot = True
        self._request_resync(worker)

    def on_kv_snapshot(self, snapshot: KvSnapshot) -> None:
        if not self.config.use_kv_events:
            return
        worker = snapshot.worker_id
        self.indexer.clear_worker(worker)
        load = self._load(worker)
        try:
            for stored in snapshot.stored:
                self.indexer.apply_stored(worker, stored.parent_hash, stored.blocks)
        except UnknownParentError as exc:
            log.warning("snapshot of %s is inconsistent (%s); keeping what applied", worker, exc)
        load.last_event_id = snapshot.event_id
        load.awaiting_snapshot = False
        metrics.INDEXED_BLOCKS.labels(self.model).set(self.indexer.distinct_blocks)

    def on_kv_events(self, batch: KvEventBatch) -> None:
        if not self.config.use_kv_events:
            return
        worker = batch.worker_id
        load = self._load(worker)
        if load.awaiting_snapshot:
            return  # the snapshot we asked for will cover these
        if load.last_event_id is not None and batch.event_id != load.last_event_id + 1:
            self._resync(worker, f"event {batch.event_id} follows {load.last_event_id}")
            return
        load.last_event_id = batch.event_id
        indexer = self.indexer
        try:
            for event in batch.events:
                if isinstance(event, KvStored):
                    indexer.apply_stored(worker, event.parent_hash, event.blocks)
                    metrics.EVENTS_APPLIED.labels(self.model, "stored").inc(len(event.blocks))
                elif isinstance(event, KvRemoved):
                    indexer.apply_removed(worker, event.block_hashes)
                    metrics.EVENTS_APPLIED.labels(self.model, "removed").inc(len(event.block_hashes))
                elif isinstance(event, KvCleared):
                    indexer.clear_worker(worker)
                    metrics.EVENTS_APPLIED.labels(self.model, "cleared").inc()
        except UnknownParentError as exc:
            self._resync(worker, str(exc))
        metrics.INDEXED_BLOCKS.labels(self.model).set(indexer.distinct_blocks)

    # --- approximate mode -------------------------------------------------------------------

    def _assume_cached(self, worker: str, hashes: list[int]) -> None:
        if not hashes:
            return
        expiry = self._clock() + self.config.ttl_s
        self.indexer.add_own_hashes(worker, hashes)
        for h in hashes:
            self._expiry_of[(worker, h)] = expiry
        self._seq += 1
        heapq.heappush(self._expiries, (expiry, self._seq, worker, tuple(hashes)))

    def _expire(self) -> None:
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            expiry, _, worker, hashes = heapq.heappop(self._expiries)
            stale = [h for h in hashes if self._expiry_of.get((worker, h)) == expiry]
            for h in stale:
                del self._expiry_of[(worker, h)]
            self.indexer.remove_own_hashes(worker, stale)


def create(context: RouterContext) -> KvRouter:
    return KvRouter(context)
