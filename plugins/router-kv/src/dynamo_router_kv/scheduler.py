"""The cost model and the choice: which worker a request goes to, given cache overlap and load.

    cost(worker) = overlap_weight × blocks_to_prefill + active_decode_blocks + queued_prefill_blocks

- ``blocks_to_prefill``: the prompt's blocks (a partial last block counts) minus the leading
  blocks the worker already holds;
- ``active_decode_blocks``: the decode load (see `load.WorkerLoad.active_decode_blocks`);
- ``queued_prefill_blocks``: prompt tokens this router sent there that wait for their first
  token, divided by the block size.

All three are in blocks, so the weight trades prefill work against decode load directly.

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

# Costs closer than this (relative) are a tie: float sums of equal terms can differ by an ulp.
_TIE_TOLERANCE = 1e-9


class WorkerScore(msgspec.Struct, kw_only=True):
    """One worker's terms of the cost for one request, and its chance of being chosen."""

    worker_id: str
    overlap_blocks: int
    blocks_to_prefill: int
    active_decode_blocks: int
    queued_prefill_blocks: float
    cost: float
    probability: float = 0.0


def worker_cost(overlap_weight: float, blocks_to_prefill: int, active_decode_blocks: int,
                queued_prefill_blocks: float) -> float:
    return overlap_weight * blocks_to_prefill + active_decode_blocks + queued_prefill_blocks


def score_workers(
    prompt_tokens: int,
    block_size: int,
    overlaps: Mapping[str, int],
    workers: Sequence[WorkerState],
    loads: LoadTracker,
    overlap_weight: float,
    temperature: float,
) -> list[WorkerScore]:
    """Every worker's cost for a prompt of ``prompt_tokens`` tokens, in the order of
    ``workers``, with the probability `choose` gives it.

    ``overlaps`` is the indexer's answer: per worker, the prompt's leading blocks it holds.
    """
    prompt_blocks = -(-prompt_tokens // block_size)
    scores = []
    for worker in workers:
        load = loads.load(worker.worker_id)
        overlap = overlaps.get(worker.worker_id, 0)
        to_prefill = prompt_blocks - overlap
        decode = load.active_decode_blocks
        queued = load.prefill_tokens / block_size
        scores.append(WorkerScore(
            worker_id=worker.worker_id,
            overlap_blocks=overlap,
            blocks_to_prefill=to_prefill,
            active_decode_blocks=decode,
            queued_prefill_blocks=queued,
            cost=worker_cost(overlap_weight, to_prefill, decode, queued),
        ))
    for score, p in zip(scores, selection_probabilities([s.cost for s in scores], temperature)):
        score.probability = p
    return scores


def _lowest(costs: Sequence[float]) -> list[int]:
    low = min(costs)
    limit = low + _TIE_TOLERANCE * max(1.0, abs(low))
    return [i for i, c in enumerate(costs) if c <= limit]


def selection_probabilities(costs: Sequence[float], temperature: float) -> list[float]:
    """The chance `choose` picks each index of ``costs`` (non-negative, not empty)."""
    if temperature <= 0:
        lowest = _lowest(costs)
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
