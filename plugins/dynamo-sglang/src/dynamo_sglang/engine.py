"""The SGLang engine: SGLang's offline `Engine` in the worker process, behind dynamo's `Engine`.

- `sglang.Engine` starts SGLang's scheduler and detokenizer processes and keeps its tokenizer
  manager in this process, on this worker's event loop (it takes the running loop as its own).
  Requests arrive tokenized and go in as `input_ids` (`skip_tokenizer_init`); their tokens
  stream back incrementally (`incremental_streaming_output`) as `EngineOutput` deltas. A stream
  closed before its end (the client went away) is aborted in SGLang
  (`tokenizer_manager.abort_request`), which frees its KV.
- The model card gets SGLang's real page size, KV capacity (its token pool over the page size)
  and context length, read after SGLang has profiled memory.
- KV events: SGLang's ZMQ publisher (`--kv-events-config`, owned here) is pointed at this
  worker's subscriber; batches are translated into dynamo's events, kept in a mirror (for
  snapshots) and published. A gap is replayed from SGLang's replay socket, or else reported as
  a cleared cache so routers resynchronise instead of routing on a stale index.
- Load: SGLang's load snapshots (`load.py`).
- Structured output: through SGLang's grammar backend, unless it is `none` (the default here
  when xgrammar is not installed, since SGLang's own default backend is xgrammar).
- Prefill and decode roles (`--mode`): SGLang's disaggregation moves the KV (`disagg.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import signal
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from dynamo_core.engines.base import Engine, EngineContext
from dynamo_core.engines.kv_mirror import KvEventRelay
from dynamo_core.protocols.engine import EngineInfo, EngineOutput, FinishReason, KvPullReport, PreprocessedRequest
from dynamo_core.protocols.kv_events import KvStored, LoadMetrics
from dynamo_sglang import disagg
from dynamo_sglang.availability import require_sglang
from dynamo_sglang.kv_events import KvEventTranslator, decode_batch
from dynamo_sglang.load import load_metrics
from dynamo_sglang.options import given_flags, sglang_argv
from dynamo_sglang.outputs import engine_output
from dynamo_sglang.sampling import logprob_fields, sampling_params

if TYPE_CHECKING:
    from dynamo_core.engines.zmq_kv_events import KvEventSubscriber

log = logging.getLogger(__name__)

KV_EVENTS_TOPIC = "kv"
# SGLang's own default is one token a page, which would make every token a KV event and a
# router block; 16 is vLLM's default block size. `--page-size` overrides it.
DEFAULT_PAGE_SIZE = 16


def _grammar_backend(given: set[str], argv: list[str]) -> str | None:
    """The grammar backend SGLang will run: the user's, else None (SGLang's default, xgrammar)
    when xgrammar is installed, else "none" (SGLang would fail to start without it)."""
    if "--grammar-backend" in given:
        return argv[argv.index("--grammar-backend") + 1]
    return None if importlib.util.find_spec("xgrammar") is not None else "none"


class SglangEngine(Engine):
    supports_disaggregation = True  # through SGLang's own PD disaggregation
    uses_transfer_agent = False  # SGLang's transfer backend moves the KV, not dynamo's agent

    def __init__(self, context: EngineContext, argv: list[str], given: set[str]):
        if context.model_path is None:
            raise ValueError("--engine sglang needs --model: an HF-format model directory")
        self._context = context
        self._argv = argv
        self._given = given
        self._grammar = _grammar_backend(given, argv)
        self.supports_structured_output = self._grammar != "none"
        self._kv_events_enabled = "--disable-radix-cache" not in given  # no prefix cache, no events
        self._engine: Any = None
        self._relay: KvEventRelay | None = None  # SGLang's batches -> the worker's events
        self._subscriber: KvEventSubscriber | None = None
        self._page_size = DEFAULT_PAGE_SIZE
        self._total_pages = 0
        self._bytes_per_page = 0
        self._in_flight = 0

    @classmethod
    def from_context(cls, context: EngineContext) -> "SglangEngine":
        require_sglang()
        return cls(context, sglang_argv(context.options), given_flags(context.options))

    def _overrides(self) -> dict[str, Any]:
        context = self._context
        overrides: dict[str, Any] = {
            "skip_tokenizer_init": True,
            "incremental_streaming_output": True,
            "port": disagg.free_port(),  # SGLang's HTTP server does not run; its port seeds others
            "host": context.host,  # where SGLang's prefill side binds its bootstrap server
        }
        if "--page-size" not in self._given:
            overrides["page_size"] = DEFAULT_PAGE_SIZE
        if self._grammar == "none":
            overrides["grammar_backend"] = "none"
        if self._subscriber is not None:
            overrides["kv_events_config"] = json.dumps({
                "publisher": "zmq", "endpoint": self._subscriber.endpoint,
                "replay_endpoint": self._subscriber.replay_endpoint, "topic": KV_EVENTS_TOPIC,
            })
        overrides.update(disagg.role_overrides(context.role, self._given, context.host))
        return overrides

    async def start(self) -> EngineInfo:
        from sglang.srt.entrypoints.engine import Engine as SglEngine

        from dynamo_core.engines.zmq_kv_events import KvEventSubscriber
        from dynamo_sglang.server_args import server_args

        if self._kv_events_enabled:
            self._subscriber = KvEventSubscriber(self._context.worker_id or "worker", topic=KV_EVENTS_TOPIC, engine="sglang")
        args = server_args(self._context.model_path or "", self._argv, self._overrides())
        log.info("starting SGLang for %s with %s", args.model_path, " ".join(self._argv) or "its defaults")
        # Blocks this loop until SGLang's scheduler is up (weights loaded, memory profiled, KV
        # pool allocated, CUDA graphs captured); the worker registers nowhere before that.
        self._engine = SglEngine(server_args=args)
        self._start_tokenizer_loop()
        self._page_size = int(args.page_size or 1)
        self._bytes_per_page = self._kv_bytes_per_page()
        info = self._scheduler_info()
        self._total_pages = int(info.get("max_total_num_tokens") or 0) // self._page_size
        context_length = int(getattr(self._engine.tokenizer_manager, "context_len", 0) or info.get("max_req_input_len") or 0)
        log.info("SGLang up: page size %d, %d KV pages, context %d, grammar backend %s, role %s",
                 self._page_size, self._total_pages, context_length, args.grammar_backend, self._context.role)
        if self._subscriber is not None:
            translator = KvEventTranslator(self._page_size)
            self._relay = KvEventRelay("SGLang", lambda payload: translator.translate(decode_batch(payload)),
                                       self._context.kv_events)
            self._subscriber.start(self._relay.on_batch, self._relay.on_lost)
        engine_info = EngineInfo(block_size=self._page_size, kv_capacity_blocks=self._total_pages, context_length=context_length)
        if self._context.role == "prefill":
            # The frontend sends both halves of a request at once to meet here (rendezvous handoff).
            engine_info.disagg_bootstrap = disagg.bootstrap_info(self._context.host, args.disaggregation_bootstrap_port)
            log.info("SGLang bootstrap server for prefill: %(bootstrap_host)s:%(bootstrap_port)d", engine_info.disagg_bootstrap)
        return engine_info

    def _start_tokenizer_loop(self) -> None:
        """Start SGLang's output loop now, keeping the worker's SIGTERM handling: SGLang puts its
        own SIGTERM handler on the loop (it would exit the process without the worker draining
        and deregistering), so the worker's is put back. SGLang's SIGQUIT handler stays: its
        scheduler sends SIGQUIT when it dies, and the worker must then exit too."""
        loop = asyncio.get_running_loop()
        saved = getattr(loop, "_signal_handlers", {}).get(signal.SIGTERM)
        self._engine.tokenizer_manager.auto_create_handle_loop()
        with contextlib.suppress(Exception):
            if saved is not None:
                loop.add_signal_handler(signal.SIGTERM, saved._callback, *saved._args)
            else:
                loop.remove_signal_handler(signal.SIGTERM)

    def _scheduler_info(self) -> dict[str, Any]:
        try:
            return dict(self._engine._scheduler_init_result.scheduler_infos[0])
        except (AttributeError, IndexError, TypeError):  # a later SGLang moved it
            return {}

    async def generate(self, request: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        assert self._engine is not None, "start() first"
        if request.disagg is None and self._context.role != "agg":
            # An SGLang prefill or decode engine serves only its half of a request that carries a
            # bootstrap room; a whole request belongs on another worker.
            yield EngineOutput(finish_reason=FinishReason.ERROR, retry_elsewhere=True,
                               error=f"an SGLang {self._context.role} worker serves only disaggregated requests")
            return
        try:
            params = sampling_params(request)
            extra = {**logprob_fields(request), **disagg.request_bootstrap(request)}
        except ValueError as exc:  # includes UnsupportedRequestError
            yield EngineOutput(finish_reason=FinishReason.ERROR, error=str(exc))
            return
        top_logprobs = request.output.logprobs
        phase = request.disagg.phase if request.disagg is not None else None
        rid = request.request_id
        self._in_flight += 1
        finished = False
        first = True
        stream = None
        try:
            stream = await self._engine.async_generate(
                input_ids=list(request.token_ids), sampling_params=params, stream=True, rid=rid, **extra)
            async for chunk in stream:
                output = engine_output(chunk, first=first, top_logprobs=top_logprobs)
                if first and phase == "decode":
                    output.kv_pull = self._pull_report(request, output)
                first = False
                finished = output.finish_reason is not None
                yield output
                if finished:
                    break
        except Exception as exc:  # a rejected request (ValueError) or a failed engine
            finished = True  # SGLang has already dropped it
            log.warning("request %s failed in SGLang: %s", rid, exc)
            failed = EngineOutput(finish_reason=FinishReason.ERROR, error=f"SGLang: {exc}")
            if phase == "decode" and first:
                failed.kv_pull = KvPullReport(failed=failed.error)  # the frontend serves it whole
            yield failed
        finally:
            self._in_flight -= 1
            if not finished:
                # The consumer went away: SGLang frees the request's KV on abort.
                self._engine.tokenizer_manager.abort_request(rid=rid)
                log.info("aborted request %s in SGLang (its stream was closed)", rid)
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()

    def _pull_report(self, request: PreprocessedRequest, first: EngineOutput) -> KvPullReport:
        """What the decode side's first delta says about the KV it got through the room: the
        prompt's pages, or why it got none (SGLang aborts a request whose transfer failed before
        any token; the frontend then serves the request whole). SGLang does not time it."""
        if first.finish_reason is FinishReason.ERROR and not first.token_ids:
            return KvPullReport(failed=first.error or "SGLang ended the request without a token")
        pages = -(-len(request.token_ids) // self._page_size)
        return KvPullReport(blocks=pages, bytes=pages * self._bytes_per_page, seconds=None)

    def _kv_bytes_per_page(self) -> int:
        """Bytes of one KV page over all layers (for the transfer metrics); 0 if unknown."""
        try:
            config = self._engine.tokenizer_manager.model_config
            hf = config.hf_text_config
            heads = config.get_num_kv_heads(1)
            head_dim = getattr(config, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
            itemsize = 1 if "fp8" in str(self._engine.server_args.kv_cache_dtype) else config.dtype.itemsize
            return 2 * config.num_hidden_layers * heads * head_dim * itemsize * self._page_size
        except Exception:  # noqa: BLE001 - metrics only: an SGLang that moved these is still served
            return 0

    def load_metrics(self, worker_id: str) -> LoadMetrics:
        snapshots: list[Any] = []
        if self._engine is not None:
            with contextlib.suppress(Exception):  # shared memory not written yet
                snapshots = [s for s in self._engine.tokenizer_manager.load_snapshot_reader.read_all() if s is not None]
        return load_metrics(worker_id, snapshots, in_flight=self._in_flight, page_size=self._page_size,
                            total_pages=self._total_pages)

    def kv_snapshot(self) -> list[KvStored]:
        return self._relay.mirror.snapshot() if self._relay is not None else []

    async def stop(self) -> None:
        if self._subscriber is not None:
            await self._subscriber.stop()
        if self._engine is not None:
            engine, self._engine = self._engine, None
            # Waits for SGLang's processes to release the GPU (up to a minute): off the loop.
            await asyncio.to_thread(engine.shutdown)
