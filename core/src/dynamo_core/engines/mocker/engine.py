"""The mocker engine: requests in, simulated steps, tokens out, KV events published.

One asyncio task runs the step loop while there is work: schedule a step, wait as long as
the timing model says (divided by the speedup ratio, on a deadline clock so that sleep
overheads do not accumulate), then apply it and hand each producing request its token. The
mocker runs no model: its tokens cycle through a fixed English paragraph, so clients see
readable text, and it never samples EOS, so every request yields exactly `max_tokens`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

from dynamo_core.engines.base import Engine, EngineContext, KvEventSink, NullKvEventSink
from dynamo_core.engines.echo import context_length_from_model
from dynamo_core.engines.mocker.kv_cache import BlockPool
from dynamo_core.engines.mocker.options import MockerConfig
from dynamo_core.engines.mocker.scheduler import MockRequest, Scheduler
from dynamo_core.protocols.engine import EngineInfo, EngineOutput, FinishReason, PreprocessedRequest, TokenLogprob
from dynamo_core.protocols.kv_events import KvStored, LoadMetrics
from dynamo_core.tokenizer import BUILTIN_TOKENIZER, load_tokenizer

OUTPUT_TEXT = (
    "The quick brown fox jumps over the lazy dog while the river keeps running toward the sea. "
    "Every morning the baker opens the shop early, and the smell of fresh bread fills the street. "
    "Scientists measure the stars with patience, counting photons one by one through the night. "
)


def output_token_pool(model_path: str | None) -> list[int]:
    bundle = load_tokenizer(model_path or BUILTIN_TOKENIZER)
    excluded = set(bundle.eos_token_ids)
    return [t for t in bundle.encode(OUTPUT_TEXT) if t not in excluded]


class MockerEngine(Engine):
    def __init__(self, config: MockerConfig, token_pool: list[int], context_length: int, kv_events: KvEventSink | None = None):
        self.config = config
        self._pool_tokens = token_pool
        self.context_length = context_length
        self._kv_events = kv_events or NullKvEventSink()
        self.pool = BlockPool(config.num_gpu_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.pool, config.max_num_seqs, config.max_num_batched_tokens)
        self._loop: asyncio.Task | None = None
        self.steps = 0

    @classmethod
    def from_context(cls, context: EngineContext) -> "MockerEngine":
        config = MockerConfig.from_namespace(context.options)
        context_length = context_length_from_model(context.model_path, config.context_length)
        return cls(config, output_token_pool(context.model_path), context_length, context.kv_events)

    async def start(self) -> EngineInfo:
        return EngineInfo(
            block_size=self.config.block_size,
            kv_capacity_blocks=self.config.num_gpu_blocks,
            context_length=self.context_length,
        )

    # --- requests ---------------------------------------------------------------------------

    def _offset(self, request: PreprocessedRequest) -> int:
        if request.sampling.seed is not None:
            return request.sampling.seed % len(self._pool_tokens)
        digest = hashlib.blake2b(request.request_id.encode(), digest_size=4).digest()
        return int.from_bytes(digest, "little") % len(self._pool_tokens)

    async def generate(self, request: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        prompt_len = len(request.token_ids)
        if prompt_len >= self.context_length:
            yield EngineOutput(
                finish_reason=FinishReason.ERROR,
                error=f"prompt of {prompt_len} tokens does not fit the context length {self.context_length}",
            )
            return
        queue: asyncio.Queue[EngineOutput] = asyncio.Queue()
        req = MockRequest(
            request=request,
            queue=queue,
            prompt_len=prompt_len,
            max_output=min(request.stop.max_tokens, self.context_length - prompt_len),
            prompt_hashes=self.pool.prompt_hashes(request.token_ids),
            tokens=list(request.token_ids),
        )
        if req.max_output <= 0:
            yield EngineOutput(finish_reason=FinishReason.LENGTH, prompt_tokens=prompt_len, cached_tokens=0)
            return
        req.offset = self._offset(request)
        self.scheduler.add(req)
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run(), name="mocker-steps")
        try:
            while True:
                output = await queue.get()
                yield output
                if output.finish_reason is not None:
                    return
        finally:
            if not req.finished:  # cancelled by the caller: free its blocks now
                req.finished = True
                self.scheduler.remove(req)
                self._publish_events()

    # --- the step loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._steps()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must fail the requests, never leave them hanging
            for req in list(self.scheduler.running) + list(self.scheduler.waiting):
                req.finished = True
                self.scheduler.remove(req)
                req.queue.put_nowait(EngineOutput(finish_reason=FinishReason.ERROR, error=f"mocker failed: {exc!r}"))
            raise

    async def _steps(self) -> None:
        timing, speedup = self.config.timing, self.config.speedup_ratio
        deadline = time.monotonic()
        while self.scheduler.has_work():
            plan = self.scheduler.schedule()
            for req, reason in plan.failed:
                req.finished = True
                req.queue.put_nowait(EngineOutput(finish_reason=FinishReason.ERROR, error=reason))
            if not plan.prefill and not plan.decode:
                self._publish_events()
                await asyncio.sleep(0)  # only failures this step, or waiting on cancellations
                deadline = time.monotonic()
                continue
            kv_tokens = sum(len(r.tokens) for r in plan.decode)
            duration = timing.step_seconds(plan.prefill_tokens, len(plan.decode), kv_tokens) / speedup
            deadline = max(deadline, time.monotonic() - 0.05) + duration
            delay = deadline - time.monotonic()
            await asyncio.sleep(delay if delay > 0 else 0)
            self.steps += 1
            for req in self.scheduler.commit(plan):
                self._emit_token(req)
            self._publish_events()

    def _emit_token(self, req: MockRequest) -> None:
        pool = self._pool_tokens
        token = pool[(req.offset + req.generated) % len(pool)]
        req.tokens.append(token)
        req.generated += 1
        output = EngineOutput(token_ids=[token])
        if not req.first_output_sent:
            req.first_output_sent = True
            output.prompt_tokens = req.prompt_len
            output.cached_tokens = req.cached_tokens
        want = req.request.output.logprobs
        if want is not None:
            # Simulated but deterministic: a confident token with `want` weaker alternatives.
            base = -0.05 - 0.01 * (req.generated % 7)
            output.logprobs = [base]
            output.top_logprobs = [[TokenLogprob(pool[(req.generated + k + 1) % len(pool)], base - 1.5 * (k + 1)) for k in range(want)]]
        if req.generated >= req.max_output:
            output.finish_reason = FinishReason.LENGTH
            req.finished = True
            self.scheduler.remove(req)
        req.queue.put_nowait(output)

    def _publish_events(self) -> None:
        events = self.pool.take_events()
        if events:
            self._kv_events.publish(events)

    # --- introspection ----------------------------------------------------------------------

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
        self.pool.clear()
        self._publish_events()

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
