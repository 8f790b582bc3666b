"""Disaggregated serving in the frontend: prefill on one worker, decode on another.

For a model with prefill and decode workers, a long enough prompt goes first to a prefill
worker (picked by the model's prefill router) with `max_tokens` 1. Its answer is the first
token and where the prompt's KV is held. That token goes to the client at once; then a decode
worker (picked by the model's main router) gets the prompt plus that token and the transfer
parameters, pulls the KV and streams the rest. The frontend then tells the prefill worker to
let the KV go.

Whatever fails before the client has seen a token falls back to aggregated serving: no live
prefill worker, every prefill worker failing the request, a prefill error. A decode worker
that cannot pull the KV computes the prompt itself (and says so); one that dies before
answering is replaced by another, as for any request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import msgspec

from dynamo_core.frontend import metrics
from dynamo_core.frontend.engine_client import EngineClient
from dynamo_core.frontend.errors import EngineError, ServiceUnavailableError
from dynamo_core.frontend.served_model import ServedModel
from dynamo_core.protocols.engine import (
    DisaggParams,
    EngineOutput,
    FinishReason,
    KvPullReport,
    KvTransferParams,
    PreprocessedRequest,
    merge_outputs,
)
from dynamo_core.runtime.transports import TransportClients
from dynamo_core.protocols.names import KV_RELEASE_ENDPOINT

log = logging.getLogger(__name__)


class DisaggregatingClient:
    """`generate` for the serving path: aggregated, or prefill then decode when it pays."""

    def __init__(self, engine: EngineClient, transports: TransportClients, min_prompt_tokens: int):
        self._engine = engine
        self._transports = transports
        self.min_prompt_tokens = min_prompt_tokens
        self._releases: set[asyncio.Task] = set()

    def _aggregated_reason(self, model: ServedModel, request: PreprocessedRequest) -> str | None:
        """Why this request is served whole; None when it goes prefill then decode."""
        if not model.has_role("decode"):
            return "no_decode_worker"
        if not model.has_role("prefill"):
            return "no_prefill_worker"
        if len(request.token_ids) < self.min_prompt_tokens:
            return "short_prompt"
        if request.stop.max_tokens <= 1:
            return "single_token"  # the prefill alone answers it: no decode worker needed
        if request.guided is not None:
            # The decode worker would restart the constraint after the prefill worker's token.
            return "structured_output"
        return None

    def generate(self, model: ServedModel, request: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        reason = self._aggregated_reason(model, request)
        if reason is None:
            return self._disaggregated(model, request)
        if reason != "no_decode_worker":  # a disaggregated deployment serving this one whole
            metrics.DISAGG_FALLBACKS.labels(model.name, reason).inc()
        # The engine client's own stream: aggregated serving pays no extra layer per delta.
        return self._engine.generate(model, request)

    async def _disaggregated(self, model: ServedModel, request: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        first = await self._prefill(model, request)
        if first is None:
            metrics.DISAGG_FALLBACKS.labels(model.name, "prefill_failed").inc()
            async for output in self._engine.generate(model, request):
                yield output
            return
        kv = first.kv_transfer
        first.kv_transfer = None
        try:
            if kv is None or first.finish_reason is FinishReason.STOP or request.stop.max_tokens <= len(first.token_ids):
                yield first  # nothing left to decode
                return
            if kv.decode_samples_first_token:
                # The decode worker samples the first token again: the prefill's is not shown.
                async for output in self._decode(model, request, kv, after=None, usage=first):
                    yield output
                return
            first.finish_reason = None
            yield first
            async for output in self._decode(model, request, kv, after=first, usage=None):
                yield output
        finally:
            if kv is not None:
                self._release(model, kv)

    async def _prefill(self, model: ServedModel, request: PreprocessedRequest) -> EngineOutput | None:
        """The prefill worker's answer (first token, KV location), or None to serve it whole."""
        prefill = msgspec.structs.replace(
            request,
            stop=msgspec.structs.replace(request.stop, max_tokens=1, min_tokens=min(request.stop.min_tokens, 1)),
            disagg=DisaggParams(phase="prefill"),
        )
        outputs: list[EngineOutput] = []
        try:
            async for output in self._engine.generate(model, prefill):
                outputs.append(output)
        except (ServiceUnavailableError, EngineError) as exc:
            log.warning("prefill of request %s failed (%s); serving it on a decode worker alone", request.request_id, exc)
            return None
        if not outputs:
            return None
        first = merge_outputs(outputs)
        if first.finish_reason is FinishReason.ERROR or first.error:
            log.warning("prefill worker refused request %s (%s); serving it on a decode worker alone",
                        request.request_id, first.error)
            if first.kv_transfer is not None:
                self._release(model, first.kv_transfer)
            return None
        return first

    async def _decode(
        self,
        model: ServedModel,
        request: PreprocessedRequest,
        kv: KvTransferParams,
        after: EngineOutput | None,
        usage: EngineOutput | None,
    ) -> AsyncIterator[EngineOutput]:
        """The decode phase: after the prefill worker's token (`after`), or from the prompt
        alone. The client's usage counts the prompt once, as the prefill worker saw it: from
        `usage` when that output was not shown."""
        shown = after.token_ids if after is not None else []
        decode = msgspec.structs.replace(
            request,
            token_ids=[*request.token_ids, *shown],
            stop=msgspec.structs.replace(
                request.stop,
                max_tokens=request.stop.max_tokens - len(shown),
                min_tokens=max(0, request.stop.min_tokens - len(shown)),
            ),
            disagg=DisaggParams(phase="decode", kv=kv),
        )
        started = False
        async for output in self._engine.generate(model, decode):
            if not started:
                started = True
                output.prompt_tokens = usage.prompt_tokens if usage is not None else None
                output.cached_tokens = usage.cached_tokens if usage is not None else None
                if output.kv_pull is not None:
                    _record_pull(model.name, output.kv_pull)
                self._release(model, kv)  # the decode worker has the KV (or computed it)
                output.kv_pull = None
            yield output

    def _release(self, model: ServedModel, kv: KvTransferParams) -> None:
        """Tell the prefill worker to let the KV go (once; in the background)."""
        handle = model.workers.get(kv.worker_id)
        if handle is None or kv.hold_id == "":
            return  # gone: nothing to free there
        hold_id, kv.hold_id = kv.hold_id, ""
        task = asyncio.ensure_future(self._call_release(handle.record, hold_id))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _call_release(self, record, hold_id: str) -> None:
        try:
            async for _ in self._transports.call(record, KV_RELEASE_ENDPOINT, hold_id.encode()):
                pass
        except Exception as exc:  # noqa: BLE001 - it lets the KV go by itself after its hold timeout
            log.info("could not release KV %s on prefill worker %s (%s); it frees it after its hold timeout",
                     hold_id, record.instance_id, exc)

    async def close(self) -> None:
        """Finish the releases under way (before the transports close under them)."""
        if self._releases:
            await asyncio.wait(list(self._releases), timeout=2)


def _record_pull(model: str, report: KvPullReport) -> None:
    if report.recomputed is not None:
        log.warning("decode worker computed the prompt itself: %s", report.recomputed)
        metrics.DISAGG_FALLBACKS.labels(model, "decode_recomputed").inc()
        return
    metrics.DISAGG_REQUESTS.labels(model).inc()
    metrics.KV_TRANSFER_BYTES.labels(model).inc(report.bytes)
    metrics.KV_TRANSFER_BLOCKS.labels(model).inc(report.blocks)
    if report.seconds is not None:
        metrics.KV_TRANSFER_SECONDS.labels(model).observe(report.seconds)
