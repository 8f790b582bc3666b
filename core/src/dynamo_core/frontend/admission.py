"""Admission: at most `--max-inflight` requests in flight per model; beyond, 429 at once.

Queueing without bound turns an overload into memory growth and timeouts for everyone; a
429 with `Retry-After` tells a client (the openai client retries it by itself) to come back.
A request holds its slot from routing until its response ends (`Ticket.release`, called by
the request's tracker, and at the latest when the tracker is collected: a stream that the
server never started still gives its slot back).
"""

from __future__ import annotations

import collections

from dynamo_core.frontend.errors import OpenAIError

RETRY_AFTER_S = 1
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024  # --max-body-bytes: long prompts fit, a runaway upload does not


class TooManyRequestsError(OpenAIError):
    status_code = 429
    error_type = "rate_limit_exceeded"

    def __init__(self, model: str, limit: int):
        super().__init__(
            f"model '{model}' already has {limit} requests in flight (--max-inflight); retry shortly",
            code="rate_limit_exceeded",
        )
        self.headers = {"Retry-After": str(RETRY_AFTER_S)}


class Ticket:
    """One admitted request's slot; `release` may be called more than once."""

    __slots__ = ("_admission", "_model")

    def __init__(self, admission: Admission | None, model: str):
        self._admission, self._model = admission, model

    def release(self) -> None:
        if self._admission is not None:
            self._admission._release(self._model)
            self._admission = None


class Admission:
    def __init__(self, max_inflight: int):
        self.max_inflight = max_inflight  # 0: no limit
        self.inflight: collections.Counter[str] = collections.Counter()

    def admit(self, model: str) -> Ticket:
        if not self.max_inflight:
            return Ticket(None, model)
        if self.inflight[model] >= self.max_inflight:
            raise TooManyRequestsError(model, self.max_inflight)
        self.inflight[model] += 1
        return Ticket(self, model)

    def _release(self, model: str) -> None:
        self.inflight[model] -= 1
