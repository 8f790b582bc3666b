"""The mocker engine: its KV cache, scheduler and timing, run for real on asyncio."""

from __future__ import annotations

import asyncio
import time

import pytest

from dynamo_core.engines.mocker.engine import MockerEngine, output_token_pool
from dynamo_core.engines.mocker.kv_cache import BlockPool, OutOfBlocksError
from dynamo_core.engines.mocker.options import MockerConfig
from dynamo_core.engines.mocker.scheduler import MockRequest, Scheduler
from dynamo_core.engines.mocker.timing import H100_LLAMA_8B
from dynamo_core.protocols.engine import FinishReason, OutputOptions, PreprocessedRequest, StopConditions
from dynamo_core.protocols.kv_events import KvCleared, KvRemoved, KvStored


class RecordingSink:
    def __init__(self):
        self.events = []

    def publish(self, events):
        self.events.extend(events)


def _engine(sink=None, **config) -> MockerEngine:
    return MockerEngine(MockerConfig(**config), output_token_pool(None), 32768, sink)


def _request(i, prompt, max_tokens=4, **kw) -> PreprocessedRequest:
    return PreprocessedRequest(request_id=f"r{i}", model="m", token_ids=list(prompt), stop=StopConditions(max_tokens=max_tokens), **kw)


async def _run(engine, request):
    start, first, tokens, last = time.monotonic(), None, [], None
    async for out in engine.generate(request):
        if first is None:
            first = out
            ttft = time.monotonic() - start
        tokens += out.token_ids
        last = out
    return ttft, tokens, first, last


# --- KV cache ---------------------------------------------------------------------------------


def test_prefix_match_reuses_cached_blocks_and_counts_references():
    pool = BlockPool(num_blocks=8, block_size=4)
    prompt = list(range(12))
    hashes = pool.prompt_hashes(prompt)
    blocks = pool.allocate(3)
    pool.commit_full_blocks(blocks, prompt, 0, 3, None)
    assert pool.cached_prefix_length(hashes) == 3
    pool.free(blocks)
    assert pool.active_blocks == 0 and pool.cached_blocks == 3
    again = pool.match_prefix(hashes[:2] + [12345])
    assert again == blocks[:2] and pool.active_blocks == 2


def test_eviction_is_lru_tail_first_and_publishes_removed_events():
    pool = BlockPool(num_blocks=4, block_size=2)
    a, b = pool.allocate(2), pool.allocate(2)
    pool.commit_full_blocks(a, [1, 2, 3, 4], 0, 2, None)
    pool.commit_full_blocks(b, [5, 6, 7, 8], 0, 2, None)
    stored = [e for e in pool.take_events() if isinstance(e, KvStored)]
    assert [len(e.blocks) for e in stored] == [2, 2] and stored[0].parent_hash is None
    a_hashes = [blk.block_hash for blk in stored[0].blocks]
    pool.free(a)  # a freed first: its blocks are the oldest, deepest of them first
    pool.free(b)
    pool.allocate(1)
    removed = pool.take_events()
    assert removed == [KvRemoved(block_hashes=[a_hashes[1]])]
    with pytest.raises(OutOfBlocksError):
        pool.allocate(4)


def test_clear_empties_the_prefix_cache_and_says_so():
    pool = BlockPool(num_blocks=4, block_size=2)
    blocks = pool.allocate(2)
    pool.commit_full_blocks(blocks, [1, 2, 3, 4], 0, 2, None)
    pool.clear()
    assert pool.cached_blocks == 0 and isinstance(pool.take_events()[-1], KvCleared)
    pool.free(blocks)
    assert pool.free_blocks == 4


def test_snapshot_lists_parents_before_children():
    pool = BlockPool(num_blocks=8, block_size=2)
    blocks = pool.allocate(3)
    pool.commit_full_blocks(blocks, [1, 2, 3, 4, 5, 6], 0, 3, None)
    snapshot = pool.snapshot()
    known = {None}
    for event in snapshot:
        assert event.parent_hash in known
        known.add(event.blocks[0].block_hash)


# --- scheduler --------------------------------------------------------------------------------


def test_chunked_prefill_respects_the_step_token_budget():
    pool = BlockPool(num_blocks=64, block_size=4)
    scheduler = Scheduler(pool, max_num_seqs=8, max_num_batched_tokens=10)
    prompt = list(range(25))
    req = MockRequest(request=_request(0, prompt), queue=asyncio.Queue(), prompt_len=25, max_output=2,
                      prompt_hashes=pool.prompt_hashes(prompt), tokens=list(prompt))
    scheduler.add(req)
    chunks = []
    while req.prefilling or not chunks:
        plan = scheduler.schedule()
        assert plan.prefill_tokens <= 10
        chunks.append(plan.prefill_tokens)
        produced = scheduler.commit(plan)
    assert chunks == [10, 10, 5] and produced == [req]


# --- engine -----------------------------------------------------------------------------------


async def test_cached_prefix_reaches_first_token_sooner():
    engine = _engine(speedup_ratio=20)
    prompt = list(range(3, 250)) * 12  # ~3000 tokens: ~250 ms of prefill at 12k tok/s, /20
    cold, _, first_cold, _ = await _run(engine, _request(0, prompt))
    warm, _, first_warm, _ = await _run(engine, _request(1, prompt))
    assert first_cold.cached_tokens == 0 and first_warm.cached_tokens > 2900
    assert warm < cold / 3


async def test_requests_generate_exactly_max_tokens_and_report_usage():
    engine = _engine(speedup_ratio=1000)
    _, tokens, first, last = await _run(engine, _request(0, range(40), max_tokens=17, output=OutputOptions(logprobs=2)))
    assert len(tokens) == 17 and last.finish_reason is FinishReason.LENGTH
    assert first.prompt_tokens == 40 and len(first.top_logprobs[0]) == 2 and first.logprobs[0] < 0


async def test_preemption_when_blocks_run_out_still_completes_all_requests():
    sink = RecordingSink()
    engine = _engine(sink, speedup_ratio=1000, num_gpu_blocks=24, block_size=4)
    results = await asyncio.gather(*[_run(engine, _request(i, [i + 3] * 20, max_tokens=30)) for i in range(6)])
    assert all(len(tokens) == 30 for _, tokens, _, _ in results)
    assert engine.scheduler.preemptions > 0
    assert engine.pool.active_blocks == 0
    assert any(isinstance(e, KvRemoved) for e in sink.events)


async def test_prompt_larger_than_the_whole_cache_fails_with_a_reason():
    engine = _engine(speedup_ratio=1000, num_gpu_blocks=4, block_size=4)
    _, tokens, first, _ = await _run(engine, _request(0, range(40)))
    assert tokens == [] and first.finish_reason is FinishReason.ERROR and "KV blocks" in first.error


async def test_cancel_releases_blocks():
    engine = _engine(speedup_ratio=10)
    stream = engine.generate(_request(0, range(64), max_tokens=1000))
    await stream.__anext__()
    assert engine.pool.active_blocks > 0
    await stream.aclose()
    assert engine.pool.active_blocks == 0 and not engine.scheduler.running


async def test_kv_events_carry_tokens_and_parents_and_load_reports_activity():
    sink = RecordingSink()
    engine = _engine(sink, speedup_ratio=1000, block_size=4)
    stream = engine.generate(_request(0, range(3, 15), max_tokens=50))
    await stream.__anext__()
    load = engine.load_metrics("w")
    assert load.running_requests == 1 and load.active_kv_blocks >= 3
    await stream.aclose()
    stored = [e for e in sink.events if isinstance(e, KvStored)]
    assert stored[0].parent_hash is None and stored[0].blocks[0].token_ids == [3, 4, 5, 6]
    assert [b.token_ids for b in stored[0].blocks] == [[3, 4, 5, 6], [7, 8, 9, 10], [11, 12, 13, 14]]


async def test_no_prefix_caching_publishes_nothing_and_reuses_nothing():
    sink = RecordingSink()
    engine = _engine(sink, speedup_ratio=1000, enable_prefix_caching=False)
    await _run(engine, _request(0, range(64)))
    _, _, first, _ = await _run(engine, _request(1, range(64)))
    assert first.cached_tokens == 0 and sink.events == []


def test_timing_profile_matches_the_documented_h100_figures():
    t = H100_LLAMA_8B
    assert 0.8 < t.step_seconds(10_000, 0, 0) < 1.0  # ~12k uncached tokens/s
    assert 0.008 < t.step_seconds(0, 1, 1000) < 0.012  # ~9 ms decode at batch 1
    assert 0.018 < t.step_seconds(0, 128, 128_000) < 0.024  # ~21 ms at batch 128


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="speedup-ratio"):
        MockerConfig(speedup_ratio=0)
    with pytest.raises(ValueError, match="num-gpu-blocks"):
        MockerConfig(num_gpu_blocks=0)
