"""The cost model and the choice: which worker a request goes to, given cache overlap and load.

The default cost is the time the user waits for the first token if the request goes there:

    cost(worker) = prefill_s + decode_s
    prefill_s    = overhead + (queued_prefill_tokens + uncached_tokens) × seconds_per_token
    decode_s     = seconds_per_sequence × running_requests

- ``uncached_tokens``: the prompt's tokens minus those in the leading blocks the worker
  holds (at least one: an engine computes the last token even on a full hit);
- ``queued_prefill_tokens``: uncached tokens of requests already sent there that wait for
  their first token (this router's and, when shared, its peers', see `load`);
- ``overhead``, ``seconds_per_token``: the prefill speed the worker has shown (`speed`);
- ``running_requests``: the batch decoding there (requests past their first token); each of
  its sequences lengthens every step, the one that carries this request's prefill included
  (``seconds_per_sequence``, `speed`). Requests still waiting for their first token are in
  the queued prefill instead, so they are not counted twice.

A worker holding the prefix is skipped only when the wait there is really longer: costs within
``HOME_MARGIN`` of the lowest count as equal, and among equals the worker holding the longest
prefix wins (then the one running fewest requests, then at random). So a prefix keeps its home while that worker keeps up, caches specialise instead
of all holding the same prefixes, and a hot prefix spreads once its home's queue costs more
than prefilling the prefix elsewhere: the queue is part of the estimate.

With ``--kv-overlap-weight w`` the earlier cost, a sum of block counts, is used instead:

    cost(worker) = w × blocks_to_prefill + active_decode_blocks + queued_prefill_blocks

(``active_decode_blocks``: see `load.WorkerLoad.active_decode_blocks`; the queued prefill in
blocks). It must be tuned per workload: there a request in flight, its whole prompt counted
as decode blocks, outweighs a prefix hit unless ``w`` is large.

At temperature 0 the lowest cost wins and exact ties are broken at random. At temperature
``T > 0`` the worker is drawn from ``softmax(-cost / (max_cost × T))``: costs are divided by
the largest one, so they lie in [0, 1] and ``T`` has no unit. Scaling every cost by the same
factor (longer prompts, a different weight) leaves the distribution unchanged, and costs that
differ by a few percent get nearly equal chances however large they are. The odds of the
cheapest against the most expensive worker are at most e^(1/T) (exactly that when the cheapest
costs nothing): about 2.7 at ``T = 1``, 150 at ``T = 0.2``; small ``T`` approaches the argmin.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import msgspec

from dynamo_core.routers.base import WorkerState

from dynamo_router_kv.load import LoadTracker
from dynamo_router_kv.speed import WorkerSpeeds

# Costs closer than this (relative) are a tie: float sums of equal terms can differ by an ulp.
_TIE_TOLERANCE = 1e-9
# Time-to-first-token estimates this close (relative) to the lowest are not "really longer":
# the fits are noisy, and moving a prefix costs its whole prefill on the next worker.
HOME_MARGIN = 0.10


class WorkerScore(msgspec.Struct, kw_only=True):
    """One worker's terms of the cost for one request, and its chance of being chosen.

    Times are seconds. The block terms are those of the ``--kv-overlap-weight`` cost; the
    time terms those of the default one (zero under the block cost)."""

    worker_id: str
    overlap_blocks: int
    blocks_to_prefill: int
    active_decode_blocks: int
    queued_prefill_blocks: float
    uncached_tokens: int = 0
    queued_prefill_tokens: int = 0
    prefill_tokens_per_s: float = 0.0
    prefill_overhead_s: float = 0.0
    prefill_s: float = 0.0
    running_requests: int = 0
    decode_s: float = 0.0
    cost: float
    probability: float = 0.0


def worker_cost(overlap_weight: float, blocks_to_prefill: int, active_decode_blocks: int,
                queued_prefill_blocks: float) -> float:
    """The ``--kv-overlap-weight`` cost, in blocks."""
    return overlap_weight * blocks_to_prefill + active_decode_blocks + queued_prefill_blocks


def score_workers(
    prompt_tokens: int,
    block_size: int,
    overlaps: Mapping[str, int],
    workers: Sequence[WorkerState],
    loads: LoadTracker,
    overlap_weight: float | None,
    temperature: float,
    speeds: WorkerSpeeds | None = None,
) -> list[WorkerScore]:
    """Every worker's cost for a prompt of ``prompt_tokens`` tokens, in the order of
    ``workers``, with the probability `choose` gives it.

    ``overlaps`` is the indexer's answer: per worker, the prompt's leading blocks it holds.
    ``overlap_weight`` None prices the estimated time to first token (with ``speeds``);
    a number, the weighted block count.
    """
    prompt_blocks = -(-prompt_tokens // block_size)
    speeds = speeds if speeds is not None else WorkerSpeeds()
    scores = []
    for worker in workers:
        load = loads.load(worker.worker_id)
        overlap = overlaps.get(worker.worker_id, 0)
        to_prefill = prompt_blocks - overlap
        decode = load.active_decode_blocks
        queued = load.prefill_tokens / block_size
        score = WorkerScore(
            worker_id=worker.worker_id,
            overlap_blocks=overlap,
            blocks_to_prefill=to_prefill,
            active_decode_blocks=decode,
            queued_prefill_blocks=queued,
            cost=0.0,
        )
        if overlap_weight is not None:
            score.cost = worker_cost(overlap_weight, to_prefill, decode, queued)
        else:
            overhead, s_per_token = speeds.prefill_line(worker.worker_id)
            score.uncached_tokens = max(prompt_tokens - overlap * block_size, 1)
            score.queued_prefill_tokens = max(load.prefill_tokens, 0)
            score.prefill_tokens_per_s = 1.0 / s_per_token
            score.prefill_overhead_s = overhead
            score.prefill_s = overhead + (score.queued_prefill_tokens + score.uncached_tokens) * s_per_token
            score.running_requests = load.running_requests
            score.decode_s = speeds.decode_seconds_per_sequence() * score.running_requests
            score.cost = score.prefill_s + score.decode_s
        scores.append(score)
    ttft = overlap_weight is None
    probabilities = selection_probabilities(
        [s.cost for s in scores], temperature, [s.overlap_blocks for s in scores],
        HOME_MARGIN if ttft else 0.0, [s.running_requests for s in scores] if ttft else None)
    for score, p in zip(scores, probabilities):
        score.probability = p
    return scores


def _lowest(costs: Sequence[float], overlaps: Sequence[int] | None, margin: float,
            running: Sequence[int] | None) -> list[int]:
    low = min(costs)
    lowest = [i for i, c in enumerate(costs) if c <= low + _TIE_TOLERANCE * max(1.0, abs(low))]
    if overlaps is not None and margin > 0:
        # Within the margin the longest cached prefix wins; with none cached, the exact lowest.
        near = [i for i, c in enumerate(costs) if c <= low * (1.0 + margin)]
        best = max(overlaps[i] for i in near)
        if best > 0:
            lowest = [i for i in near if overlaps[i] == best]
    if running is not None:
        # Equal waits: the smaller batch (before any decode timing is seen, the only sign of
        # the slowdown a batch causes).
        fewest = min(running[i] for i in lowest)
        lowest = [i for i in lowest if running[i] == fewest]
    return lowest


def selection_probabilities(costs: Sequence[float], temperature: float,
                            overlaps: Sequence[int] | None = None, margin: float = 0.0,
                            running: Sequence[int] | None = None) -> list[float]:
    """The chance `choose` picks each index of ``costs`` (non-negative, not empty).

    At temperature 0 with ``margin`` > 0, costs within ``margin`` (relative) of the lowest
    tie, and among them those with the most ``overlaps`` win; then, with ``running``, those
    with the fewest running requests."""
    if temperature <= 0:
        lowest = _lowest(costs, overlaps, margin, running)
        share = 1.0 / len(lowest)
        chances = [0.0] * len(costs)
        for i in lowest:
            chances[i] = share
        return chances
    top = max(costs)
    if top <= 0:
        return [1.0 / len(costs)] * len(costs)
    low = min(costs)
    # Shifting by the lowest cost changes nothing after normalising and keeps exp() <= 1.
    weights = [math.exp(-(c - low) / (top * temperature)) for c in costs]
    total = sum(weights)
    return [w / total for w in weights]


def choose(scores: Sequence[WorkerScore], rng: random.Random) -> WorkerScore:
    """Draw one of ``scores`` by its probability: at temperature 0 that is the lowest cost,
    at random among ties."""
    candidates = [s for s in scores if s.probability > 0]
    if len(candidates) == 1:
        return candidates[0]
    return rng.choices(candidates, weights=[s.probability for s in candidates])[0]
