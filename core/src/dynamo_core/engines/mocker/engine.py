"""The mocker engine: requests in, simulated steps, tokens out, KV events published.

One asyncio task runs the step loop while there is work and ends when there is none: plan a
step, wait as long as the timing model says (divided by the speedup ratio, on a deadline
clock so that sleep overheads do not add up), apply it, and hand each sampling sequence its
token. The mocker runs no model: its tokens cycle through a fixed English paragraph, so
clients read words, and it never samples EOS, so every request yields exactly `max_tokens`
(or stops at the context length).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from dynamo_core.engines.base import Engine, EngineContext, KvEventSink, NullKvEventSink
from dynamo_core.engines.echo import context_length_from_model
from dynamo_core.engines.mocker.kv_cache import BlockPool
from dynamo_core.engines.mocker.options import MockerConfig
from dynamo_core.engines.mocker.scheduler import Scheduler, Sequence, SequenceStatus
from dynamo_core.protocols.engine import EngineInfo, EngineOutput, FinishReason, PreprocessedRequest, TokenLogprob
from dynamo_core.protocols.kv_events import KvStored, LoadMetrics
from dynamo_core.tokenizer import BUILTIN_TOKENIZER, load_tokenizer

log = logging.getLogger(__name__)

OUTPUT_TEXT = (
    "The quick brown fox jumps over the lazy dog while the river keeps running toward the sea. "
    "Every morning the baker opens the shop early, and the smell of fresh bread fills the street. "
    "Scientists measure the stars with patience, counting photons one by one through the night. "
)

# When the loop falls behind its simulated clock (at high speedup ratios Python itself is the
# bottleneck), it catches up by skipping sleeps, but never by more than this much real time.
MAX_CATCH_UP_S = 0.05


def output_token_pool(model_path: str | None) -> list[int]:
    """The token ids the mocker cycles through: OUTPUT_TEXT in the model's tokenizer."""
    bundle = load_tokenizer(model_path or BUILTIN_TOKENIZER)
    excluded = set(bundle.eos_token_ids)
    pool = [t for t in bundle.encode(OUTPUT_TEXT) if t not in excluded]
    if not pool:
        raise ValueError(f"the tokenizer of {model_path or BUILTIN_TOKENIZER!r} encodes the mocker's text to nothing")
    return pool


@dataclass(eq=False, slots=True, kw_only=True)
class _Stream(Sequence):
    """A sequence with its consumer: the deltas not yet taken and the future it waits on."""

    max_output: int  # max_tokens, capped by the context length and the KV capacity
    offset: int  # where in the output token cycle this request starts
    logprobs: int | None
    num_generated: int = 0
    pending: deque[EngineOutput] = field(default_factory=deque)
    waiter: asyncio.Future[None] | None = None

    def push(self, output: EngineOutput) -> None:
        self.pending.append(output)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class MockerEngine(Engine):
    def __init__(
        self,
        config: MockerConfig,
        token_pool: list[int],
        context_length: int,
        kv_events: KvEventSink | None = None,
    ):
        self.config = config
        self.context_length = context_length
        self._token_pool = token_pool
        self._kv_events = kv_events or NullKvEventSink()
        self.pool = BlockPool(config.num_gpu_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.pool, config.max_num_seqs, config.max_num_batched_tokens)
        self._loop_task: asyncio.Task[None] | None = None

    @classmethod
    def from_context(cls, context: EngineContext) -> MockerEngine:
        config = MockerConfig.from_namespace(context.options)
        context_length = context_length_from_model(context.model_path, config.context_length)
        return cls(config, output_token_pool(context.model_path), context_length, context.kv_events)

    async def start(self) -> EngineInfo:
        return EngineInfo(
            block_size=self.config.block_size,
            kv_capacity_blocks=self.config.num_gpu_blocks,
            context_length=self.context_length,
        )

    # --- requests -----------------------------------------------------------------------------

    def _rejection(self, prompt_len: int) -> str | None:
        if prompt_len == 0:
            return "the prompt is empty"
        if prompt_len >= self.context_length:
            return f"prompt of {prompt_len} tokens leaves no room for output in the context length {self.context_length}"
        needed = self.pool.blocks_for(prompt_len)
        if needed > self.pool.num_blocks:
            return (f"prompt of {prompt_len} tokens needs {needed} KV blocks of {self.pool.block_size} tokens; "
                    f"the whole cache holds {self.pool.num_blocks}")
        return None

    def _offset(self, request: PreprocessedRequest) -> int:
        if request.sampling.seed is not None:
            return request.sampling.seed % len(self._token_pool)
        digest = hashlib.blake2b(request.request_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % len(self._token_pool)

    async def generate(self, request: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        prompt_len = len(request.token_ids)
        error = self._rejection(prompt_len)
        if error is not None:
            yield EngineOutput(finish_reason=FinishReason.ERROR, error=error, prompt_tokens=prompt_len, cached_tokens=0)
            return
        capacity_tokens = self.pool.num_blocks * self.pool.block_size
        # The n-th output token is sampled from a step that computed prompt + n - 1 tokens.
        max_output = min(request.stop.max_tokens, self.context_length - prompt_len, capacity_tokens - prompt_len + 1)
        if max_output <= 0:
            yield EngineOutput(finish_reason=FinishReason.LENGTH, prompt_tokens=prompt_len, cached_tokens=0)
            return
        stream = _Stream(
            token_ids=list(request.token_ids),
            prompt_len=prompt_len,
            max_output=max_output,
            offset=self._offset(request),
            logprobs=request.output.logprobs,
        )
        self.scheduler.add(stream)
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._run_steps(), name="mocker-steps")
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not stream.pending:
                    stream.waiter = loop.create_future()
                    await stream.waiter
                    stream.waiter = None
                output = stream.pending.popleft()
                yield output
                if output.finish_reason is not None:
                    return
        finally:
            if stream.status is not SequenceStatus.FINISHED:  # closed or cancelled by the consumer
                self.scheduler.finish(stream)
                self._publish_events()

    # --- the step loop ------------------------------------------------------------------------

    async def _run_steps(self) -> None:
        try:
            await self._steps()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must fail the requests, never leave them hanging
            log.exception("mocker step loop failed")
            self._fail_all(f"mocker step loop failed: {exc!r}")

    async def _steps(self) -> None:
        scheduler, timing, speedup = self.scheduler, self.config.timing, self.config.speedup_ratio
        clock = time.monotonic
        deadline = clock()
        while scheduler.has_work():
            plan = scheduler.schedule()
            if plan.empty:
                raise RuntimeError(f"no progress possible with {len(scheduler.running)} running and "
                                   f"{len(scheduler.waiting)} waiting sequences")
            duration = timing.step_seconds(plan.prefill_chunks, plan.num_decodes, plan.decode_kv_tokens) / speedup
            now = clock()
            deadline = max(deadline, now - MAX_CATCH_UP_S) + duration
            await asyncio.sleep(max(deadline - now, 0.0))  # sleep(0) still lets consumers run
            self._emit(scheduler.complete(plan))
            self._publish_events()

    def _emit(self, sampling: list[Sequence]) -> None:
        """Sample one token for each sequence whose tokens are all computed, and stream it."""
        pool = self._token_pool
        pool_len = len(pool)
        finish = self.scheduler.finish
        for seq in sampling:
            assert isinstance(seq, _Stream)
            position = seq.offset + seq.num_generated
            token = pool[position % pool_len]
            seq.token_ids.append(token)
            seq.num_generated += 1
            output = EngineOutput(token_ids=[token])
            if seq.num_generated == 1:
                output.prompt_tokens = seq.prompt_len
                output.cached_tokens = seq.cached_tokens
            if seq.logprobs is not None:
                self._add_logprobs(output, position, seq.logprobs)
            if seq.num_generated >= seq.max_output:
                output.finish_reason = FinishReason.LENGTH
                finish(seq)
            seq.push(output)

    def _add_logprobs(self, output: EngineOutput, position: int, top: int) -> None:
        # Simulated but deterministic: a confident token, and `top` ever less likely alternatives.
        pool = self._token_pool
        chosen = -0.05 - 0.01 * (position % 7)
        output.logprobs = [chosen]
        output.top_logprobs = [[TokenLogprob(pool[(position + k) % len(pool)], chosen - 1.5 * k) for k in range(1, top + 1)]]

    def _publish_events(self) -> None:
        events = self.pool.take_events()
        if events:
            self._kv_events.publish(events)

    def _fail_all(self, error: str) -> None:
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            self.scheduler.finish(seq)
            assert isinstance(seq, _Stream)
            seq.push(EngineOutput(finish_reason=FinishReason.ERROR, error=error))
        self._publish_events()

    # --- introspection and control ------------------------------------------------------------

    def load_metrics(self, worker_id: str) -> LoadMetrics:
        return LoadMetrics(
            worker_id=worker_id,
            running_requests=len(self.scheduler.running),
            waiting_requests=len(self.scheduler.waiting),
            active_kv_blocks=self.pool.active_blocks,
            total_kv_blocks=self.pool.num_blocks,
        )

    def kv_snapshot(self) -> list[KvStored]:
        return self.pool.snapshot()

    def clear_kv_cache(self) -> None:
        """Drop every cached block nobody uses and tell subscribers (`cleared`)."""
        self.pool.clear()
        self._publish_events()

    async def stop(self) -> None:
        """End the step loop; requests still in flight finish with an error."""
        task, self._loop_task = self._loop_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._fail_all("the engine stopped")
