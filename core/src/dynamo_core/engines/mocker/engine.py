"""The mocker engine: requests in, simulated steps, tokens out, KV events published.

One asyncio task runs the step loop while there is work and ends when there is none: plan a
step, wait as long as the timing model says (divided by the speedup ratio, on a deadline
clock so that sleep overheads do not add up), apply it, and hand each sampling sequence its
token. The mocker runs no model: its tokens cycle through a fixed English paragraph, so
clients read words, and it never samples EOS, so every request yields exactly `max_tokens`
(or stops at the context length).

In disaggregated roles its KV cache is real memory (`kv_arena`): a prefill worker computes a
prompt, samples its first token, fills the prompt's blocks and holds them; a decode worker
pulls those blocks through the transfer agent, checks every byte, and decodes the rest. With
`--disagg-bootstrap` the two meet SGLang's way instead (`bootstrap.py`): both get the request at
once, the decode worker learns where the blocks are from the prefill worker's bootstrap server
(or at once that the prefill failed); a decode worker with the flag declines (`retry_elsewhere`)
any request without a bootstrap room, as an SGLang decode engine does.
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
from dynamo_core.engines.mocker.bootstrap import BootstrapClient, BootstrapError, BootstrapServer, room_of
from dynamo_core.engines.mocker.kv_arena import KvArena
from dynamo_core.engines.mocker.kv_cache import BlockPool, BlockTable
from dynamo_core.engines.mocker.options import MockerConfig
from dynamo_core.engines.mocker.scheduler import Scheduler, Sequence, SequenceStatus
from dynamo_core.protocols.engine import (
    EngineInfo,
    EngineOutput,
    FinishReason,
    KvPullReport,
    KvTransferParams,
    PreprocessedRequest,
    TokenLogprob,
)
from dynamo_core.protocols.kv_events import KvStored, LoadMetrics
from dynamo_core.transfer.base import TransferAgent, TransferError
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
    prompt_logprobs: int | None = None
    num_generated: int = 0
    hold_id: str | None = None  # prefill phase: hold the prompt's KV under this id when done
    room: int | None = None  # prefill phase, rendezvous handoff: publish the held KV in this room
    kv_source: KvTransferParams | None = None  # decode phase: where to pull the prompt's KV from
    kv_pull: KvPullReport | None = None
    abandoned: bool = False  # the consumer left while a pull was writing into its blocks
    pending: deque[EngineOutput] = field(default_factory=deque)
    waiter: asyncio.Future[None] | None = None

    def push(self, output: EngineOutput) -> None:
        self.pending.append(output)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class MockerEngine(Engine):
    supports_disaggregation = True  # prefill and decode roles, with real KV bytes (kv_arena.py)
    supports_prompt_logprobs = True  # simulated, like its output logprobs

    def __init__(
        self,
        config: MockerConfig,
        token_pool: list[int],
        context_length: int,
        kv_events: KvEventSink | None = None,
        role: str = "agg",
        transfer: TransferAgent | None = None,
        worker_id: str = "",
        host: str = "127.0.0.1",
    ):
        self.config = config
        self.role = role
        self.worker_id = worker_id
        self.host = host
        # The rendezvous handoff (bootstrap.py): a prefill worker's server, a decode worker's client.
        self.bootstrap: BootstrapServer | None = None
        self._rooms: BootstrapClient | None = None
        self._transfer = transfer
        self.arena: KvArena | None = None
        # Prefill role: prompts' blocks held for decode workers, by hold id, with their expiry.
        self.held: dict[str, tuple[BlockTable, asyncio.TimerHandle]] = {}
        self._pulls: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
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
        return cls(config, output_token_pool(context.model_path), context_length, context.kv_events,
                   role=context.role, transfer=context.transfer, worker_id=context.worker_id, host=context.host)

    async def start(self) -> EngineInfo:
        if self.role in ("prefill", "decode"):
            if self._transfer is None:
                raise ValueError(f"a {self.role} mocker needs a transfer agent (the worker's --transfer)")
            config = self.config
            self.arena = KvArena(self._transfer, config.num_gpu_blocks, config.block_size, config.kv_bytes_per_token)
            log.info("KV arena: %d blocks x %d bytes registered with the %s transfer agent",
                     config.num_gpu_blocks, self.arena.block_bytes, self._transfer.name)
        bootstrap = None
        if self.role == "prefill" and self.config.disagg_bootstrap:
            self.bootstrap = BootstrapServer(self.host, self.config.bootstrap_timeout_s)
            bootstrap = await self.bootstrap.start()
            log.info("bootstrap server for the rendezvous handoff of KV at %s", bootstrap)
        elif self.role == "decode":  # any request may name a prefill worker's room
            self._rooms = BootstrapClient(self.config.bootstrap_timeout_s)
        return EngineInfo(
            block_size=self.config.block_size,
            kv_capacity_blocks=self.config.num_gpu_blocks,
            context_length=self.context_length,
            disagg_bootstrap=bootstrap,
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
        # A migrated request continues the cycle after the output it already has.
        if request.sampling.seed is not None:
            return (request.sampling.seed + request.resumed_tokens) % len(self._token_pool)
        digest = hashlib.blake2b(request.request_id.encode(), digest_size=8).digest()
        return (int.from_bytes(digest, "little") + request.resumed_tokens) % len(self._token_pool)

    async def generate(self, request: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        phase = request.disagg.phase if request.disagg is not None else None
        kv = request.disagg.kv if request.disagg is not None else None
        room = room_of(kv.engine_params) if kv is not None else None
        if self.role == "decode" and self.config.disagg_bootstrap and (phase != "decode" or room is None):
            # As an SGLang decode engine: it cannot compute a prompt alone, so a request without
            # a bootstrap room (whole, or a continuation) belongs on another worker.
            yield EngineOutput(finish_reason=FinishReason.ERROR, retry_elsewhere=True,
                               error="this decode worker (--disagg-bootstrap) serves only requests split with a "
                                     "prefill worker through a bootstrap room")
            return
        # A prefill of a rendezvous that ends before publishing its KV fails its room, so that
        # the decode side waiting there ends at once instead of after the bootstrap timeout.
        # This generator's `finally` is the one place that does it, whatever ended the prefill:
        # a rejection, an error pushed to the stream (`_fail_all`), or the consumer leaving.
        fails_room = self.bootstrap is not None and phase == "prefill" and room is not None
        failure = "the prefill was abandoned before its KV was computed"
        stream: _Stream | None = None
        try:
            prompt_len = len(request.token_ids)
            error = self._rejection(prompt_len)
            if error is not None:
                failure = error
                yield EngineOutput(finish_reason=FinishReason.ERROR, error=error, prompt_tokens=prompt_len,
                                   cached_tokens=0)
                return
            capacity_tokens = self.pool.num_blocks * self.pool.block_size
            # The n-th output token is sampled from a step that computed prompt + n - 1 tokens.
            max_output = min(request.stop.max_tokens, self.context_length - prompt_len,
                             capacity_tokens - prompt_len + 1)
            if phase == "prefill":
                if self.arena is None:
                    yield EngineOutput(finish_reason=FinishReason.ERROR,
                                       error=f"this worker's role is {self.role}, not prefill")
                    return
                max_output = min(max_output, 1)
            if max_output <= 0:
                failure = "the prompt leaves no room for output"
                yield EngineOutput(finish_reason=FinishReason.LENGTH, prompt_tokens=prompt_len, cached_tokens=0)
                return
            stream = _Stream(
                token_ids=list(request.token_ids),
                prompt_len=prompt_len,
                max_output=max_output,
                offset=self._offset(request),
                logprobs=request.output.logprobs,
                prompt_logprobs=request.output.prompt_logprobs,
            )
            if phase == "prefill":
                stream.hold_id = request.request_id
                stream.room = room  # _emit sets it back to None once it has published the room
                if stream.room is not None and self.bootstrap is None:
                    yield EngineOutput(finish_reason=FinishReason.ERROR,
                                       error="this prefill worker serves no bootstrap room")
                    return
            elif phase == "decode" and kv is not None:
                if kv.region is None and self._rooms is not None and room_of(kv.engine_params) is not None:
                    try:  # the rendezvous: wait for the prefill worker to publish where the KV is
                        kv = await self._rooms.lookup(kv.engine_params)
                    except BootstrapError as exc:
                        log.warning("request %s cannot get its KV: %s", request.request_id, exc)
                        yield EngineOutput(finish_reason=FinishReason.ERROR, error=f"KV rendezvous failed: {exc}",
                                           kv_pull=KvPullReport(failed=str(exc)))
                        return
                self._plan_pull(stream, kv)
            self.scheduler.add(stream)
            self._wake.set()  # a step loop waiting for pulls can admit it
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
                    if output.error is not None:
                        failure = output.error
                    yield output
                    if output.finish_reason is not None:
                        return
            finally:
                if stream.loading:  # the pull writes into its blocks: it finishes the sequence
                    stream.abandoned = True
                elif stream.status is not SequenceStatus.FINISHED:  # closed or cancelled by the consumer
                    self.scheduler.finish(stream)
                    self._publish_events()
        finally:
            if fails_room and (stream is None or stream.room is not None):  # not published (see _emit)
                self.bootstrap.fail(room, failure)

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
            for seq in plan.loads:
                self._start_pull(seq)
            if not plan.scheduled:
                # Nothing to compute until a pull lands, held KV is released or a request comes.
                if plan.loads or scheduler.loading or self.held:
                    self._wake.clear()
                    await self._wake.wait()
                    deadline = clock()
                    continue
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
                output.kv_pull = seq.kv_pull
                if seq.prompt_logprobs is not None:
                    self._add_prompt_logprobs(output, seq.token_ids[:seq.prompt_len], seq.prompt_logprobs)
            if seq.logprobs is not None:
                self._add_logprobs(output, position, seq.logprobs)
            if seq.num_generated >= seq.max_output:
                output.finish_reason = FinishReason.LENGTH
                if seq.hold_id is not None:
                    output.kv_transfer = self._hold(seq)
                    if seq.room is not None and self.bootstrap is not None:
                        self.bootstrap.publish(seq.room, output.kv_transfer)
                        seq.room = None  # published: nothing left to fail
                else:
                    finish(seq)
            seq.push(output)

    # --- disaggregated serving ---------------------------------------------------------------

    def _hold(self, seq: _Stream) -> KvTransferParams:
        """Prefill done: write the prompt's KV into its blocks and keep them for the decode
        worker until it is released or the hold times out."""
        assert self.arena is not None and seq.hold_id is not None
        table = self.scheduler.detach(seq)
        prompt = seq.token_ids[: seq.prompt_len]
        block_ids = table.block_ids[: self.pool.blocks_for(seq.prompt_len)]
        self.arena.fill(block_ids, prompt)
        if self.config.inject_kv_corruption:
            self.arena.damage(block_ids[-1])
        self.release_kv(seq.hold_id)  # a retried request may reuse its id
        timer = asyncio.get_running_loop().call_later(self.config.kv_hold_timeout_s, self._expire, seq.hold_id)
        self.held[seq.hold_id] = (table, timer)
        return KvTransferParams(
            worker_id=self.worker_id,
            hold_id=seq.hold_id,
            num_tokens=seq.prompt_len,
            block_size=self.pool.block_size,
            bytes_per_token=self.arena.bytes_per_token,
            region=self.arena.region,
            block_ids=list(block_ids),
            decode_samples_first_token=self.config.decode_samples_first_token,
        )

    def _expire(self, hold_id: str) -> None:
        if hold_id in self.held:
            log.warning("KV of request %s was never pulled; released after %.0f s", hold_id, self.config.kv_hold_timeout_s)
            self.release_kv(hold_id)

    def release_kv(self, hold_id: str) -> None:
        entry = self.held.pop(hold_id, None)
        if self.bootstrap is not None:
            self.bootstrap.withdraw(hold_id)
        if entry is not None:
            table, timer = entry
            timer.cancel()
            self.pool.release(table)
            self._publish_events()
            self._wake.set()  # a waiting prompt may fit now

    def _plan_pull(self, seq: _Stream, kv: KvTransferParams) -> None:
        """Decode phase: pull the prompt's KV if it fits this worker, else compute it here."""
        reason = None
        if self.arena is None:
            reason = f"this worker's role is {self.role}: it has no KV to pull into"
        elif kv.region is None or kv.region.backend != self.arena.agent.name:
            backend = kv.region.backend if kv.region else "none"
            reason = f"the prefill worker's transfer backend is {backend}, this worker's is {self.arena.agent.name}"
        elif (kv.block_size, kv.bytes_per_token) != (self.pool.block_size, self.arena.bytes_per_token):
            reason = (f"the prefill worker's KV layout (block size {kv.block_size}, {kv.bytes_per_token} bytes per "
                      f"token) differs from this worker's ({self.pool.block_size}, {self.arena.bytes_per_token})")
        elif not 0 < kv.num_tokens <= len(seq.token_ids) or len(kv.block_ids) != self.pool.blocks_for(kv.num_tokens):
            reason = f"bad transfer parameters ({kv.num_tokens} tokens in {len(kv.block_ids)} blocks)"
        if reason is not None:
            log.warning("request computes its prompt here instead of pulling its KV: %s", reason)
            seq.kv_pull = KvPullReport(recomputed=reason)
            return
        seq.kv_tokens = kv.num_tokens
        seq.kv_source = kv
        # Continue the output cycle where the prefill worker's tokens left it.
        seq.offset += len(seq.token_ids) - kv.num_tokens

    def _start_pull(self, seq: Sequence) -> None:
        assert isinstance(seq, _Stream)
        task = asyncio.create_task(self._pull(seq), name="mocker-kv-pull")
        self._pulls.add(task)
        task.add_done_callback(self._pulls.discard)

    async def _pull(self, seq: _Stream) -> None:
        arena, kv = self.arena, seq.kv_source
        assert arena is not None and kv is not None and kv.region is not None
        first = seq.num_computed // self.pool.block_size  # blocks found in the local prefix cache
        pieces = arena.pieces(kv.block_ids, seq.table.block_ids, first, kv.num_tokens)
        started = time.perf_counter()
        report = KvPullReport(blocks=len(pieces), bytes=sum(p[2] for p in pieces), local_blocks=first)
        error = None
        try:
            try:
                await arena.agent.read_many(kv.region, arena.region_id, pieces)
            except TransferError as exc:
                log.warning("pulling the KV of %d tokens from worker %s failed (%s); computing it here",
                            kv.num_tokens, kv.worker_id, exc)
                report = KvPullReport(local_blocks=first, recomputed=f"transfer failed: {exc}")
                self.scheduler.load_failed(seq)
            else:
                report.seconds = time.perf_counter() - started
                bad = arena.first_mismatch(seq.table.block_ids, seq.token_ids[: kv.num_tokens], first)
                if bad is not None:
                    error = (f"KV transfer corrupted: block {bad} of {len(kv.block_ids)} pulled from worker "
                             f"{kv.worker_id} does not hold the KV of its tokens")
                    log.error("%s", error)
                else:
                    self.scheduler.loaded(seq)
        except Exception as exc:  # never leave the sequence loading forever
            log.exception("KV pull failed")
            error = f"KV pull failed: {exc!r}"
        seq.kv_pull = report
        if error is not None or seq.abandoned:
            seq.loading = False
            self.scheduler.finish(seq)
            if error is not None:
                seq.push(EngineOutput(finish_reason=FinishReason.ERROR, error=error, kv_pull=report))
        self._publish_events()
        self._wake.set()
        if self.scheduler.has_work() and (self._loop_task is None or self._loop_task.done()):
            self._loop_task = asyncio.create_task(self._run_steps(), name="mocker-steps")

    def _add_logprobs(self, output: EngineOutput, position: int, top: int) -> None:
        # Simulated but deterministic: a confident token, and ever less likely alternatives. The
        # sampled token is the most likely, so it heads its `top` list, as vLLM's and OpenAI's do.
        pool = self._token_pool
        chosen = -0.05 - 0.01 * (position % 7)
        output.logprobs = [chosen]
        output.top_logprobs = [[TokenLogprob(pool[(position + k) % len(pool)], chosen - 1.5 * k) for k in range(top)]]

    def _add_prompt_logprobs(self, output: EngineOutput, prompt: list[int], top: int) -> None:
        # Simulated but deterministic, from each token's id: a prompt token is less likely than
        # the mocker's own output; it heads its `top` list, then ever less likely alternatives.
        pool = self._token_pool
        chosen = [-0.5 - 0.25 * (token % 9) for token in prompt]
        output.prompt_logprobs = [None, *chosen[1:]]
        output.prompt_top_logprobs = [[]] + [
            [TokenLogprob(token if k == 0 else pool[(i + k) % len(pool)], lp - 1.5 * k) for k in range(top)]
            for i, (token, lp) in enumerate(zip(prompt[1:], chosen[1:]), start=1)
        ]

    def _publish_events(self) -> None:
        events = self.pool.take_events()
        if events:
            self._kv_events.publish(events)

    def _fail_all(self, error: str) -> None:
        """End every request with `error`; a prefill's room is failed with it by its
        generator's `finally`, which the error wakes."""
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
        for pull in list(self._pulls):
            pull.cancel()
        await asyncio.gather(*self._pulls, return_exceptions=True)
        for seq in self.scheduler.running:
            seq.loading = False
        self._fail_all("the engine stopped")
        for hold_id in list(self.held):
            self.release_kv(hold_id)
        if self.bootstrap is not None:
            await self.bootstrap.stop()
        if self._rooms is not None:
            await self._rooms.close()
        if self.arena is not None:
            self.arena.close()
