"""The `kv` router: send each request where most of its prompt is already cached, weighed
against how busy each worker is.

For each request: hash the prompt's full blocks (`hashing`), ask the index how many leading
blocks each worker holds (`indexer`), price every worker (`scheduler`, with the load from
`load` and the speeds from `speed`) and draw the cheapest (or sample, with a temperature).
The index follows the workers' KV events (`events`), or, in approximate mode, the router's
own decisions (`approx`). Each request's first token and end are timing samples for `speed`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence

import msgspec

from dynamo_core.protocols.engine import PreprocessedRequest
from dynamo_core.protocols.kv_events import KvEventBatch, KvSnapshot, LoadMetrics
from dynamo_core.protocols.routing import PeerRequest, PeerRequestState
from dynamo_core.routers.base import NoWorkerAvailableError, Router, RouterContext, WorkerState

from dynamo_router_kv import metrics
from dynamo_router_kv.approx import AssumedCache
from dynamo_router_kv.config import KvRouterConfig
from dynamo_router_kv.events import KvEventApplier
from dynamo_router_kv.hashing import prompt_block_hashes
from dynamo_router_kv.indexer import KvIndexer
from dynamo_router_kv.load import LoadTracker
from dynamo_router_kv.scheduler import WorkerScore, choose, score_workers
from dynamo_router_kv.speed import WorkerSpeeds

log = logging.getLogger("dynamo_router_kv")


class KvRouter(Router):
    """KV-cache-aware routing for one model.

    ``clock`` (monotonic seconds) drives the approximate mode's TTL and the timing samples,
    ``rng`` the choice among ties and the temperature sampling; both are injectable for tests.
    """

    def __init__(
        self,
        context: RouterContext,
        config: KvRouterConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if context.block_size <= 0:
            raise ValueError(f"model '{context.model}': block size must be positive, got {context.block_size}")
        self.model = context.model
        self.block_size = context.block_size
        self.config = config if config is not None else KvRouterConfig.from_options(context.options)
        self.indexer = KvIndexer()
        self.loads = LoadTracker()
        self.speeds = WorkerSpeeds()
        self._clock = clock
        self._pool = context.pool
        self._share = context.share
        self._next_peer_sweep = 0.0
        self._rng = rng if rng is not None else random.Random()
        # debug_scores draws from its own generator so that looking does not change routing.
        self._debug_rng = random.Random(self._rng.random())
        self._workers: set[str] = set()
        self._events: KvEventApplier | None = None
        self._assumed: AssumedCache | None = None
        if self.config.use_kv_events:
            self._events = KvEventApplier(self.indexer, context.request_resync, self.model)
        else:
            self._assumed = AssumedCache(self.indexer, self.config.ttl_s, clock)
        self._requested_blocks = metrics.REQUESTED_BLOCKS.labels(self.model)
        self._matched_blocks = metrics.MATCHED_BLOCKS.labels(self.model)
        self._decision_seconds = metrics.DECISION_SECONDS.labels(self.model)
        self._indexed_blocks = metrics.INDEXED_BLOCKS.labels(self.model)
        self._worker_count = metrics.WORKERS.labels(self.model)

    # --- decisions --------------------------------------------------------------------------

    def _score(
        self, request: PreprocessedRequest, workers: Sequence[WorkerState],
    ) -> tuple[list[int], list[WorkerScore]]:
        if not workers:
            raise NoWorkerAvailableError(f"no worker serves model '{self.model}'")
        if self._assumed is not None:
            self._assumed.expire()
        hashes = prompt_block_hashes(request.token_ids, self.block_size)
        overlaps = self.indexer.find_matches(hashes)
        scores = score_workers(len(request.token_ids), self.block_size, overlaps, workers, self.loads,
                               self.config.overlap_weight, self.config.temperature, self.speeds)
        return hashes, scores

    def select_worker(self, request: PreprocessedRequest, workers: Sequence[WorkerState]) -> str:
        started = time.perf_counter()
        hashes, scores = self._score(request, workers)
        chosen = choose(scores, self._rng)
        prompt_tokens = len(request.token_ids)
        prompt_blocks = -(-prompt_tokens // self.block_size)
        # An engine computes at least the last prompt token, even on a full cache hit; a decode
        # worker given a prefill worker's KV computes no more than that (it pulls the rest).
        if _kv_arrives_by_transfer(request):
            prefill_tokens = 1
        else:
            prefill_tokens = max(prompt_tokens - chosen.overlap_blocks * self.block_size, 1)
        self.loads.routed(request.request_id, chosen.worker_id, prefill_tokens, prompt_blocks + 1, now=self._clock())
        self._share_change(request.request_id, chosen.worker_id, "routed", prefill_tokens, prompt_blocks + 1)
        if self._assumed is not None:
            self._assumed.routed(chosen.worker_id, hashes)
            self._indexed_blocks.set(self.indexer.distinct_blocks)
        metrics.DECISIONS.labels(self.model, chosen.worker_id).inc()
        self._requested_blocks.inc(len(hashes))
        self._matched_blocks.inc(chosen.overlap_blocks)
        self._decision_seconds.observe(time.perf_counter() - started)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "model '%s': request %s (%d prompt blocks, %d full) -> %s; scores: %s",
                self.model, request.request_id, prompt_blocks, len(hashes), chosen.worker_id,
                "; ".join(_describe(s, self.config.overlap_weight is None) for s in scores),
            )
        return chosen.worker_id

    def debug_scores(self, request: PreprocessedRequest, workers: Sequence[WorkerState]) -> dict:
        """Per worker: the terms of the cost (`scheduler.WorkerScore`: ``overlap_blocks``,
        ``uncached_tokens``, ``queued_prefill_tokens``, ``prefill_tokens_per_s``,
        ``prefill_overhead_s``, ``prefill_s``, ``running_requests``, ``decode_s``, and the
        block counts of the ``--kv-overlap-weight`` cost), ``prompt_blocks``, ``cost``,
        ``cost_model`` (``ttft`` or ``blocks``), ``probability`` (of being chosen) and
        ``chosen`` (true for the one worker a routing now would pick; at a temperature above
        0 that is one draw). Routes nothing and counts no load."""
        _, scores = self._score(request, workers)
        chosen = choose(scores, self._debug_rng).worker_id
        prompt_blocks = -(-len(request.token_ids) // self.block_size)
        details = {}
        for score in scores:
            row = msgspec.structs.asdict(score)
            del row["worker_id"]
            row["prompt_blocks"] = prompt_blocks
            row["cost_model"] = "ttft" if self.config.overlap_weight is None else "blocks"
            row["chosen"] = score.worker_id == chosen
            details[score.worker_id] = row
        return details

    # --- request lifecycle ------------------------------------------------------------------

    def on_first_token(self, request_id: str, worker_id: str) -> None:
        now = self._clock()
        request = self.loads.first_token(request_id, now=now)
        if request is not None:
            self._share_change(request_id, request.worker_id, "first_token")
            self.speeds.observed_first_token(request.worker_id, request.work_tokens, now - request.routed_at)

    def on_request_finished(self, request_id: str, worker_id: str, output_tokens: int) -> None:
        now = self._clock()
        request = self.loads.finished(request_id)
        if request is not None:
            self._share_change(request_id, request.worker_id, "finished")
        if request is None or request.prefilling or output_tokens < 2:
            return
        # The batch it decoded in: the mean of what ran there at its first token and now.
        batch = (request.batch_at_first_token + self.loads.load(request.worker_id).running_requests + 1) / 2
        self.speeds.observed_decode(batch, (now - request.first_token_at) / (output_tokens - 1))

    # --- routing peers (other frontends) ----------------------------------------------------

    def _share_change(self, request_id: str, worker_id: str, state: PeerRequestState,
                      prefill_tokens: int = 0, decode_blocks: int = 0) -> None:
        self._share(PeerRequest(frontend_id="", model=self.model, pool=self._pool, request_id=request_id,
                                worker_id=worker_id, state=state, prefill_tokens=prefill_tokens,
                                decode_blocks=decode_blocks))

    def on_peer_request(self, request: PeerRequest) -> None:
        """A peer's request counts as load like ours (its timings are the peer's to sample)."""
        now = self._clock()
        if request.state == "routed":
            if request.worker_id in self._workers:
                self.loads.peer_routed(request.frontend_id, request.request_id, request.worker_id,
                                       request.prefill_tokens, request.decode_blocks, now=now)
        elif request.state == "first_token":
            self.loads.first_token(self.loads.peer_key(request.frontend_id, request.request_id), now=now)
        else:
            self.loads.peer_finished(request.frontend_id, request.request_id)
        if now >= self._next_peer_sweep:
            self._next_peer_sweep = now + 10.0
            self.loads.expire_peer_requests(now)

    def on_peer_gone(self, frontend_id: str) -> None:
        self.loads.peer_gone(frontend_id)

    # --- workers, events and load -----------------------------------------------------------

    def on_worker_added(self, worker: WorkerState) -> None:
        self._workers.add(worker.worker_id)
        self.loads.add_worker(worker.worker_id)
        if self._events is not None:
            self._events.add_worker(worker.worker_id)
        if self._assumed is not None:
            self._assumed.add_worker(worker.worker_id, worker.kv_capacity_blocks)
        self._worker_count.set(len(self._workers))

    def on_worker_removed(self, worker_id: str) -> None:
        self._workers.discard(worker_id)
        self.loads.remove_worker(worker_id)
        self.speeds.remove_worker(worker_id)
        if self._events is not None:
            self._events.remove_worker(worker_id)
        if self._assumed is not None:
            self._assumed.remove_worker(worker_id)
        self.indexer.remove_worker(worker_id)
        # Worker ids are per incarnation: keeping their series would grow /metrics forever.
        try:
            metrics.DECISIONS.remove(self.model, worker_id)
        except KeyError:
            pass
        self._worker_count.set(len(self._workers))
        self._indexed_blocks.set(self.indexer.distinct_blocks)

    def wants_kv_events(self) -> bool:
        return self.config.use_kv_events

    def on_kv_events(self, batch: KvEventBatch) -> None:
        if self._events is None:
            return
        self._events.apply_batch(batch)
        self._indexed_blocks.set(self.indexer.distinct_blocks)

    def on_kv_snapshot(self, snapshot: KvSnapshot) -> None:
        if self._events is None:
            return
        self._events.apply_snapshot(snapshot)
        self._indexed_blocks.set(self.indexer.distinct_blocks)

    def on_load(self, metrics: LoadMetrics) -> None:
        self.loads.reported(metrics)


def create(context: RouterContext) -> KvRouter:
    """The `kv` router factory (`RouterSpec.create`)."""
    return KvRouter(context)


def _describe(score: WorkerScore, ttft: bool) -> str:
    """One worker's terms for the debug log."""
    if ttft:
        return (f"{score.worker_id} cost={score.cost * 1000:.1f}ms overlap={score.overlap_blocks} "
                f"uncached={score.uncached_tokens} queued={score.queued_prefill_tokens} "
                f"speed={score.prefill_tokens_per_s:.0f}tok/s overhead={score.prefill_overhead_s * 1000:.1f}ms "
                f"prefill={score.prefill_s * 1000:.1f}ms running={score.running_requests} "
                f"decode={score.decode_s * 1000:.1f}ms p={score.probability:.3f}")
    return (f"{score.worker_id} cost={score.cost:.2f} overlap={score.overlap_blocks} prefill={score.blocks_to_prefill} "
            f"decode={score.active_decode_blocks} queued={score.queued_prefill_blocks:.2f} p={score.probability:.3f}")


def _kv_arrives_by_transfer(request: PreprocessedRequest) -> bool:
    """A disaggregated request's decode phase: its prompt's KV comes from a prefill worker."""
    disagg = request.disagg
    return disagg is not None and disagg.phase == "decode" and disagg.kv is not None
