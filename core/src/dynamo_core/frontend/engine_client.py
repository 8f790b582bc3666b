"""Sends a preprocessed request to a worker picked by the model's router, streams the deltas.

A worker that cannot be reached, whose connection drops before it sent anything, or that says
it is shutting down (between leaving discovery and this frontend noticing), costs the request
nothing: it is routed again among the remaining workers. Once output has reached the
client, a failure ends the stream with an error (the tokens already sent cannot be unsent).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import msgspec

from dynamo_core.frontend import metrics
from dynamo_core.frontend.errors import EngineError, ServiceUnavailableError
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


class EngineClient:
    def __init__(self, client: TransportClients):
        self._client = client

    def select_worker(self, model: ServedModel, request: PreprocessedRequest, workers: list[WorkerState]) -> str:
        """The worker among `workers` that the router of the request's phase picks."""
        phase = request.disagg.phase if request.disagg is not None else None
        try:
            return model.router_of(phase or WHOLE_REQUEST_ROLES[0]).select_worker(request, workers)
        except NoWorkerAvailableError as exc:
            raise ServiceUnavailableError(str(exc)) from exc

    async def generate(
        self, model: ServedModel, request: PreprocessedRequest, worker_id: str | None = None
    ) -> AsyncIterator[EngineOutput]:
        """Stream the request's deltas from a routed worker, or from `worker_id` alone (picked
        by `select_worker`; a rendezvous names it, so it is never replaced)."""
        payload = _request_encoder.encode(request)
        failed: set[str] = set()
        phase = request.disagg.phase if request.disagg is not None else None
        roles = (phase,) if phase in ("prefill", "decode") else WHOLE_REQUEST_ROLES
        kind = f"{phase} worker" if phase else "worker"
        router = model.router_of(roles[0])
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
            try:
                async for batch in stream:
                    # Deltas that queued up while we were busy go out as one.
                    output = merge_outputs([_output_decoder.decode(item) for item in batch])
                    if not received and output.retry_elsewhere:
                        raise _Declined(output.error or "declined")
                    if not received:
                        received = True
                        router.on_first_token(request.request_id, worker_id)
                    output_tokens += len(output.token_ids)
                    yield output
                return
            except _Declined as exc:
                log.info("worker %s declined request %s (%s); routing again", worker_id, request.request_id, exc)
                metrics.REROUTES.labels(model.name, "declined").inc()
                failed.add(worker_id)
            except ConnectionLostError as exc:
                if received:
                    raise EngineError(f"worker {worker_id} failed mid-stream: {exc}") from exc
                log.warning("worker %s failed before answering request %s (%s); routing again", worker_id, request.request_id, exc)
                metrics.REROUTES.labels(model.name, "connection_lost").inc()
                failed.add(worker_id)
            except RemoteError as exc:
                raise EngineError(f"worker {worker_id} failed: {exc}") from exc
            finally:
                await stream.aclose()
                handle.state.in_flight -= 1
                router.on_request_finished(request.request_id, worker_id, output_tokens)
