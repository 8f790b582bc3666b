"""Sends a preprocessed request to a worker picked by the model's router, streams the deltas.

A worker that cannot be reached, whose connection drops before it sent anything, or that says
it is shutting down (between leaving discovery and this frontend noticing), costs the request
nothing: it is routed again among the remaining workers. Once output has reached the client,
a worker that fails (connection lost, or no output within `--stall-timeout`) hands the request
to another worker as a continuation (`frontend/migration.py`), up to `--migration-limit` times;
beyond that the stream ends with an error. A worker that stalled is not chosen again until it
reports its load again (`WorkerHandle.stalled`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import msgspec

from dynamo_core.frontend import metrics
from dynamo_core.frontend.errors import EngineError, ServiceUnavailableError
from dynamo_core.frontend.migration import DEFAULT_MIGRATION_LIMIT, Migration, finished_output
from dynamo_core.frontend.served_model import ServedModel
from dynamo_core.protocols.engine import EngineOutput, PreprocessedRequest, merge_outputs
from dynamo_core.routers.base import NoWorkerAvailableError, WorkerState
from dynamo_core.runtime.request_plane import ConnectionLostError, RemoteError
from dynamo_core.runtime.transports import TransportClients
from dynamo_core.protocols.names import GENERATE_ENDPOINT, WHOLE_REQUEST_ROLES

log = logging.getLogger(__name__)

_request_encoder = msgspec.msgpack.Encoder()
_output_decoder = msgspec.msgpack.Decoder(EngineOutput)


class _Declined(Exception):
    """The worker declined the request before starting it (`retry_elsewhere`)."""


class StreamBrokenError(EngineError):
    """The worker failed after output reached the consumer, which moves the request itself
    (`generate(..., migrate=False)`: a rendezvous decode phase continues split, disagg.py)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason  # as in dynamo_frontend_migrations_total: connection_lost, stalled, draining


class EngineClient:
    def __init__(
        self, client: TransportClients, migration_limit: int = DEFAULT_MIGRATION_LIMIT, stall_timeout_s: float = 0.0
    ):
        self._client = client
        self.migration_limit = migration_limit
        self.stall_timeout_s = stall_timeout_s  # 0: no bound

    def select_worker(self, model: ServedModel, request: PreprocessedRequest, workers: list[WorkerState]) -> str:
        """The worker among `workers` that the router of the request's phase picks."""
        phase = request.disagg.phase if request.disagg is not None else None
        try:
            return model.router_of(phase or WHOLE_REQUEST_ROLES[0]).select_worker(request, workers)
        except NoWorkerAvailableError as exc:
            raise ServiceUnavailableError(str(exc)) from exc

    async def generate(
        self, model: ServedModel, request: PreprocessedRequest, worker_id: str | None = None, migrate: bool = True
    ) -> AsyncIterator[EngineOutput]:
        """Stream the request's deltas from a routed worker, or from `worker_id` alone (picked
        by `select_worker`; a rendezvous names it, so it is never replaced). `migrate=False`:
        a failure after output raises `StreamBrokenError` instead of continuing elsewhere."""
        payload = _request_encoder.encode(request)
        failed: set[str] = set()
        phase = request.disagg.phase if request.disagg is not None else None
        roles = (phase,) if phase in ("prefill", "decode") else WHOLE_REQUEST_ROLES
        kind = f"{phase} worker" if phase else "worker"
        router = model.router_of(roles[0])
        migration = Migration(request, self.migration_limit)
        stall = self.stall_timeout_s
        pinned = worker_id
        while True:
            workers = model.worker_states(exclude=failed, roles=roles)
            if pinned is not None and failed:
                raise ServiceUnavailableError(f"{kind} {pinned} of model '{model.name}' failed this request")
            if not workers:
                if failed:
                    raise ServiceUnavailableError(
                        f"all {len(failed)} {kind}(s) of model '{model.name}' failed this request; try again"
                    )
                raise ServiceUnavailableError(f"no {kind} is serving model '{model.name}' right now")
            request = migration.request
            worker_id = pinned if pinned is not None else self.select_worker(model, request, workers)
            handle = model.workers.get(worker_id)
            if handle is None:
                if pinned is not None:
                    raise ServiceUnavailableError(f"{kind} {pinned} of model '{model.name}' is gone")
                raise EngineError(f"router picked unknown worker {worker_id!r}")
            handle.state.in_flight += 1
            output_tokens = 0
            received = False
            stream = self._client.call_batched(handle.record, GENERATE_ENDPOINT, payload)
            reason = "connection_lost"
            handed_off = False
            try:
                batches = aiter(stream)
                while True:
                    try:
                        if stall > 0:
                            # Only the wait for the worker is bounded, not the consumer's turn.
                            async with asyncio.timeout(stall):
                                batch = await anext(batches)
                        else:
                            batch = await anext(batches)
                    except StopAsyncIteration:
                        break
                    # Deltas that queued up while we were busy go out as one.
                    output = merge_outputs([_output_decoder.decode(item) for item in batch])
                    if output.retry_elsewhere:
                        if not received and not output.token_ids:
                            raise _Declined(output.error or "declined")
                        handed_off = True  # a draining worker gives the request back mid-stream
                        output.retry_elsewhere = False
                        if not output.token_ids:
                            break
                    if not received:
                        received = True
                        router.on_first_token(request.request_id, worker_id)
                    output_tokens += len(output.token_ids)
                    migration.on_output(output)
                    yield output
                    if handed_off:
                        break
                if not handed_off:
                    return
                reason, error = "draining", RuntimeError("the worker's drain timed out")
            except _Declined as exc:
                log.info("worker %s declined request %s (%s); routing again", worker_id, request.request_id, exc)
                metrics.REROUTES.labels(model.name, "declined").inc()
                failed.add(worker_id)
                continue
            except TimeoutError:
                reason = "stalled"
                handle.stalled = True
                log.warning("worker %s sent nothing on request %s for %.1f s: it is not routed to until it reports "
                            "again", worker_id, request.request_id, stall)
                error: Exception = TimeoutError(f"no output for {stall} s")
            except ConnectionLostError as exc:
                error = exc
            except RemoteError as exc:
                raise EngineError(f"worker {worker_id} failed: {exc}") from exc
            finally:
                await stream.aclose()
                handle.state.in_flight -= 1
                router.on_request_finished(request.request_id, worker_id, output_tokens)
            failed.add(worker_id)
            if not received:
                log.warning("worker %s failed before answering request %s (%s: %s); routing again",
                            worker_id, request.request_id, reason, error)
                metrics.REROUTES.labels(model.name, reason).inc()
                continue
            if not migrate:
                raise StreamBrokenError(f"{kind} {worker_id} failed mid-stream ({reason}: {error})", reason) from error
            continuation = migration.next_attempt(model.name, reason, f"worker {worker_id} failed mid-stream "
                                                  f"({reason}: {error})", error, "on another worker")
            if continuation is None:
                yield finished_output()
                return
            payload = _request_encoder.encode(continuation)
            # A continuation is served whole, by any agg or decode worker.
            roles, kind, router = WHOLE_REQUEST_ROLES, "worker", model.router_of("agg")
