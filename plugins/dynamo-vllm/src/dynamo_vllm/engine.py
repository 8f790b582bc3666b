"""The vLLM engine: vLLM's v1 `AsyncLLM` in the worker process, behind dynamo's `Engine`.

- Requests arrive tokenized; each becomes vLLM's token input and `SamplingParams` with delta
  outputs, and its outputs stream back as `EngineOutput` deltas. Closing the stream (the client
  went away) closes vLLM's generator, which aborts the request in vLLM.
- The model card gets vLLM's real block size, KV capacity (GPU blocks) and context length,
  read after the engine core has profiled memory.
- KV events: vLLM's ZMQ publisher is pointed at this worker's subscriber; batches are
  translated into dynamo's events, kept in a mirror (for snapshots) and published.
- Load: a stat logger receives vLLM's scheduler statistics with every engine step; vLLM's own
  loggers run too unless --disable-log-stats (its periodic summary in the worker's log).
- The worker asks for vLLM's OpenAI-server scheduler defaults (`engine_args.serving_config`).
- Prefill and decode roles (`--mode`): vLLM's NIXL connector moves the KV (`disagg.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from dynamo_core.engines.base import Engine, EngineContext
from dynamo_core.protocols.engine import EngineInfo, EngineOutput, FinishReason, PreprocessedRequest
from dynamo_core.engines.kv_mirror import KvEventRelay
from dynamo_core.protocols.kv_events import KvStored, LoadMetrics
from dynamo_vllm import disagg
from dynamo_vllm.availability import require_vllm
from dynamo_vllm.kv_events import KvEventTranslator, decode_batch
from dynamo_vllm.load import SchedulerLoad
from dynamo_vllm.options import given_flags, vllm_argv
from dynamo_vllm.outputs import engine_output
from dynamo_vllm.sampling import sampling_kwargs, structured_output_kwargs

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

    from dynamo_core.engines.zmq_kv_events import KvEventSubscriber

log = logging.getLogger(__name__)

KV_EVENTS_TOPIC = "kv"


def _load_logger_factory(load: SchedulerLoad):
    """A vLLM per-engine stat logger factory feeding `load` (vLLM calls `record` on the
    AsyncLLM's event loop, after each batch of engine-core outputs)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class DynamoLoadLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0):
            self.engine_index = engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
            load.record(scheduler_stats)

        def log_engine_initialized(self) -> None:
            pass

    return DynamoLoadLogger


def _engine_input(tokens_prompt: Any) -> Any:
    """token ids -> what `AsyncLLM.generate` takes. vLLM 0.26 deprecates raw prompts there
    ("pass the outputs of Renderer.render_cmpl()"): a prompt the gateway has already tokenized
    is that output, `tokens_input(ids)`, and needs none of its renderer. Older vLLMs lack it."""
    try:
        from vllm.inputs import tokens_input
    except ImportError:
        return tokens_prompt
    return tokens_input  # both take prompt_token_ids=


class VllmEngine(Engine):
    supports_structured_output = True  # vLLM's structured outputs (xgrammar / guidance)
    supports_prompt_logprobs = True  # SamplingParams.prompt_logprobs
    supports_disaggregation = True  # through vLLM's NIXL connector
    uses_transfer_agent = False  # that connector moves the KV, not dynamo's `--transfer` agent

    def __init__(self, context: EngineContext, argv: list[str], kv_events: bool):
        if context.model_path is None:
            raise ValueError("--engine vllm needs --model: an HF-format model directory")
        self._context = context
        self._model_path = context.model_path
        self._argv = argv
        self._kv_events_enabled = kv_events
        self._llm: AsyncLLM | None = None
        self._load = SchedulerLoad()
        self._relay: KvEventRelay | None = None  # vLLM's batches -> the worker's events
        self._subscriber: KvEventSubscriber | None = None
        self._stats_task: asyncio.Task | None = None
        self._vllm: dict[str, Any] = {}  # vLLM's request classes, bound once vLLM is imported
        self._block_size = 0
        self._bytes_per_block = 0

    @classmethod
    def from_context(cls, context: EngineContext) -> "VllmEngine":
        require_vllm()
        # vLLM publishes no meaningful KV events without prefix caching, and routers then
        # treat this worker as holding nothing.
        kv_events = "--no-enable-prefix-caching" not in given_flags(context.options)
        return cls(context, vllm_argv(context.options), kv_events)

    async def start(self) -> EngineInfo:
        from vllm import SamplingParams, TokensPrompt
        from vllm.config import KVEventsConfig
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        from vllm.v1.engine.async_llm import AsyncLLM

        from vllm.usage.usage_lib import UsageContext

        from dynamo_vllm.engine_args import engine_args, serving_config
        from dynamo_core.engines.zmq_kv_events import KvEventSubscriber

        self._vllm = {
            "params": SamplingParams, "prompt": _engine_input(TokensPrompt), "delta": RequestOutputKind.DELTA,
            "structured": StructuredOutputsParams,
        }
        args = engine_args(self._model_path, self._argv)
        if self._kv_events_enabled:
            self._subscriber = KvEventSubscriber(self._context.worker_id or "worker", topic=KV_EVENTS_TOPIC)
            args.kv_events_config = KVEventsConfig(
                enable_kv_cache_events=True,
                publisher="zmq",
                endpoint=self._subscriber.endpoint,
                replay_endpoint=self._subscriber.replay_endpoint,
                topic=KV_EVENTS_TOPIC,
            )
        if self._context.role != "agg":
            from vllm.config import KVTransferConfig

            host, port = disagg.configure_side_channel(self._context.host)
            args.kv_transfer_config = disagg.transfer_config(args.kv_transfer_config, KVTransferConfig)
            log.info("%s worker: vLLM's %s moves the KV (handshakes on %s:%d)", self._context.role, disagg.CONNECTOR, host, port)
        log.info("starting vLLM for %s with %s", self._model_path, " ".join(self._argv) or "its defaults")
        config = serving_config(args)
        scheduler = config.scheduler_config
        log.info("vLLM scheduler: max_num_seqs=%d max_num_batched_tokens=%d (vllm serve's defaults unless given)",
                 scheduler.max_num_seqs, scheduler.max_num_batched_tokens)
        # Blocks this loop until the engine core is up (weights loaded, memory profiled, KV
        # cache allocated); the worker registers nowhere and serves nothing before that.
        self._llm = AsyncLLM.from_vllm_config(
            config, usage_context=UsageContext.OPENAI_API_SERVER, stat_loggers=[_load_logger_factory(self._load)],
            # vLLM keeps its statistics on for our stat logger (the load metrics) even under
            # --disable-log-stats, without its own loggers then.
            enable_log_requests=args.enable_log_requests, disable_log_stats=args.disable_log_stats,
        )
        config = self._llm.vllm_config  # the engine core's handshake filled in num_gpu_blocks
        block_size = config.cache_config.block_size
        blocks = config.cache_config.num_gpu_blocks or 0
        self._load.total_kv_blocks = blocks
        self._block_size = block_size
        self._bytes_per_block = self._kv_bytes_per_block(config)
        if self._subscriber is not None:
            translator = KvEventTranslator(block_size)
            self._relay = KvEventRelay("vLLM", lambda payload: translator.translate(decode_batch(payload)),
                                       self._context.kv_events)
            self._subscriber.start(self._relay.on_batch, self._relay.on_lost)
        if not args.disable_log_stats:
            self._stats_task = asyncio.create_task(self._log_stats(), name="vllm-log-stats")
        return EngineInfo(block_size=block_size, kv_capacity_blocks=blocks, context_length=config.model_config.max_model_len)

    async def generate(self, request: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        assert self._llm is not None, "start() first"
        vllm = self._vllm
        transfer = disagg.request_transfer_params(request)
        try:
            kwargs = sampling_kwargs(request)
            if transfer is not None:
                kwargs["extra_args"] = {"kv_transfer_params": transfer}
            structured = structured_output_kwargs(request)
            if structured:
                params = vllm["params"](**kwargs, output_kind=vllm["delta"],
                                        structured_outputs=vllm["structured"](**structured))
            else:
                params = vllm["params"](**kwargs, output_kind=vllm["delta"])
        except ValueError as exc:  # vLLM's own checks of the sampling parameters
            yield EngineOutput(finish_reason=FinishReason.ERROR, error=str(exc))
            return
        top_logprobs = request.output.logprobs
        phase = request.disagg.phase if request.disagg is not None else None
        stream = self._llm.generate(vllm["prompt"](prompt_token_ids=request.token_ids), params, request.request_id)
        self._load.in_flight += 1
        first = True
        try:
            async for out in stream:
                output = engine_output(out, first=first, top_logprobs=top_logprobs,
                                       top_prompt_logprobs=request.output.prompt_logprobs)
                if first and phase == "decode":
                    output.kv_pull = disagg.pull_report(request.disagg.kv if transfer else None, self._bytes_per_block)
                if phase == "prefill" and output.finish_reason is not None:
                    output.kv_transfer = disagg.prefill_result(
                        getattr(out, "kv_transfer_params", None), worker_id=self._context.worker_id,
                        request_id=request.request_id, prompt_tokens=len(request.token_ids), block_size=self._block_size,
                    )
                yield output
                first = False
        except Exception as exc:  # a rejected request (ValueError) or a failed engine
            log.warning("request %s failed in vLLM: %s", request.request_id, exc)
            yield EngineOutput(finish_reason=FinishReason.ERROR, error=f"vLLM: {exc}")
        finally:
            self._load.in_flight -= 1
            # Aborts the request in vLLM when it has not finished (the consumer went away).
            await stream.aclose()

    async def _log_stats(self) -> None:
        """vLLM's periodic engine summary (throughput, running and waiting requests, KV cache
        usage, prefix-cache hit rate) in the worker's log, every VLLM_LOG_STATS_INTERVAL
        seconds, as `vllm serve` prints it."""
        from vllm import envs

        assert self._llm is not None
        while True:
            await asyncio.sleep(envs.VLLM_LOG_STATS_INTERVAL)
            await self._llm.do_log_stats()

    @staticmethod
    def _kv_bytes_per_block(config: Any) -> int:
        """Bytes of one KV block over all this worker's ranks (for the transfer metrics: every
        rank moves its shard); 0 if unknown."""
        try:
            model, parallel = config.model_config, config.parallel_config
            dtype = config.cache_config.cache_dtype
            itemsize = model.dtype.itemsize if dtype in ("auto", None) else (1 if "fp8" in str(dtype) else 2)
            per_rank = disagg.kv_bytes_per_block(
                model.get_num_layers(parallel), model.get_num_kv_heads(parallel), model.get_head_size(),
                itemsize, config.cache_config.block_size,
            )
            return per_rank * parallel.tensor_parallel_size * parallel.pipeline_parallel_size
        except Exception:  # noqa: BLE001 - metrics only: a vLLM that moved these is still served
            return 0

    def load_metrics(self, worker_id: str) -> LoadMetrics:
        return self._load.metrics(worker_id)

    def kv_snapshot(self) -> list[KvStored]:
        return self._relay.mirror.snapshot() if self._relay is not None else []

    async def stop(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
        if self._subscriber is not None:
            await self._subscriber.stop()
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
