"""The TensorRT-LLM engine: `tensorrt_llm.LLM` (PyTorch backend) in the worker, behind dynamo's `Engine`.

- Start: `LLM(**kwargs)` with the worker's LLM arguments (`options.llm_arguments`). The model
  card gets TensorRT-LLM's block size (`llm.args.kv_cache_config.tokens_per_block`), its GPU
  KV capacity (`get_kv_cache_capacity()`, else the `created` KV events) and `max_seq_len`.
- Requests: token ids and `SamplingParams` with an explicit `end_id` (`sampling.py`) go to
  `generate_async(..., streaming=True)`; the result is iterated as it updates and its
  cumulative outputs become deltas (`outputs.py`). A stream that is closed or cancelled before
  the request finished (the client went away) calls the result's `abort()`; a decode worker's
  generation-only request whose KV is still in flight is aborted once the KV has arrived
  (`_abort_after_kv_arrives`).
- KV events: `get_kv_cache_events_async` is drained by a task on the worker's loop; the events
  are translated (`kv_events.py`), kept in a mirror (for snapshots) and published.
- Load: `get_stats_async` is drained likewise into `load.IterationLoad`.
- Prefill and decode roles: `DisaggregatedParams` context-only / generation-only, the KV moved
  by TensorRT-LLM's cache transceiver (`disagg.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from dynamo_core.engines.base import Engine, EngineContext
from dynamo_core.engines.kv_mirror import KvCacheMirror
from dynamo_core.protocols.engine import EngineInfo, EngineOutput, FinishReason, PreprocessedRequest
from dynamo_core.protocols.kv_events import KvStored, LoadMetrics
from dynamo_core.runtime.tasks import cancel_and_wait
from dynamo_trtllm import disagg
from dynamo_trtllm.availability import import_trtllm, require_trtllm
from dynamo_trtllm.kv_events import KvEventTranslator
from dynamo_trtllm.load import IterationLoad
from dynamo_trtllm.options import LlmArguments, adapted_to_release, llm_arguments
from dynamo_trtllm.outputs import OutputStream
from dynamo_trtllm.sampling import sampling_kwargs

log = logging.getLogger(__name__)

# How long one drain of TensorRT-LLM's event and stats queues waits for the next item before
# it ends (`IterationResult` stops at its timeout); the next drain starts at once. After a
# failed read the poller waits `POLL_RETRY_S`.
POLL_TIMEOUT_S = 0.5
POLL_RETRY_S = 1.0
# At start-up, how long to wait for the `created` KV events that give the KV capacity
CREATED_EVENTS_TIMEOUT_S = 0.5  # they are queued while LLM() builds the cache, before it returns
DEFAULT_TOKENS_PER_BLOCK = 32  # KvCacheConfig.tokens_per_block's default in the releases read


def _model_config(model_path: str) -> dict[str, Any]:
    """The model's HF config.json (its context length and KV shape), or {}."""
    try:
        with open(os.path.join(model_path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


class TrtllmEngine(Engine):
    supports_disaggregation = True  # through TensorRT-LLM's cache transceiver
    uses_transfer_agent = False  # the transceiver moves the KV, not dynamo's `--transfer` agent

    def __init__(self, context: EngineContext, args: LlmArguments):
        if context.model_path is None:
            raise ValueError("--engine trtllm needs --model: an HF-format model directory")
        self._context = context
        self._args = args
        self._llm: Any = None
        # TensorRT-LLM's request classes, bound once it is imported (stand-ins in tests).
        self._sampling_params: Any = None
        self._disaggregated_params: Any = None
        self._logprob: Any = None
        self._block_size = args.block_size or DEFAULT_TOKENS_PER_BLOCK
        self._bytes_per_block = 0
        self._load = IterationLoad()
        self._mirror = KvCacheMirror()
        self._translator: KvEventTranslator | None = None
        self._tasks: list[asyncio.Task] = []
        # Aborts of decode requests that wait for their KV to arrive (`_abort_after_kv_arrives`).
        self._deferred_aborts: set[asyncio.Task] = set()

    @classmethod
    def from_context(cls, context: EngineContext) -> "TrtllmEngine":
        require_trtllm()
        if context.model_path is None:
            raise ValueError("--engine trtllm needs --model: an HF-format model directory")
        return cls(context, llm_arguments(context.options, context.model_path, context.role))

    async def start(self) -> EngineInfo:
        api = import_trtllm()
        kwargs = self._llm_kwargs(self._args.kwargs)
        log.info("starting TensorRT-LLM for %s with %s", self._context.model_path,
                 {k: v for k, v in kwargs.items() if k != "model"})
        # Blocks this loop until the model is loaded and the KV cache allocated; the worker
        # registers nowhere and serves nothing before that. It stays on the loop's thread:
        # TensorRT-LLM binds its results' async queues to the loop running when they are made.
        return await self.started(api.llm(**kwargs), api.sampling_params, api.disaggregated_params, api.logprob)

    async def started(self, llm: Any, sampling_params: Any, disaggregated_params: Any, logprob: Any = None) -> EngineInfo:
        """Serve with this started LLM and these request classes (TensorRT-LLM's; stand-ins in
        tests): read what the model card needs and start the event and stats readers."""
        self.bind(llm, sampling_params, disaggregated_params, logprob)
        args = getattr(llm, "args", None)
        kv_config = getattr(args, "kv_cache_config", None)
        self._block_size = int(getattr(kv_config, "tokens_per_block", None) or self._block_size)
        model_config = _model_config(self._context.model_path)
        context_length = int(getattr(args, "max_seq_len", None) or 0) or int(model_config.get("max_position_embeddings") or 0)
        capacity = self._kv_capacity(llm)
        # For the transfer metrics; every tensor-parallel rank moves its shard, so the whole.
        self._bytes_per_block = disagg.kv_bytes_per_block(
            model_config, self._block_size, str(getattr(kv_config, "dtype", None) or "auto"))
        if self._args.kv_events:
            self._translator = KvEventTranslator(self._block_size)
            await self._drain_kv_events(CREATED_EVENTS_TIMEOUT_S)
            capacity = capacity or self._translator.kv_capacity_blocks
        else:
            log.warning("KV block reuse or the event buffer is off: no KV events, routers see no cached prefixes")
        self._load.total_kv_blocks = capacity  # iteration stats' maxNumBlocks update it
        if not capacity:
            log.warning("TensorRT-LLM did not say its KV capacity yet: the model card reports 0 blocks")
        self._tasks = [asyncio.create_task(self._poll(self._drain_stats), name="trtllm-stats")]
        if self._translator is not None:
            self._tasks.append(asyncio.create_task(self._poll(self._drain_kv_events), name="trtllm-kv-events"))
        return EngineInfo(block_size=self._block_size, kv_capacity_blocks=self._load.total_kv_blocks,
                          context_length=context_length)

    def _kv_capacity(self, llm: Any) -> int:
        """GPU KV blocks from `LLM.get_kv_cache_capacity()` (later releases; {"maxNumBlocks",
        "tokensPerBlock", "maxNumTokens"}); 0 where the release lacks it (the `created` KV
        events say it then)."""
        capacity = getattr(llm, "get_kv_cache_capacity", None)
        if capacity is None:
            return 0
        try:
            info = capacity()
        except Exception as exc:  # noqa: BLE001 - the events or stats still tell
            log.debug("get_kv_cache_capacity failed: %s", exc)
            return 0
        if info.get("tokensPerBlock"):
            self._block_size = int(info["tokensPerBlock"])
        return int(info.get("maxNumBlocks") or 0)

    @staticmethod
    def _llm_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
        """Nested sections as TensorRT-LLM's config classes, as trtllm-serve builds them (the
        releases read also accept plain mappings; older ones did not for every section), and
        the transceiver configured as this release takes it (`options.adapted_to_release`)."""
        try:
            from tensorrt_llm.llmapi.llm_args import CacheTransceiverConfig

            fields = {name: f.annotation for name, f in CacheTransceiverConfig.model_fields.items()}
        except (ImportError, AttributeError):
            fields = None
        kwargs = adapted_to_release(kwargs, fields)
        try:
            from tensorrt_llm.llmapi.llm_args import update_llm_args_with_extra_dict
        except ImportError:
            return kwargs
        return update_llm_args_with_extra_dict({}, kwargs)

    def bind(self, llm: Any, sampling_params: Any, disaggregated_params: Any, logprob: Any = None) -> None:
        """Use this LLM and these request classes (TensorRT-LLM's; stand-ins in tests)."""
        self._llm, self._sampling_params, self._disaggregated_params = llm, sampling_params, disaggregated_params
        self._logprob = logprob

    def _request_args(self, request: PreprocessedRequest) -> tuple[list[int], dict[str, Any], Any, int, disagg.DecodePlan | None]:
        """prompt, SamplingParams kwargs, DisaggregatedParams (or None), output tokens to skip, decode plan."""
        phase = request.disagg.phase if request.disagg is not None else None
        if phase == "prefill":
            return list(request.token_ids), sampling_kwargs(request), \
                self._disaggregated_params(request_type=disagg.CONTEXT_ONLY), 0, None
        if phase == "decode":
            plan = disagg.decode_plan(request)
            if plan.state is not None:
                params = self._disaggregated_params(**disagg.generation_params_kwargs(plan.state, self._logprob))
                return plan.prompt, sampling_kwargs(request, extra_tokens=plan.skip_tokens), params, plan.skip_tokens, plan
            log.warning("request %s computes its prompt on this decode worker: %s", request.request_id, plan.reason)
            return list(request.token_ids), sampling_kwargs(request), None, 0, plan
        return list(request.token_ids), sampling_kwargs(request), None, 0, None

    async def generate(self, request: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        assert self._llm is not None, "start() first"
        phase = request.disagg.phase if request.disagg is not None else None
        try:
            prompt, kwargs, disaggregated, skip, plan = self._request_args(request)
            params = self._sampling_params(**kwargs)
            # A prefill answers once, when its context is done (as trtllm-serve's context
            # servers run); everything else streams.
            result = self._llm.generate_async(
                {"prompt_token_ids": prompt}, sampling_params=params, streaming=phase != "prefill",
                disaggregated_params=disaggregated,
            )
        except Exception as exc:  # refused before it started (ValueError, RequestError, ...)
            yield EngineOutput(finish_reason=FinishReason.ERROR, error=f"TensorRT-LLM: {exc}")
            return
        # A decode worker reports the prefill worker's cached tokens: TensorRT-LLM counts a
        # generation-only request's whole transferred prompt as cached.
        transferred = plan.state if plan is not None else None
        stream = OutputStream(top_logprobs=request.output.logprobs, block_size=self._block_size, skip_tokens=skip,
                              cached_tokens=transferred.cached_tokens if transferred is not None else None)
        self._load.in_flight += 1
        # A generation-only request has no update before its KV has arrived from the prefill
        # worker (its first one carries the context's token).
        awaiting_kv = disaggregated is not None and phase == "decode"
        try:
            if phase == "prefill":
                await result
                output = stream.delta(result) or EngineOutput()
                completion = result.outputs[0]
                output.kv_transfer = disagg.prefill_result(
                    getattr(completion, "disaggregated_params", None), worker_id=self._context.worker_id,
                    request_id=request.request_id, prompt_tokens=len(prompt), block_size=self._block_size,
                    cached_tokens=output.cached_tokens or 0,
                )
                yield output
                return
            first = True
            async for update in result:
                awaiting_kv = False
                output = stream.delta(update)
                if output is None:
                    continue
                if first and plan is not None:
                    output.kv_pull = disagg.pull_report(plan, self._block_size, self._bytes_per_block)
                first = False
                yield output
        except Exception as exc:  # a failed request or engine
            log.warning("request %s failed in TensorRT-LLM: %s", request.request_id, exc)
            yield EngineOutput(finish_reason=FinishReason.ERROR, error=f"TensorRT-LLM: {exc}")
        finally:
            if not result.finished and awaiting_kv:
                # The consumer went away while the KV is in flight: the request holds its slot
                # and blocks until the deferred abort, which ends its count in flight.
                self._abort_after_kv_arrives(result, request.request_id)
            else:
                self._load.in_flight -= 1
                if not result.finished:
                    # The consumer went away (or the stream failed): free the request's slot and KV.
                    with contextlib.suppress(Exception):
                        result.abort()

    def _abort_after_kv_arrives(self, result: Any, request_id: str) -> None:
        """Abort a generation-only request once its KV has arrived, not while it is in flight.

        TensorRT-LLM's cancel of a request whose KV transfer is under way reaches only queued
        transfers: an in-flight one kept its blocks, and under bursts of cancellations left the
        workers wedged (TensorRT-LLM PRs #12314, #13713; in-flight cancel is opt-in there,
        `TRTLLM_DISAGG_ENABLE_INFLIGHT_CANCEL=1`, for some transceivers only). NVIDIA's Dynamo
        (`_DeferredAbort`, for 1.3.0rc22) therefore reads the result until its first update, which
        comes once the transfer is complete, and aborts then. So does this. A transfer that never
        completes ends the request itself at the transceiver's `kv_transfer_timeout_ms`."""

        async def abort_when_arrived() -> None:
            with contextlib.suppress(Exception):
                async for _ in result:
                    break
            if not result.finished:
                with contextlib.suppress(Exception):
                    result.abort()
            log.debug("request %s aborted after its KV arrived", request_id)

        def finished(task: asyncio.Task) -> None:
            # However the task ends (aborted, or cancelled by `stop` before it ran at all).
            self._deferred_aborts.discard(task)
            self._load.in_flight -= 1

        task = asyncio.get_running_loop().create_task(abort_when_arrived(), name=f"trtllm-abort-{request_id}")
        self._deferred_aborts.add(task)
        task.add_done_callback(finished)

    async def _poll(self, drain) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                read = await drain(POLL_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad read must not stop the reports
                log.exception("reading TensorRT-LLM's %s failed", drain.__name__)
                await asyncio.sleep(POLL_RETRY_S)
                continue
            if not read and loop.time() - started < POLL_TIMEOUT_S / 2:
                # An iterable that ends at once (the executor gives an empty one when the queue
                # is off) would otherwise spin this loop.
                await asyncio.sleep(POLL_TIMEOUT_S)

    @staticmethod
    def _rearmed(items: Any) -> Any:
        """The executor hands out one `IterationResult` per queue, which stays exhausted once a
        read timed out until the executor re-arms it on the next request submitted
        (`mark_undone`). Re-armed here, so that events and stats of requests still running, and
        removals after the last one, are read when they happen rather than at the next request."""
        mark_undone = getattr(items, "mark_undone", None)
        if mark_undone is not None:
            mark_undone()
        return items

    async def _drain_kv_events(self, timeout: float) -> int:
        """Translate, mirror and publish the KV events TensorRT-LLM has; how many it had."""
        assert self._translator is not None
        read = 0
        async for event in self._rearmed(self._llm.get_kv_cache_events_async(timeout=timeout)):
            read += 1
            events = self._translator.translate([event])
            if events:
                self._mirror.apply(events)
                self._context.kv_events.publish(events)
        return read

    async def _drain_stats(self, timeout: float) -> int:
        """Record the iteration stats TensorRT-LLM has; how many it had."""
        read = 0
        async for stats in self._rearmed(self._llm.get_stats_async(timeout=timeout)):
            read += 1
            self._load.record(stats if isinstance(stats, dict) else json.loads(stats))
        return read

    def load_metrics(self, worker_id: str) -> LoadMetrics:
        return self._load.metrics(worker_id)

    def kv_snapshot(self) -> list[KvStored]:
        return self._mirror.snapshot()

    async def stop(self) -> None:
        await cancel_and_wait([*self._tasks, *self._deferred_aborts])  # shutdown() ends their requests
        self._tasks = []
        if self._llm is not None:
            llm, self._llm = self._llm, None
            llm.shutdown()
