"""Mocker prefill and decode engines moving real KV bytes through real `tcp` transfer agents."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from dynamo_core.engines.mocker.engine import MockerEngine, output_token_pool
from dynamo_core.engines.mocker.kv_arena import block_content, block_seeds
from dynamo_core.engines.mocker.options import MockerConfig
from dynamo_core.engines.mocker.timing import H100_LLAMA_8B
from dynamo_core.protocols.engine import (
    DisaggParams,
    EngineOutput,
    FinishReason,
    KvTransferParams,
    PreprocessedRequest,
    StopConditions,
)
from dynamo_core.transfer import TransferConfig
from dynamo_core.transfer.tcp import TcpTransferAgent

BLOCK = 16
PROMPT = [(i * 7919) % 30000 + 1 for i in range(100)]  # 6 full blocks and a partial one


def _request(request_id: str, tokens, max_tokens: int, disagg: DisaggParams | None = None) -> PreprocessedRequest:
    return PreprocessedRequest(request_id=request_id, model="m", token_ids=list(tokens),
                               stop=StopConditions(max_tokens=max_tokens), disagg=disagg)


async def _collect(engine: MockerEngine, request: PreprocessedRequest) -> list[EngineOutput]:
    return [out async for out in engine.generate(request)]


class Pair:
    def __init__(self, **config):
        self.agents = [TcpTransferAgent(TransferConfig()), TcpTransferAgent(TransferConfig())]
        base = dict(speedup_ratio=1000.0, num_gpu_blocks=64, block_size=BLOCK, kv_bytes_per_token=64)
        prefill_config = {**base, **config}
        decode_config = {**base, **{k: v for k, v in config.items() if k != "inject_kv_corruption"}}
        pool = output_token_pool(None)
        self.prefill = MockerEngine(MockerConfig(**prefill_config), pool, 4096, role="prefill",
                                    transfer=self.agents[0], worker_id="P")
        self.decode = MockerEngine(MockerConfig(**decode_config), pool, 4096, role="decode",
                                   transfer=self.agents[1], worker_id="D")

    async def __aenter__(self) -> Pair:
        for agent in self.agents:
            await agent.start()
        self.prefill_info = await self.prefill.start()
        await self.decode.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.prefill.stop()
        await self.decode.stop()
        for agent in self.agents:
            await agent.close()

    async def prefill_then_decode(
        self, request_id: str, prompt, max_tokens: int
    ) -> tuple[EngineOutput, list[EngineOutput]]:
        [first] = await _collect(self.prefill, _request(request_id, prompt, max_tokens, DisaggParams(phase="prefill")))
        assert first.kv_transfer is not None, first
        decode = _request(request_id, [*prompt, *first.token_ids], max_tokens - 1,
                          DisaggParams(phase="decode", kv=first.kv_transfer))
        return first, await _collect(self.decode, decode)


async def test_prefill_holds_the_prompts_kv_bytes_and_decode_pulls_and_verifies_them():
    async with Pair() as pair:
        first, rest = await pair.prefill_then_decode("r1", PROMPT, 6)
        kv = first.kv_transfer
        assert first.finish_reason is FinishReason.LENGTH and len(first.token_ids) == 1
        assert first.prompt_tokens == 100
        assert (kv.worker_id, kv.num_tokens, kv.block_size, kv.bytes_per_token) == ("P", 100, BLOCK, 64)
        assert len(kv.block_ids) == 7
        # The prefill worker's arena really holds the derived bytes, partial last block included.
        arena = pair.prefill.arena
        for index, seed in enumerate(block_seeds(PROMPT, BLOCK)):
            length = min(BLOCK, 100 - index * BLOCK) * 64
            start = kv.block_ids[index] * arena.block_bytes
            assert bytes(arena.view[start : start + length]) == block_content(seed, length)

        assert [t for out in rest for t in out.token_ids] and rest[-1].finish_reason is FinishReason.LENGTH
        assert sum(len(out.token_ids) for out in rest) == 5
        report = rest[0].kv_pull
        assert report.recomputed is None and report.blocks == 7 and report.bytes == 100 * 64
        # The decode worker continues the prefill worker's text rather than repeating its token.
        agg = MockerEngine(MockerConfig(speedup_ratio=1000.0), output_token_pool(None), 4096)
        whole = await _collect(agg, _request("r1", PROMPT, 6))
        assert [t for o in whole for t in o.token_ids] == first.token_ids + [t for o in rest for t in o.token_ids]

        # Released by the frontend: the held blocks go back to the pool (still cached).
        assert "r1" in pair.prefill.held
        active = pair.prefill.pool.active_blocks
        pair.prefill.release_kv("r1")
        assert "r1" not in pair.prefill.held and pair.prefill.pool.active_blocks == active - 7


async def test_decode_can_sample_the_first_token_itself_as_vllm_does():
    async with Pair(decode_samples_first_token=True) as pair:
        [first] = await _collect(pair.prefill, _request("v", PROMPT, 5, DisaggParams(phase="prefill")))
        assert first.kv_transfer.decode_samples_first_token
        # The decode worker gets the prompt alone: it pulls every block and recomputes the last token.
        rest = await _collect(pair.decode, _request("v", PROMPT, 5, DisaggParams(phase="decode", kv=first.kv_transfer)))
        assert rest[0].kv_pull.blocks == 7 and rest[0].kv_pull.recomputed is None
        agg = MockerEngine(MockerConfig(speedup_ratio=1000.0), output_token_pool(None), 4096)
        whole = await _collect(agg, _request("v", PROMPT, 5))
        assert [t for o in rest for t in o.token_ids] == [t for o in whole for t in o.token_ids]


async def test_decode_pulls_only_the_blocks_it_lacks():
    async with Pair() as pair:
        await pair.prefill_then_decode("a", PROMPT, 3)
        longer = PROMPT + [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
        _, rest = await pair.prefill_then_decode("b", longer, 3)
        report = rest[0].kv_pull
        # The first 6 full blocks of the prompt are in the decode worker's prefix cache.
        assert report.local_blocks == 6 and report.blocks == 8 - 6
        assert rest[0].cached_tokens == 6 * BLOCK


async def test_a_corrupted_block_fails_the_request_loudly():
    async with Pair(inject_kv_corruption=True) as pair:
        _, rest = await pair.prefill_then_decode("bad", PROMPT, 4)
        assert len(rest) == 1 and rest[0].finish_reason is FinishReason.ERROR
        assert "corrupted" in rest[0].error and "block 6 of 7" in rest[0].error
        assert not rest[0].token_ids
        assert pair.decode.pool.active_blocks == 0  # its blocks went back


async def test_a_failed_pull_computes_the_prompt_on_the_decode_worker():
    async with Pair() as pair:
        [first] = await _collect(pair.prefill, _request("gone", PROMPT, 4, DisaggParams(phase="prefill")))
        await pair.agents[0].close()  # the prefill worker's transfer agent vanishes
        decode = _request("gone", [*PROMPT, *first.token_ids], 3, DisaggParams(phase="decode", kv=first.kv_transfer))
        rest = await _collect(pair.decode, decode)
        assert rest[-1].finish_reason is FinishReason.LENGTH and sum(len(o.token_ids) for o in rest) == 3
        assert rest[0].kv_pull.recomputed.startswith("transfer failed")


async def test_mismatched_layouts_compute_instead_of_pulling():
    async with Pair() as pair:
        [first] = await _collect(pair.prefill, _request("x", PROMPT, 4, DisaggParams(phase="prefill")))
        kv = first.kv_transfer
        wrong = KvTransferParams(worker_id=kv.worker_id, hold_id=kv.hold_id, num_tokens=kv.num_tokens,
                                 block_size=kv.block_size, bytes_per_token=128, region=kv.region,
                                 block_ids=kv.block_ids)
        rest = await _collect(pair.decode, _request("x", [*PROMPT, 1], 2, DisaggParams(phase="decode", kv=wrong)))
        assert "layout" in rest[0].kv_pull.recomputed
        assert sum(len(o.token_ids) for o in rest) == 2


async def test_unpulled_kv_is_released_after_the_hold_timeout():
    async with Pair(kv_hold_timeout_s=0.2) as pair:
        await _collect(pair.prefill, _request("late", PROMPT, 4, DisaggParams(phase="prefill")))
        assert "late" in pair.prefill.held and pair.prefill.pool.active_blocks == 7
        await asyncio.sleep(0.4)
        assert not pair.prefill.held and pair.prefill.pool.active_blocks == 0


async def test_a_decode_abandoned_while_pulling_frees_its_blocks_after_the_pull():
    async with Pair() as pair:
        [first] = await _collect(pair.prefill, _request("c", PROMPT, 50, DisaggParams(phase="prefill")))
        decode = _request("c", [*PROMPT, *first.token_ids], 49, DisaggParams(phase="decode", kv=first.kv_transfer))
        stream = pair.decode.generate(decode)
        task = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)  # admitted; the pull is under way or done
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await stream.aclose()
        for _ in range(100):
            if pair.decode.pool.active_blocks == 0:
                break
            await asyncio.sleep(0.01)
        assert pair.decode.pool.active_blocks == 0 and not pair.decode.scheduler.running


async def test_a_prefill_request_on_an_aggregated_worker_is_refused():
    engine = MockerEngine(MockerConfig(speedup_ratio=1000.0), output_token_pool(None), 4096)
    [out] = await _collect(engine, _request("p", PROMPT, 4, DisaggParams(phase="prefill")))
    assert out.finish_reason is FinishReason.ERROR and "not prefill" in out.error


async def test_a_prompt_that_fits_only_once_held_kv_is_released_waits_for_it():
    """Held blocks belong to no running sequence: a prefill worker with nothing running but
    too little room for the next prompt waits for a release instead of failing its queue."""
    async with Pair(num_gpu_blocks=10) as pair:
        [first] = await _collect(pair.prefill, _request("held", PROMPT, 4, DisaggParams(phase="prefill")))
        hold_id = first.kv_transfer.hold_id  # 7 of 10 blocks held for a decode worker
        waiting = asyncio.ensure_future(
            _collect(pair.prefill, _request("next", PROMPT[::-1], 4, DisaggParams(phase="prefill"))))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        pair.prefill.release_kv(hold_id)
        [second] = await asyncio.wait_for(waiting, 5)
        assert second.finish_reason is FinishReason.LENGTH and second.kv_transfer is not None


async def test_a_rendezvous_pairs_prefill_and_decode_sent_at_once_and_decode_streams_every_token():
    async with Pair(disagg_bootstrap=True, bootstrap_timeout_s=0.3) as pair:
        info = pair.prefill_info.disagg_bootstrap
        assert set(info) == {"bootstrap_host", "bootstrap_port"} and pair.decode.bootstrap is None
        kv = KvTransferParams(worker_id="P", hold_id="r1", num_tokens=100, block_size=BLOCK,
                              engine_params={**info, "bootstrap_room": 12345})
        prefill = _request("r1", PROMPT, 6, DisaggParams(phase="prefill", kv=kv))
        decode = _request("r1", PROMPT, 6, DisaggParams(phase="decode", kv=kv))
        decoded, prefilled = await asyncio.gather(_collect(pair.decode, decode), _collect(pair.prefill, prefill))
        assert prefilled[-1].kv_transfer is not None and len(prefilled[0].token_ids) == 1
        report = decoded[0].kv_pull
        assert report.recomputed is None and report.failed is None and report.bytes == 100 * 64
        agg = MockerEngine(MockerConfig(speedup_ratio=1000.0), output_token_pool(None), 4096)
        whole = await _collect(agg, _request("r1", PROMPT, 6))
        assert [t for o in decoded for t in o.token_ids] == [t for o in whole for t in o.token_ids]
        # Released: the room goes with the KV, and a late decode worker is told so in time.
        pair.prefill.release_kv("r1")
        [late] = await _collect(pair.decode, _request("r2", PROMPT, 6, DisaggParams(phase="decode", kv=kv)))
        assert late.finish_reason is FinishReason.ERROR and "got no KV within 0.3 s" in late.kv_pull.failed


def _room_halves(info: dict, room: int, request_id: str, prompt=PROMPT) -> tuple[PreprocessedRequest, PreprocessedRequest]:
    kv = KvTransferParams(worker_id="P", hold_id=request_id, num_tokens=len(prompt), block_size=BLOCK,
                          engine_params={**info, "bootstrap_room": room})
    return (_request(request_id, prompt, 6, DisaggParams(phase="prefill", kv=kv)),
            _request(request_id, prompt, 6, DisaggParams(phase="decode", kv=kv)))


async def test_a_bootstrap_decode_worker_declines_requests_without_a_room_as_sglang_does():
    async with Pair(disagg_bootstrap=True) as pair:
        for request in (_request("whole", PROMPT, 4),
                        _request("no-room", PROMPT, 4, DisaggParams(phase="decode", kv=KvTransferParams(
                            worker_id="P", hold_id="x", num_tokens=100, block_size=BLOCK)))):
            [declined] = await _collect(pair.decode, request)
            assert declined.retry_elsewhere and declined.finish_reason is FinishReason.ERROR
            assert "serves only requests split" in declined.error
    # Without the flag a decode worker still computes a whole request itself.
    async with Pair() as pair:
        outputs = await _collect(pair.decode, _request("whole", PROMPT, 4))
        assert sum(len(o.token_ids) for o in outputs) == 4 and not outputs[-1].retry_elsewhere


async def test_a_rejected_prefill_fails_its_room_so_the_decode_side_ends_at_once():
    # The prefill worker's cache cannot hold the prompt; the room timeout is long (30 s).
    async with Pair(disagg_bootstrap=True, bootstrap_timeout_s=30.0) as pair:
        pair.prefill.pool.num_blocks = 4
        prefill, decode = _room_halves(pair.prefill_info.disagg_bootstrap, 7, "r1")
        started = asyncio.get_running_loop().time()
        decoded, prefilled = await asyncio.wait_for(
            asyncio.gather(_collect(pair.decode, decode), _collect(pair.prefill, prefill)), 5)
        assert asyncio.get_running_loop().time() - started < 5
        assert prefilled[-1].finish_reason is FinishReason.ERROR
        [failed] = decoded
        assert failed.finish_reason is FinishReason.ERROR and "the prefill of room 7 failed" in failed.kv_pull.failed
        # A decode worker that asks after the failure is told at once too.
        [late] = await asyncio.wait_for(_collect(pair.decode, decode), 5)
        assert "the prefill of room 7 failed" in late.kv_pull.failed


async def test_a_prefill_with_no_room_for_output_fails_its_room_with_that_reason():
    async with Pair(disagg_bootstrap=True, bootstrap_timeout_s=30.0) as pair:
        prefill, decode = _room_halves(pair.prefill_info.disagg_bootstrap, 11, "r1")
        prefill.stop.max_tokens = 0
        decoded, prefilled = await asyncio.wait_for(
            asyncio.gather(_collect(pair.decode, decode), _collect(pair.prefill, prefill)), 5)
        assert prefilled[-1].finish_reason is FinishReason.LENGTH and prefilled[-1].kv_transfer is None
        [failed] = decoded
        assert "the prefill of room 11 failed: the prompt leaves no room for output" in failed.kv_pull.failed


async def test_an_abandoned_or_stopped_prefill_fails_its_room():
    slow = msgspec.structs.replace(H100_LLAMA_8B, prefill_tokens_per_s=1.0)
    async with Pair(disagg_bootstrap=True, bootstrap_timeout_s=30.0, timing=slow) as pair:
        info = pair.prefill_info.disagg_bootstrap
        # Abandoned: the prefill's consumer leaves while the (slow) prompt is being computed.
        prefill, decode = _room_halves(info, 8, "r1")
        stream = pair.prefill.generate(prefill)
        pending = asyncio.ensure_future(anext(stream))
        decoding = asyncio.ensure_future(_collect(pair.decode, decode))
        await asyncio.sleep(0.05)
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await stream.aclose()
        [failed] = await asyncio.wait_for(decoding, 5)
        assert "abandoned" in failed.kv_pull.failed
        # Failed with every pending request (as when its step loop fails): so is its room.
        prefill, decode = _room_halves(info, 9, "r2")
        prefilling = asyncio.ensure_future(_collect(pair.prefill, prefill))
        decoding = asyncio.ensure_future(_collect(pair.decode, decode))
        await asyncio.sleep(0.05)
        pair.prefill._fail_all("mocker step loop failed: boom")
        [failed] = await asyncio.wait_for(decoding, 5)
        assert "the prefill of room 9 failed: mocker step loop failed: boom" in failed.kv_pull.failed
        assert (await prefilling)[-1].finish_reason is FinishReason.ERROR
