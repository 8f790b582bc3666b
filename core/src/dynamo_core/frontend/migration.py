"""Request migration: a stream whose worker fails mid-request continues on another worker.

The engine client streams a request from one worker at a time. When that worker's stream
breaks after output reached the client (its connection is lost, it is killed or stops
answering), the request is sent again, to another worker of the same model, as a
continuation: the original prompt plus every token already streamed, `max_tokens` less those
tokens, the same request id, and `resumed_tokens` saying how many of the prompt's last tokens
are the request's own output (an engine that keeps a position, like the mocker's token cycle,
continues from there). The new worker's prompt and cache counts are dropped, so usage counts
the prompt once. Everything above the engine client (detokenizer, stop strings, reasoning and
tool-call parsers, the client's SSE stream) sees one unbroken token stream.

Not migrated: requests with structured output (the new engine would restart the constraint in
the middle of the output), the prefill phase of a disaggregated request (it has its own
fallback to aggregated serving), and requests that used up `--migration-limit` moves. The
decode phase of a rendezvous split (SGLang's) is not moved here but by `disagg.py`, with the
same `Migration.next_attempt`: its continuation is split again, since such decode workers serve
nothing whole.
"""

from __future__ import annotations

import logging

import msgspec

from dynamo_core.frontend import metrics
from dynamo_core.frontend.errors import EngineError
from dynamo_core.protocols.engine import EngineOutput, FinishReason, PreprocessedRequest

log = logging.getLogger(__name__)

DEFAULT_MIGRATION_LIMIT = 3


class Migration:
    """One request's output so far across the workers it was streamed from.

    Invariant: `streamed` holds exactly the token ids yielded to the consumer since the
    request started, in order; a continuation is the first request plus those tokens.
    """

    def __init__(self, request: PreprocessedRequest, limit: int):
        self.first = request
        self.request = request  # the attempt now being streamed
        self.limit = limit
        self.moves = 0
        self.streamed: list[int] = []

    def on_output(self, output: EngineOutput) -> None:
        """Record what goes to the consumer; on a continuation, drop its prompt counts."""
        if self.moves:
            output.prompt_tokens = None
            output.cached_tokens = None
            output.kv_pull = None
        self.streamed.extend(output.token_ids)

    def refusal(self) -> str | None:
        """Why this request cannot move to another worker; None when it can."""
        if self.limit <= 0:
            return "migration is off (--migration-limit 0)"
        if self.moves >= self.limit:
            return f"it already moved {self.moves} time(s) (--migration-limit {self.limit})"
        if self.first.guided is not None:
            return "structured output cannot resume mid-output"
        if self.first.disagg is not None and self.first.disagg.phase == "prefill":
            return "a prefill phase is served whole instead"
        return None

    def next_attempt(self, model: str, reason: str, failure: str, cause: BaseException, where: str) -> PreprocessedRequest | None:
        """After the stream broke mid-request (`failure` says how, `reason` as in
        dynamo_frontend_migrations_total): the continuation to stream next, logged and counted;
        None when every token was already streamed (the caller ends with `finished_output()`).
        Raises `EngineError` when the request cannot move. `where`: where it continues."""
        refusal = self.refusal()
        if refusal is not None:
            raise EngineError(f"{failure}; the request cannot move: {refusal}") from cause
        continuation = self.continuation()
        if continuation is None:  # it failed after its last token, before saying so
            return None
        log.warning("%s; request %s continues %s after %d token(s)", failure, self.first.request_id, where,
                    len(self.streamed))
        metrics.MIGRATIONS.labels(model, reason).inc()
        return continuation

    def continuation(self) -> PreprocessedRequest | None:
        """The request for the next worker (after `refusal()` said None); None when every
        token was already streamed (the worker failed before it sent the finish)."""
        first, done = self.first, len(self.streamed)
        if done >= first.stop.max_tokens:
            return None
        self.moves += 1
        self.request = msgspec.structs.replace(
            first,
            token_ids=[*first.token_ids, *self.streamed],
            stop=msgspec.structs.replace(
                first.stop, max_tokens=first.stop.max_tokens - done, min_tokens=max(0, first.stop.min_tokens - done)
            ),
            # A decode phase's KV left with its worker (and is released): the next worker
            # computes the prompt and the output so far itself.
            disagg=None,
            resumed_tokens=_output_in_prompt(first) + done,
        )
        return self.request


def _output_in_prompt(request: PreprocessedRequest) -> int:
    """How many of the request's last prompt tokens are already its output: a continuation's
    `resumed_tokens`, or a decode phase's tokens from the prefill worker."""
    count = request.resumed_tokens
    disagg = request.disagg
    if disagg is not None and disagg.phase == "decode" and disagg.kv is not None:
        count += max(0, len(request.token_ids) - disagg.kv.num_tokens)
    return count


def finished_output() -> EngineOutput:
    """The end of a request whose worker failed after its last token but before saying so."""
    return EngineOutput(finish_reason=FinishReason.LENGTH)
