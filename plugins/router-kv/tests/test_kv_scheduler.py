"""The cost model's choice: argmin with random ties, and temperature sampling."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from dynamo_core.routers.base import WorkerState
from dynamo_router_kv.load import LoadTracker
from dynamo_router_kv.scheduler import WorkerScore, choose, score_workers, selection_probabilities


def _scores(costs: list[float], temperature: float) -> list[WorkerScore]:
    probabilities = selection_probabilities(costs, temperature)
    return [WorkerScore(worker_id=f"w{i}", overlap_blocks=0, blocks_to_prefill=0, active_decode_blocks=0,
                        queued_prefill_blocks=0.0, cost=c, probability=p)
            for i, (c, p) in enumerate(zip(costs, probabilities))]


def test_temperature_zero_always_picks_the_lowest_cost():
    rng = random.Random(0)
    scores = _scores([5.0, 2.0, 9.0], 0.0)
    assert {choose(scores, rng).worker_id for _ in range(100)} == {"w1"}


def test_ties_are_broken_at_random():
    rng = random.Random(0)
    scores = _scores([3.0, 1.0, 1.0, 1.0], 0.0)
    picks = Counter(choose(scores, rng).worker_id for _ in range(3000))
    assert set(picks) == {"w1", "w2", "w3"}
    assert all(abs(n - 1000) < 120 for n in picks.values()), picks


def test_temperature_probabilities_are_a_softmax_of_costs_divided_by_the_largest():
    costs, t = [0.0, 10.0, 20.0, 40.0], 0.5
    weights = [math.exp(-c / 40.0 / t) for c in costs]
    expected = [w / sum(weights) for w in weights]
    assert selection_probabilities(costs, t) == pytest.approx(expected)


def test_temperature_sampling_is_scale_free():
    costs = [3.0, 5.0, 8.0]
    base = selection_probabilities(costs, 0.7)
    assert selection_probabilities([c * 1000 for c in costs], 0.7) == pytest.approx(base)


def test_near_equal_costs_get_near_equal_chances():
    assert selection_probabilities([1000.0, 1010.0], 0.1) == pytest.approx([0.5, 0.5], abs=0.03)


def test_higher_temperature_flattens_the_distribution():
    costs = [0.0, 5.0, 10.0]
    cold, warm, hot = (selection_probabilities(costs, t)[0] for t in (0.1, 1.0, 10.0))
    assert cold > warm > hot > 1 / 3


def test_all_zero_costs_are_chosen_uniformly():
    assert selection_probabilities([0.0, 0.0], 1.0) == [0.5, 0.5]


def test_sampled_frequencies_follow_the_probabilities():
    rng = random.Random(7)
    costs = [1.0, 2.0, 4.0, 8.0]
    scores = _scores(costs, 0.5)
    n = 40_000
    picks = Counter(choose(scores, rng).worker_id for _ in range(n))
    for score in scores:
        expected = n * score.probability
        # Within 5 standard deviations of a binomial count.
        sd = math.sqrt(n * score.probability * (1 - score.probability))
        assert abs(picks[score.worker_id] - expected) < 5 * sd + 1, (score, picks)


def test_cost_weighs_blocks_to_prefill_against_decode_and_queued_load():
    loads = LoadTracker()
    loads.add_worker("a")
    loads.add_worker("b")
    loads.routed("r1", "b", prefill_tokens=32, decode_blocks=5, now=0.0)
    scores = score_workers(prompt_tokens=42, block_size=4, overlaps={"a": 3, "b": 10},
                           workers=[WorkerState("a"), WorkerState("b")], loads=loads,
                           overlap_weight=2.0, temperature=0.0)
    a, b = scores
    assert (a.overlap_blocks, a.blocks_to_prefill, a.active_decode_blocks, a.queued_prefill_blocks) == (3, 8, 0, 0.0)
    assert (b.overlap_blocks, b.blocks_to_prefill, b.active_decode_blocks, b.queued_prefill_blocks) == (10, 1, 5, 8.0)
    assert a.cost == 16.0 and b.cost == 2.0 + 5 + 8.0
    assert (a.probability, b.probability) == (0.0, 1.0)
