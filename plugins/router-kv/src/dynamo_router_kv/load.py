"""How busy each worker is: what this router sent it, combined with what the worker reports.

Workers report `LoadMetrics` now and then; between reports a burst of requests would all see
the same stale numbers and land on one worker. So the router also counts, per worker, what it
sent itself and has not seen finish:

- prefill tokens in flight: the uncached prompt tokens of each request, from routing until
  its first token (or its end, if it fails before one);
- decode blocks: each request's prompt blocks plus one, from routing until it ends. The
  output length is unknown until the end (`max_tokens` is a bound, often the whole context,
  and would overstate load many times over), so the estimate is the footprint at admission
  plus the block the first output tokens go to; the worker's own reports correct for
  longer outputs. Requests are summed without discounting shared prefixes: the time of a
  decode step grows with every sequence's context, shared or not.

- decoding requests: each request from its first token until it ends (the batch whose steps
  it lengthens). A request still waiting for its first token is prefill work, counted above,
  not yet part of the decode batch.

Combination with reports: a report counts everything the worker had admitted when it was
sent, including other frontends' requests. The decode estimate is that report plus what this
router added or released since (its tracked blocks now minus at the report), and never less
than this router's own tracked blocks: a report can lag a burst, and the engine counts a
shared prefix once while the tracking counts it per request. Decoding requests combine the
same way with the report's running requests (its waiting ones have no first token).

Other frontends' routers (routing peers) share their requests' changes; they are counted the
same way, keyed by peer and request id, and dropped together when their peer goes silent, or
one by one when older than ``PEER_REQUEST_MAX_AGE_S`` (a lost ``finished`` message): peers'
requests wait in routing order in one queue, so expiry looks only at the oldest.

Each tracked request also keeps when it was routed and how much prefill work was ahead of it
and in it, so that its first token is a timing sample for `speed`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from dynamo_core.protocols.kv_events import LoadMetrics

PEER_REQUEST_MAX_AGE_S = 600.0


@dataclass(slots=True)
class RoutedRequest:
    worker_id: str
    prefill_tokens: int
    decode_blocks: int
    routed_at: float = 0.0  # the router's clock
    work_tokens: int = 0  # prefill tokens queued on the worker when routed, plus its own
    prefilling: bool = True
    first_token_at: float = 0.0
    batch_at_first_token: int = 0  # decoding requests on the worker then, itself included


@dataclass(slots=True)
class WorkerLoad:
    """One worker's load as this router sees it."""

    prefill_tokens: int = 0  # tracked: sent, first token not seen yet
    decode_blocks: int = 0  # tracked: sent, not finished
    decoding: int = 0  # tracked: first token seen, not finished
    reported: LoadMetrics | None = None
    decode_blocks_at_report: int = 0  # `decode_blocks` when `reported` arrived
    decoding_at_report: int = 0  # `decoding` when `reported` arrived

    @property
    def active_decode_blocks(self) -> int:
        if self.reported is None:
            return self.decode_blocks
        since_report = self.decode_blocks - self.decode_blocks_at_report
        return max(self.decode_blocks, self.reported.active_kv_blocks + since_report)

    @property
    def running_requests(self) -> int:
        """The decode batch: requests past their first token and not finished."""
        if self.reported is None:
            return self.decoding
        since_report = self.decoding - self.decoding_at_report
        return max(self.decoding, self.reported.running_requests + since_report)


class LoadTracker:
    """Per-worker load from routed requests and worker reports."""

    def __init__(self) -> None:
        self._workers: dict[str, WorkerLoad] = {}
        self._requests: dict[str, RoutedRequest] = {}
        self._peer_requests: dict[str, set[str]] = {}  # peer frontend id -> its tracking keys
        # (routed_at, frontend id, key) of peers' requests in routing order (the clock is
        # monotonic); an entry whose key has finished or was routed again since is stale.
        self._peer_expiry: deque[tuple[float, str, str]] = deque()

    def add_worker(self, worker_id: str) -> None:
        self._workers.setdefault(worker_id, WorkerLoad())

    def remove_worker(self, worker_id: str) -> None:
        """Forget the worker; its requests still in flight are released as a no-op later."""
        self._workers.pop(worker_id, None)

    def load(self, worker_id: str) -> WorkerLoad:
        """The worker's load; an idle one for a worker not tracked."""
        return self._workers.get(worker_id) or WorkerLoad()

    @property
    def worker_count(self) -> int:
        return len(self._workers)

    def routed(self, request_id: str, worker_id: str, prefill_tokens: int, decode_blocks: int, *,
               now: float) -> None:
        """``request_id`` was sent to ``worker_id`` at ``now``; count it until it finishes.

        ``now`` is keyword-only: it sits beside three other numbers, and a time passed as a
        block count would go unnoticed. A request id routed again (a retry after a failure the
        frontend has not reported yet) replaces its earlier entry, so nothing is counted twice.
        """
        self.finished(request_id)
        load = self._workers.setdefault(worker_id, WorkerLoad())
        work = load.prefill_tokens + prefill_tokens
        self._requests[request_id] = RoutedRequest(worker_id, prefill_tokens, decode_blocks, now, work)
        load.prefill_tokens += prefill_tokens
        load.decode_blocks += decode_blocks

    def first_token(self, request_id: str, *, now: float) -> RoutedRequest | None:
        """The request's prefill is done: its prompt tokens no longer wait to be computed, and
        it joins the decode batch. Returns the request the first time (a timing sample), None
        after or if unknown."""
        request = self._requests.get(request_id)
        if request is None or not request.prefilling:
            return None
        request.prefilling = False
        request.first_token_at = now
        load = self._workers.get(request.worker_id)
        if load is not None:
            load.prefill_tokens -= request.prefill_tokens
            load.decoding += 1
            request.batch_at_first_token = load.running_requests
        return request

    def finished(self, request_id: str) -> RoutedRequest | None:
        """The request ended (finished, failed or cancelled): release what it counted.
        Returns the request, or None if it was not tracked."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return None
        load = self._workers.get(request.worker_id)
        if load is None:
            return request
        if request.prefilling:
            load.prefill_tokens -= request.prefill_tokens
        else:
            load.decoding -= 1
        load.decode_blocks -= request.decode_blocks
        return request

    @staticmethod
    def peer_key(frontend_id: str, request_id: str) -> str:
        return f"peer:{frontend_id}/{request_id}"

    def peer_routed(self, frontend_id: str, request_id: str, worker_id: str, prefill_tokens: int,
                    decode_blocks: int, *, now: float) -> None:
        key = self.peer_key(frontend_id, request_id)
        self.routed(key, worker_id, prefill_tokens, decode_blocks, now=now)
        self._peer_requests.setdefault(frontend_id, set()).add(key)
        self._peer_expiry.append((now, frontend_id, key))

    def peer_finished(self, frontend_id: str, request_id: str) -> None:
        key = self.peer_key(frontend_id, request_id)
        self.finished(key)
        keys = self._peer_requests.get(frontend_id)
        if keys is not None:
            keys.discard(key)

    def peer_gone(self, frontend_id: str) -> None:
        """Release everything the peer had in flight (its queue entries become stale)."""
        for key in self._peer_requests.pop(frontend_id, set()):
            self.finished(key)

    def expire_peer_requests(self, now: float) -> None:
        """Release peers' requests routed more than ``PEER_REQUEST_MAX_AGE_S`` ago. Only the
        head of the queue is visited: expired entries, and stale ones (finished or routed
        again) that reached the head."""
        queue = self._peer_expiry
        while queue:
            routed_at, frontend_id, key = queue[0]
            request = self._requests.get(key)
            live = request is not None and request.routed_at == routed_at
            if live and now - routed_at <= PEER_REQUEST_MAX_AGE_S:
                break
            queue.popleft()
            if live:
                keys = self._peer_requests.get(frontend_id)
                if keys is not None:
                    keys.discard(key)
                self.finished(key)

    @property
    def peer_expiry_queue_length(self) -> int:
        return len(self._peer_expiry)

    @property
    def peer_requests_in_flight(self) -> int:
        return sum(len(keys) for keys in self._peer_requests.values())

    def reported(self, metrics: LoadMetrics) -> None:
        """The worker's own report; ignored for workers not tracked (a late one after removal)."""
        load = self._workers.get(metrics.worker_id)
        if load is None:
            return
        load.reported = metrics
        load.decode_blocks_at_report = load.decode_blocks
        load.decoding_at_report = load.decoding

    @property
    def requests_in_flight(self) -> int:
        return len(self._requests)
