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

A prefill worker whose card has a `disagg_bootstrap` (SGLang) hands KV over through a
rendezvous instead: the frontend sends the request to it and to a decode worker at once, both
carrying its bootstrap address and a random room; the decode stream is the client's, the
prefill stream is drained in the background. Such a decode worker computes nothing alone, so
every request is split, and a split that fails before the client has seen a token of it (the
prefill worker died, declined or errored, or the decode worker could not get the KV) is tried
again with a fresh room on another prefill worker (the same one if it is the only one), up to
`--migration-limit` times. A decode worker that fails after tokens reached the client
continues as a migration (`migration.py`): the prompt plus those tokens, split again, never
re-sent from the start. Only when no split is left (or every rendezvous prefill worker has
left) is the request served whole, which fails with a 503 naming the way out when the decode
workers decline it and no aggregated worker takes it (and saying just that no worker serves
the model when none is left). Structured output is split
when every prefill and decode card says it is supported (the decode side applies the grammar),
and refused with a 400 naming the workers that lack it otherwise, unless aggregated workers
can serve it whole. A client that leaves cancels both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable

import msgspec

from dynamo_core.frontend import metrics
from dynamo_core.frontend.engine_client import EngineClient, StreamBrokenError
from dynamo_core.frontend.errors import BadRequestError, EngineError, ServiceUnavailableError
from dynamo_core.frontend.migration import Migration, finished_output
from dynamo_core.frontend.served_model import BOOTSTRAP_PREFILL, SPLIT_WITHOUT_GRAMMAR, ServedModel
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
        # Rendezvous prefill streams being drained, and the verdicts that name a split's failure.
        self._background: set[asyncio.Future] = set()

    def _aggregated_reason(self, model: ServedModel, request: PreprocessedRequest) -> str | None:
        """Why this request is served whole; None when it goes prefill then decode."""
        if not model.has_role("decode"):
            return "no_decode_worker"
        if not model.has_role("prefill"):
            return "no_prefill_worker"
        # A rendezvous engine's decode worker serves nothing without its prefill side (SGLang's
        # decode mode only takes bootstrapped requests, and SGLang's own router sends every
        # request to both): short prompts and one-token requests split too.
        rendezvous = model.has_role(BOOTSTRAP_PREFILL)
        if len(request.token_ids) < self.min_prompt_tokens and not rendezvous:
            return "short_prompt"
        if request.stop.max_tokens <= 1 and not rendezvous:
            return "single_token"  # the prefill alone answers it: no decode worker needed
        if request.guided is not None:
            if rendezvous:
                return _structured_output_route(model)
            # The decode worker would restart the constraint after the prefill worker's token.
            return "structured_output"
        return None

    def generate(self, model: ServedModel, request: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        reason = self._aggregated_reason(model, request)
        if reason is None:
            return self._disaggregated(model, request)
        if reason != "no_decode_worker":  # a disaggregated deployment serving this one whole
            metrics.DISAGG_FALLBACKS.labels(model.name, reason).inc()
        if reason == "no_prefill_worker" and model.had_rendezvous_prefill:
            # Its decode workers may take only split requests (SGLang's): say so if they decline.
            return self._served_whole(model, request)
        # The engine client's own stream: serving whole pays no extra layer per delta.
        return self._engine.generate(model, request)

    async def _disaggregated(self, model: ServedModel, request: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        if model.has_role(BOOTSTRAP_PREFILL):
            async for output in self._rendezvous(model, request):
                yield output
            return
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

    async def _rendezvous(self, model: ServedModel, request: PreprocessedRequest) -> AsyncIterator[EngineOutput]:
        """Split attempts until one streams the request to its end: a split that failed before
        its first token is tried again with a fresh room, one whose decode worker failed after
        tokens continues (as a migration) split again; whole only when no split is left."""
        limit = self._engine.migration_limit
        migration = Migration(request, limit)  # what reached the client, across attempts
        failed: set[str] = set()  # prefill workers that failed this request
        retries = 0
        last: _SplitFailed | None = None
        while (prefill_id := self._pick_prefill(model, migration.request, failed)) is not None:
            try:
                async for output in self._concurrent(model, migration.request, prefill_id):
                    migration.on_output(output)
                    yield output
                return
            except _SplitFailed as failure:
                failed.add(prefill_id)
                last = failure
                if retries >= limit:
                    break
                retries += 1
                # Tried again at once: the failure is named (and counted) once it is known.
                failure.when_settled(lambda reason, detail, retry=retries: self._rerouted(
                    model, request.request_id, reason, detail, retry, limit))
            except StreamBrokenError as broken:
                if migration.next_attempt(model.name, broken.reason, broken.message, broken, "split") is None:
                    yield finished_output()
                    return
        if last is None:
            metrics.DISAGG_FALLBACKS.labels(model.name, "no_prefill_worker").inc()
        else:  # the last split's failure
            last.when_settled(lambda reason, _detail: metrics.DISAGG_FALLBACKS.labels(model.name, reason).inc())
        async for output in self._served_whole(model, migration.request, last, retries + 1):
            migration.on_output(output)
            yield output

    @staticmethod
    def _rerouted(model: ServedModel, request_id: str, reason: str, detail: str, retry: int, limit: int) -> None:
        log.warning("split of request %s failed before its first token (%s: %s); tried again with a "
                    "fresh room (%d of %d)", request_id, reason, detail, retry, limit)
        metrics.REROUTES.labels(model.name, reason).inc()

    def _pick_prefill(self, model: ServedModel, request: PreprocessedRequest, failed: set[str]) -> str | None:
        """A rendezvous prefill worker that has not failed this request, else any (the only one
        may succeed the next time); None when the model has none."""
        workers = model.bootstrap_prefill_states()
        if not workers:
            return None  # (the last one left discovery while this request was being tried)
        untried = [w for w in workers if w.worker_id not in failed]
        try:
            return self._engine.select_worker(model, _phase(request, "prefill", None), untried or workers)
        except ServiceUnavailableError:
            return None

    async def _served_whole(self, model: ServedModel, request: PreprocessedRequest, last: _SplitFailed | None = None,
                            splits: int = 0) -> AsyncIterator[EngineOutput]:
        """A request of a rendezvous model served whole, after `splits` failed ones (`last` the
        last of them) or for want of a prefill worker; when no worker takes it (decode
        workers that serve only split requests decline it), a 503 saying why and what helps."""
        started = False
        try:
            async for output in self._engine.generate(model, request):
                started = True
                yield output
        except ServiceUnavailableError as exc:
            if started or not model.has_role("decode"):
                raise  # no decode worker declined it: the engine client's words say what is missing
            why = "it has no prefill worker"
            if last is not None:
                reason, detail = await last.settled()
                why = f"{splits} split(s) failed, the last with {reason}: {detail}"
            raise ServiceUnavailableError(
                f"model '{model.name}' cannot serve this request: {why}, and no worker serves it whole ({exc}). "
                "Decode workers of a rendezvous engine (SGLang) serve only requests split with a prefill worker: "
                "start a prefill worker for this model, or an aggregated one."
            ) from exc

    async def _concurrent(self, model: ServedModel, request: PreprocessedRequest, prefill_id: str) -> AsyncIterator[EngineOutput]:
        """One rendezvous handoff: prefill and decode at once, meeting at the prefill worker's
        bootstrap server in a room of their own. Raises `_SplitFailed` when it fails before the
        first token, `StreamBrokenError` when the decode worker fails after it."""
        bootstrap = model.workers[prefill_id].disagg_bootstrap or {}
        kv = KvTransferParams(
            worker_id=prefill_id,
            hold_id=request.request_id,
            num_tokens=len(request.token_ids),
            block_size=model.card.block_size,
            engine_params={**bootstrap, "bootstrap_room": secrets.randbits(63)},
        )
        held = msgspec.structs.replace(kv)  # what `_release` frees (it clears the hold id)
        prefill = asyncio.ensure_future(self._drain_prefill(model, _phase(request, "prefill", kv), prefill_id))
        self._background.add(prefill)
        prefill.add_done_callback(self._background.discard)
        decode = self._engine.generate(model, _phase(request, "decode", kv), migrate=False)
        next_output = asyncio.ensure_future(anext(decode))
        finished = False
        try:
            first, fallback = await _first_decode_output(request, next_output, prefill)
            if first is None and fallback is None:
                finished = True  # the decode side ended without a delta
                return
            if fallback is not None:
                await _close_stream(next_output, decode)
                if fallback.verdict is None:
                    prefill.cancel()
                else:  # it cancels the prefill once its window has passed
                    self._background.add(fallback.verdict)
                    fallback.verdict.add_done_callback(self._background.discard)
                finished = True
                raise fallback
            assert first is not None
            if first.kv_pull is not None:
                _record_pull(model.name, first.kv_pull)
                first.kv_pull = None
            self._release(model, held)  # the decode worker has the KV (or computed it)
            yield first
            async for output in decode:
                yield output
            finished = True
        finally:
            await _close_stream(next_output, decode)
            if not finished:
                prefill.cancel()  # the client left (or decode failed): the prefill is not needed
            # The KV is let go of once the prefill stream has ended, however it ended.
            prefill.add_done_callback(lambda _: self._release(model, held))

    async def _drain_prefill(self, model: ServedModel, request: PreprocessedRequest, worker_id: str) -> str | None:
        """Run the prefill side of a rendezvous (its tokens are not shown); why it failed, or None."""
        error: str | None = None
        try:
            async for output in self._engine.generate(model, request, worker_id=worker_id):
                if output.finish_reason is FinishReason.ERROR or output.error:
                    error = output.error or "error"
        except (ServiceUnavailableError, EngineError) as exc:
            error = str(exc)
        if error is not None:
            log.warning("prefill of request %s on worker %s failed: %s", request.request_id, worker_id, error)
            metrics.DISAGG_PREFILL_ERRORS.labels(model.name).inc()
        return error

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
        for prefill in list(self._background):
            prefill.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=2)
        if self._releases:
            await asyncio.wait(list(self._releases), timeout=2)


class _SplitFailed(Exception):
    """A rendezvous split that failed before the client saw a token of it (so it may be tried
    again): `reason` is prefill_failed or decode_kv_failed. `verdict`, when the decode side
    could not get the KV while the prefill still ran: the task that settles the reason
    (`_prefill_verdict`); the retry does not wait for it, only what names the failure does."""

    def __init__(self, reason: str, detail: str, verdict: asyncio.Task[tuple[str, str]] | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.verdict = reason, detail, verdict

    def _settle(self) -> None:
        assert self.verdict is not None and self.verdict.done()
        if not self.verdict.cancelled():  # (cancelled: the frontend is closing; keep what we had)
            self.reason, self.detail = self.verdict.result()

    async def settled(self) -> tuple[str, str]:
        """(reason, detail), once the verdict is in (at most `_PREFILL_VERDICT_S` after the failure)."""
        if self.verdict is not None:
            await asyncio.wait([self.verdict])
            self._settle()
        return self.reason, self.detail

    def when_settled(self, callback: Callable[[str, str], None]) -> None:
        """`callback(reason, detail)` now, or once the verdict is in: never waits for it."""
        if self.verdict is None:
            callback(self.reason, self.detail)
            return

        def settled(_task: asyncio.Task) -> None:
            self._settle()
            callback(self.reason, self.detail)

        self.verdict.add_done_callback(settled)


# A decode worker whose room failed usually hears so just before the prefill stream ends with
# its error: the prefill has this long to say so, for the failure to be put down to it.
_PREFILL_VERDICT_S = 0.1


async def _prefill_verdict(prefill: asyncio.Future, detail: str) -> tuple[str, str]:
    """Why a split whose decode side could not get the KV (`detail`) failed: the prefill's
    failure if it reports one within `_PREFILL_VERDICT_S`, else the decode side's. A prefill
    still running then is not needed any more: it is cancelled."""
    try:
        await asyncio.wait([prefill], timeout=_PREFILL_VERDICT_S)
    finally:
        prefill.cancel()  # (nothing, if it has ended)
    return _verdict_now(prefill) or ("decode_kv_failed", detail)


def _verdict_now(prefill: asyncio.Future) -> tuple[str, str] | None:
    """("prefill_failed", why) once the prefill has ended with a failure; else None."""
    if prefill.done() and not prefill.cancelled() and prefill.result() is not None:
        return "prefill_failed", prefill.result()
    return None


async def _first_decode_output(
    request: PreprocessedRequest, next_output: asyncio.Future, prefill: asyncio.Future
) -> tuple[EngineOutput | None, _SplitFailed | None]:
    """The decode side's first delta, or why the split failed instead: until the client has
    seen a token, a failed prefill (or a decode worker without the KV) costs the request
    nothing. (None, None): the decode stream ended empty."""
    await asyncio.wait([next_output, prefill], return_when=asyncio.FIRST_COMPLETED)
    if not next_output.done() and prefill.result() is not None:
        return None, _SplitFailed("prefill_failed", prefill.result())
    try:
        first = await next_output
    except StopAsyncIteration:
        return None, None
    except (ServiceUnavailableError, EngineError):
        if (verdict := _verdict_now(prefill)) is not None:
            return None, _SplitFailed(*verdict)  # the decode side failed because the prefill did
        raise
    if first.kv_pull is not None and first.kv_pull.failed is not None:
        log.warning("decode worker could not get the KV of request %s (%s)", request.request_id, first.kv_pull.failed)
        if (verdict := _verdict_now(prefill)) is not None:
            return None, _SplitFailed(*verdict)
        if prefill.done():
            return None, _SplitFailed("decode_kv_failed", first.kv_pull.failed)
        # The prefill may be about to report that it failed: settled in the background.
        pending = asyncio.ensure_future(_prefill_verdict(prefill, first.kv_pull.failed))
        return None, _SplitFailed("decode_kv_failed", first.kv_pull.failed, pending)
    return first, None


def _structured_output_route(model: ServedModel) -> str | None:
    """How a constrained request of a rendezvous model is served: split (None) when every
    prefill and decode worker applies grammars, whole ("structured_output") on aggregated
    workers otherwise; with neither, a 400 naming the workers that lack it."""
    if not model.has_role(SPLIT_WITHOUT_GRAMMAR):
        return None  # the decode side applies the grammar from the prompt on
    if model.has_role("agg"):
        return "structured_output"
    lacking = [  # only for the refusal: a request that is served walks no workers
        f"{h.role} worker {wid} (engine '{h.record.model.engine}')"
        for wid, h in model.workers.items()
        if h.role in ("prefill", "decode") and h.record.model is not None and not h.record.model.structured_output
    ]
    raise BadRequestError(
        f"model '{model.name}' splits every request between prefill and decode workers, and structured output "
        f"needs all of them to support it; these do not: {', '.join(lacking)}. "
        "(SGLang: start them with a grammar backend, e.g. --grammar-backend xgrammar.)"
    )


async def _close_stream(pending: asyncio.Future, stream: AsyncIterator[EngineOutput]) -> None:
    """Close a stream whose next delta `pending` awaits (it must end before the stream closes)."""
    if not pending.done():
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pending
    await stream.aclose()


def _phase(request: PreprocessedRequest, phase: str, kv: KvTransferParams | None) -> PreprocessedRequest:
    """The request unchanged but for its phase (the rendezvous sends both sides the same)."""
    return msgspec.structs.replace(request, disagg=DisaggParams(phase=phase, kv=kv))


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
