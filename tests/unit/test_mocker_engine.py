"""The mocker engine end to end on a real event loop, with real (sped-up) time."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from collections.abc import Sequence

import pytest

from dynamo_core.engines.base import EngineContext, KvEventSink
from dynamo_core.engines.mocker.engine import MockerEngine, output_token_pool
from dynamo_core.engines.mocker.options import MockerConfig, MockerConfigError, add_mocker_options
from dynamo_core.engines.mocker.timing import H100_LLAMA_8B
from dynamo_core.protocols.engine import (
    EngineOutput,
    FinishReason,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo_core.protocols.kv_events import KvCleared, KvEvent, KvRemoved, KvStored
from dynamo_core.tokenizer import BUILTIN_TOKENIZER, load_tokenizer


class RecordingSink(KvEventSink):
    def __init__(self) -> None:
        self.events: list[KvEvent] = []

    def publish(self, events: Sequence[KvEvent]) -> None:
        self.events.extend(events)


def _engine(sink: KvEventSink | None = None, context_length: int = 32768, **config) -> MockerEngine:
    return MockerEngine(MockerConfig(**config), output_token_pool(None), context_length, sink)


def _request(i: int, prompt, max_tokens: int = 4, **kw) -> PreprocessedRequest:
    return PreprocessedRequest(
        request_id=f"r{i}", model="m", token_ids=list(prompt), stop=StopConditions(max_tokens=max_tokens), **kw
    )


async def _run(engine: MockerEngine, request: PreprocessedRequest) -> tuple[float, list[int], list[EngineOutput]]:
    """Time to the first output, the tokens, and every delta."""
    start = time.perf_counter()
    ttft = 0.0
    outputs: list[EngineOutput] = []
    async for out in engine.generate(request):
        if not outputs:
            ttft = time.perf_counter() - start
        outputs.append(out)
    return ttft, [t for out in outputs for t in out.token_ids], outputs


# --- timing ---------------------------------------------------------------------------------


async def test_cached_prefix_reaches_first_token_sooner():
    engine = _engine(speedup_ratio=10)
    prompt = list(range(3, 259)) * 12  # 3072 tokens: ~270 ms of prefill on the profile, /10
    cold, _, cold_out = await _run(engine, _request(0, prompt))
    warm, _, warm_out = await _run(engine, _request(1, prompt))
    assert cold_out[0].cached_tokens == 0 and warm_out[0].cached_tokens == 3072 - 16
    assert warm < cold / 3


async def test_decode_steps_follow_the_timing_profile_scaled_by_the_speedup_ratio():
    engine = _engine(speedup_ratio=20)
    start = time.perf_counter()
    _, tokens, _ = await _run(engine, _request(0, range(3, 19), max_tokens=40))
    elapsed = time.perf_counter() - start
    simulated = 40 * H100_LLAMA_8B.step_seconds([], 1, 40) / 20  # ~14 ms of real time
    assert len(tokens) == 40 and simulated * 0.8 < elapsed < simulated * 10


def test_timing_profile_matches_the_documented_h100_figures():
    t = H100_LLAMA_8B
    assert 10_000 < 4096 / (t.step_seconds([(0, 4096)], 0, 0) - t.decode_base_ms / 1000) < 12_000
    assert t.prefill_seconds(16_384, 1000) > 1.4 * t.prefill_seconds(0, 1000)  # attention grows with context
    assert 0.006 < t.step_seconds([], 1, 1000) < 0.008  # ~7 ms at batch 1
    assert 0.011 < t.step_seconds([], 64, 64_000) < 0.014  # ~12.5 ms at batch 64
    assert 0.016 < t.step_seconds([], 128, 128_000) < 0.020  # ~18 ms at batch 128


# --- output ---------------------------------------------------------------------------------


async def test_requests_generate_exactly_max_tokens_with_usage_and_logprobs():
    engine = _engine(speedup_ratio=1000)
    _, tokens, outputs = await _run(engine, _request(0, range(40), max_tokens=17, output=OutputOptions(logprobs=2)))
    assert len(tokens) == 17 and len(outputs) == 17  # one delta per step
    assert outputs[-1].finish_reason is FinishReason.LENGTH
    assert [o.finish_reason for o in outputs[:-1]] == [None] * 16
    assert outputs[0].prompt_tokens == 40 and outputs[0].cached_tokens == 0
    assert all(o.prompt_tokens is None for o in outputs[1:])
    for out in outputs:
        assert len(out.logprobs) == 1 and out.logprobs[0] < 0
        sampled, alternative = out.top_logprobs[0]  # the sampled token heads the list
        assert (sampled.token_id, sampled.logprob) == (out.token_ids[0], out.logprobs[0])
        assert alternative.logprob < sampled.logprob
    _, _, plain = await _run(engine, _request(1, range(40), max_tokens=3))
    assert all(o.logprobs is None and o.top_logprobs is None for o in plain)


async def test_output_is_readable_text_and_deterministic_per_seed():
    engine = _engine(speedup_ratio=1000)
    bundle = load_tokenizer(BUILTIN_TOKENIZER)
    seeded = [await _run(engine, _request(i, range(3, 30), max_tokens=60, sampling=SamplingOptions(seed=7))) for i in range(2)]
    assert seeded[0][1] == seeded[1][1]
    by_id = [await _run(engine, _request(i, range(3, 30), max_tokens=60)) for i in range(2, 4)]
    assert by_id[0][1] != by_id[1][1]
    text = bundle.decode(by_id[0][1])
    assert sum(ch.isalpha() or ch in " .," for ch in text) == len(text) and text.count(" ") > 5
    assert not set(by_id[0][1]) & set(bundle.eos_token_ids)


async def test_generation_is_capped_at_the_context_length():
    engine = _engine(speedup_ratio=1000, context_length=64)
    _, tokens, outputs = await _run(engine, _request(0, range(3, 53), max_tokens=100))
    assert len(tokens) == 14 and outputs[-1].finish_reason is FinishReason.LENGTH


async def test_prompt_larger_than_the_whole_cache_fails_with_a_reason():
    engine = _engine(speedup_ratio=1000, num_gpu_blocks=4, block_size=4)
    _, tokens, outputs = await _run(engine, _request(0, range(40)))
    assert tokens == [] and len(outputs) == 1
    assert outputs[0].finish_reason is FinishReason.ERROR and "needs 10 KV blocks" in outputs[0].error
    assert not engine.scheduler.has_work()


async def test_sequence_that_would_outgrow_the_cache_stops_at_its_capacity():
    engine = _engine(speedup_ratio=1000, num_gpu_blocks=4, block_size=4)
    _, tokens, outputs = await _run(engine, _request(0, range(3, 13), max_tokens=100))
    assert len(tokens) == 16 - 10 + 1 and outputs[-1].finish_reason is FinishReason.LENGTH


# --- scheduling under load --------------------------------------------------------------------


async def test_preemption_when_blocks_run_out_still_completes_all_requests():
    sink = RecordingSink()
    engine = _engine(sink, speedup_ratio=1000, num_gpu_blocks=24, block_size=4)
    results = await asyncio.gather(*[_run(engine, _request(i, [i + 3] * 20, max_tokens=30)) for i in range(6)])
    assert all(len(tokens) == 30 and outputs[-1].finish_reason is FinishReason.LENGTH for _, tokens, outputs in results)
    assert engine.scheduler.preemptions > 0
    assert engine.pool.active_blocks == 0 and not engine.scheduler.has_work()
    assert any(isinstance(e, KvRemoved) for e in sink.events)


async def test_many_concurrent_requests_at_a_high_speedup_ratio_finish_quickly():
    engine = _engine(speedup_ratio=1000)
    start = time.perf_counter()
    results = await asyncio.gather(*[_run(engine, _request(i, range(i, i + 256), max_tokens=64)) for i in range(128)])
    assert sum(len(tokens) for _, tokens, _ in results) == 128 * 64
    assert time.perf_counter() - start < 5.0  # the Python loop, not the simulated time, bounds this


async def test_step_loop_runs_only_while_there_is_work():
    engine = _engine(speedup_ratio=1000)
    await _run(engine, _request(0, range(10)))
    await asyncio.sleep(0.01)
    steps = engine.scheduler.steps
    await asyncio.sleep(0.05)
    assert engine.scheduler.steps == steps
    _, tokens, _ = await _run(engine, _request(1, range(10)))  # and starts again on demand
    assert len(tokens) == 4


# --- cancellation -----------------------------------------------------------------------------


async def test_cancel_releases_blocks():
    engine = _engine(speedup_ratio=10)
    stream = engine.generate(_request(0, range(64), max_tokens=1000))
    await stream.__anext__()
    assert engine.pool.active_blocks >= 4 and engine.load_metrics("w").running_requests == 1
    await stream.aclose()
    assert engine.pool.active_blocks == 0 and not engine.scheduler.has_work()


async def test_cancelling_the_consuming_task_releases_blocks_of_running_and_waiting_requests():
    engine = _engine(speedup_ratio=10, max_num_seqs=1)
    first_tokens = asyncio.Event()

    async def consume(i: int) -> None:
        async for _ in engine.generate(_request(i, range(i, i + 64), max_tokens=1000)):
            first_tokens.set()

    tasks = [asyncio.create_task(consume(i)) for i in range(2)]
    await first_tokens.wait()
    load = engine.load_metrics("w")
    assert (load.running_requests, load.waiting_requests) == (1, 1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert engine.pool.active_blocks == 0 and not engine.scheduler.has_work()


async def test_stop_ends_requests_in_flight_with_an_error():
    engine = _engine(speedup_ratio=10)
    stream = engine.generate(_request(0, range(64), max_tokens=1000))
    await stream.__anext__()
    await engine.stop()
    rest = [out async for out in stream]
    assert rest[-1].finish_reason is FinishReason.ERROR and "stopped" in rest[-1].error
    assert engine.pool.active_blocks == 0


# --- KV events and load -------------------------------------------------------------------------


async def test_kv_events_carry_tokens_and_parents_and_load_reports_activity():
    sink = RecordingSink()
    engine = _engine(sink, speedup_ratio=1000, block_size=4)
    stream = engine.generate(_request(0, range(3, 15), max_tokens=50))
    await stream.__anext__()
    load = engine.load_metrics("w")
    assert (load.worker_id, load.running_requests, load.waiting_requests) == ("w", 1, 0)
    assert load.active_kv_blocks >= 3 and load.total_kv_blocks == 8192
    await stream.aclose()
    assert engine.load_metrics("w").active_kv_blocks == 0
    stored = [e for e in sink.events if isinstance(e, KvStored)]
    assert stored[0].parent_hash is None
    assert [b.token_ids for b in stored[0].blocks] == [[3, 4, 5, 6], [7, 8, 9, 10], [11, 12, 13, 14]]


async def test_generated_tokens_fill_blocks_announced_below_their_parent():
    sink = RecordingSink()
    engine = _engine(sink, speedup_ratio=1000, block_size=4)
    _, tokens, _ = await _run(engine, _request(0, range(3, 15), max_tokens=9))
    stored = [e for e in sink.events if isinstance(e, KvStored)]
    # The prompt's three blocks at once, then each block of output as decoding fills it; the
    # last output token is never computed, so 12 + 8 tokens make five full blocks.
    assert [len(e.blocks) for e in stored] == [3, 1, 1]
    assert stored[1].parent_hash == stored[0].blocks[-1].block_hash
    assert stored[2].parent_hash == stored[1].blocks[0].block_hash
    assert [t for e in stored for b in e.blocks for t in b.token_ids] == list(range(3, 15)) + tokens[:8]
    snapshot = engine.kv_snapshot()
    assert [b.block_hash for e in snapshot for b in e.blocks] == [b.block_hash for e in stored for b in e.blocks]


async def test_eviction_publishes_removed_events_for_blocks_it_announced():
    sink = RecordingSink()
    engine = _engine(sink, speedup_ratio=1000, num_gpu_blocks=8, block_size=4)
    await _run(engine, _request(0, range(100, 124), max_tokens=1))  # 6 blocks stay cached
    await _run(engine, _request(1, range(200, 224), max_tokens=1))  # needs 4 of them back
    announced = [b.block_hash for e in sink.events if isinstance(e, KvStored) for b in e.blocks]
    removed = [h for e in sink.events if isinstance(e, KvRemoved) for h in e.block_hashes]
    assert len(removed) == 4 and set(removed) <= set(announced[:6])
    assert removed == list(reversed(announced[:6]))[:4]  # least recently freed: the deepest first


async def test_clear_kv_cache_publishes_cleared_and_forgets_prefixes():
    sink = RecordingSink()
    engine = _engine(sink, speedup_ratio=1000)
    await _run(engine, _request(0, range(64)))
    engine.clear_kv_cache()
    assert isinstance(sink.events[-1], KvCleared) and engine.kv_snapshot() == []
    _, _, outputs = await _run(engine, _request(1, range(64)))
    assert outputs[0].cached_tokens == 0


async def test_no_prefix_caching_publishes_nothing_and_reuses_nothing():
    sink = RecordingSink()
    engine = _engine(sink, speedup_ratio=1000, enable_prefix_caching=False)
    await _run(engine, _request(0, range(64)))
    _, _, outputs = await _run(engine, _request(1, range(64)))
    engine.clear_kv_cache()
    assert outputs[0].cached_tokens == 0 and sink.events == [] and engine.kv_snapshot() == []


# --- construction and options -------------------------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_mocker_options(parser.add_argument_group("engine"))
    return parser.parse_args(list(argv))


def _context(model_path: str | None, *argv: str) -> EngineContext:
    return EngineContext(model_path=model_path, served_name="m", options=_parse(*argv))


def test_options_fill_the_config_and_override_the_timing_profile():
    config = MockerConfig.from_namespace(_parse(
        "--block-size", "32", "--num-gpu-blocks", "100", "--no-prefix-caching", "--speedup-ratio", "50",
        "--prefill-tokens-per-s", "5000", "--decode-base-ms", "12.5", "--context-length", "2048",
    ))
    assert (config.block_size, config.num_gpu_blocks, config.enable_prefix_caching) == (32, 100, False)
    assert (config.speedup_ratio, config.context_length) == (50.0, 2048)
    assert config.timing.prefill_tokens_per_s == 5000 and config.timing.decode_base_ms == 12.5
    assert config.timing.decode_ms_per_seq == H100_LLAMA_8B.decode_ms_per_seq
    assert MockerConfig.from_namespace(_parse()) == MockerConfig()


@pytest.mark.parametrize(("argv", "flag"), [
    (["--speedup-ratio", "0"], "--speedup-ratio"),
    (["--num-gpu-blocks", "0"], "--num-gpu-blocks"),
    (["--max-num-batched-tokens", "-5"], "--max-num-batched-tokens"),
    (["--prefill-tokens-per-s", "0"], "--prefill-tokens-per-s"),
    (["--decode-ms-per-seq", "-1"], "--decode-ms-per-seq"),
])
def test_options_reject_nonsense_naming_the_flag(argv, flag):
    with pytest.raises(MockerConfigError, match=flag):
        MockerConfig.from_namespace(_parse(*argv))


async def test_from_context_reads_the_model_dir_for_tokens_and_context_length(mistral_tokenizer_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(mistral_tokenizer_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 3000}))
    engine = MockerEngine.from_context(_context(str(model_dir), "--speedup-ratio", "1000"))
    info = await engine.start()
    assert (info.block_size, info.kv_capacity_blocks, info.context_length) == (16, 8192, 3000)
    _, tokens, _ = await _run(engine, _request(0, range(3, 40), max_tokens=30))
    text = load_tokenizer(str(model_dir)).decode(tokens)
    assert len(tokens) == 30 and text.count(" ") >= 10 and all(ch.isalpha() or ch in " .," for ch in text)

    overridden = MockerEngine.from_context(_context(str(model_dir), "--context-length", "1024"))
    assert (await overridden.start()).context_length == 1024
    builtin = MockerEngine.from_context(_context(None))
    assert (await builtin.start()).context_length == 32768
