"""The serving path of `/v1/chat/completions` and `/v1/completions`.

parse body -> find model -> preprocess into choices -> route + stream from workers ->
postprocess -> OpenAI JSON or SSE chunks. Errors before the first output become HTTP errors;
errors after it become an SSE error event followed by `[DONE]`.
"""

from __future__ import annotations

import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Response
from litestar.response import Stream

from dynamo_core.frontend import metrics
from dynamo_core.frontend.admission import Admission, Ticket
from dynamo_core.frontend.disagg import DisaggregatingClient
from dynamo_core.frontend.errors import (
    BadRequestError,
    ModelNotFoundError,
    OpenAIError,
    ServiceUnavailableError,
    from_validation_error,
)
from dynamo_core.frontend.chat_output import ChatOutput
from dynamo_core.frontend.logprobs import TokenTexts
from dynamo_core.frontend.model_registry import ModelRegistry
from dynamo_core.frontend.postprocessor import run_choices
from dynamo_core.frontend.preprocessor import prepare_chat, prepare_completion
from dynamo_core.frontend.prompt_pool import PromptPool
from dynamo_core.frontend.served_model import ServedModel
from dynamo_core.frontend.stages import ChoiceDelta, PreparedChoice, UsageCounter
from dynamo_core.frontend.structured import tool_plan
from dynamo_core.protocols.openai import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Delta,
    ErrorBody,
    ErrorResponse,
    FunctionCall,
    FunctionCallDelta,
    ResponseMessage,
    ToolCallChunk,
    ToolCallOut,
    Usage,
)

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()
_chat_decoder = msgspec.json.Decoder(ChatCompletionRequest)
_completion_decoder = msgspec.json.Decoder(CompletionRequest)
_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class ServingState:
    """What the HTTP handlers serve from: one per frontend app."""

    registry: ModelRegistry
    engine: DisaggregatingClient
    admission: Admission = field(default_factory=lambda: Admission(0))
    # Processes that template and tokenize long prompts (`--preprocess-workers`); None: a thread.
    prompt_pool: PromptPool | None = None


def decode_body(decoder: msgspec.json.Decoder, body: bytes):
    if not body.strip():  # msgspec would say "Input data was truncated"
        raise BadRequestError("the request body is empty; send a JSON object (Content-Type: application/json)")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        if "got `float`" not in str(exc):
            raise from_validation_error(exc) from exc
        # JSON Schema (and so OpenAI's spec) calls 1.0 an integer; msgspec does not. Only on
        # this error path: read the body generically, make whole floats ints (a float field
        # takes an int), and convert again.
        try:
            return msgspec.convert(_whole_floats_as_ints(msgspec.json.decode(body)), decoder.type)
        except msgspec.ValidationError as again:
            raise from_validation_error(again) from again
    except msgspec.DecodeError as exc:
        raise from_validation_error(exc) from exc


def _whole_floats_as_ints(value):
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: _whole_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_floats_as_ints(v) for v in value]
    return value


def find_model(state: ServingState, name: str) -> ServedModel:
    model = state.registry.models.get(name)
    if model is not None:
        return model
    if not state.registry.models:
        raise ServiceUnavailableError("No worker is serving any model right now; start a worker and retry.")
    raise ModelNotFoundError(name)


def _usage(counter: UsageCounter) -> Usage:
    details = {"cached_tokens": counter.cached_tokens}
    return Usage(
        counter.prompt_tokens, counter.completion_tokens, counter.prompt_tokens + counter.completion_tokens, details
    )


class _ModelMetrics:
    """One model's labelled metric children, looked up once: `labels()` hashes its label values
    and takes a lock, which a request would otherwise pay a dozen times."""

    def __init__(self, model: str):
        self.model = model
        self.ttft = metrics.TTFT.labels(model)
        self.itl = metrics.ITL.labels(model)
        self.inflight = metrics.INFLIGHT.labels(model)
        self.duration = metrics.DURATION.labels(model)
        self.input_tokens = metrics.INPUT_TOKENS.labels(model)
        self.cached_tokens = metrics.CACHED_TOKENS.labels(model)
        self.output_tokens = metrics.OUTPUT_TOKENS.labels(model)
        self._requests: dict[tuple[str, str], Any] = {}

    def requests(self, endpoint: str, status: str):
        child = self._requests.get((endpoint, status))
        if child is None:
            child = self._requests[(endpoint, status)] = metrics.REQUESTS.labels(self.model, endpoint, status)
        return child


_MODEL_METRICS: dict[str, _ModelMetrics] = {}


def _model_metrics(model: str) -> _ModelMetrics:
    found = _MODEL_METRICS.get(model)
    if found is None:
        found = _MODEL_METRICS[model] = _ModelMetrics(model)
    return found


class _Tracker:
    """Times one request for the metrics: TTFT, inter-token latency, duration."""

    def __init__(self, model: str, endpoint: str, ticket: Ticket):
        self.model, self.endpoint = model, endpoint
        self._ticket = ticket
        weakref.finalize(self, ticket.release)  # a stream never started still frees its slot
        self.start = self.last = time.perf_counter()
        self.first = True
        self._metrics = _model_metrics(model)
        self._metrics.inflight.inc()

    def on_delta(self, delta: ChoiceDelta) -> None:
        now = time.perf_counter()
        if self.first:
            self._metrics.ttft.observe(now - self.start)
            self.first = False
        elif delta.token_ids:
            per_token = (now - self.last) / len(delta.token_ids)
            observe = self._metrics.itl.observe
            for _ in delta.token_ids:
                observe(per_token)
        self.last = now

    def finish(self, status: str, usage: UsageCounter) -> None:
        self._ticket.release()
        m = self._metrics
        m.inflight.dec()
        m.duration.observe(time.perf_counter() - self.start)
        m.requests(self.endpoint, status).inc()
        m.input_tokens.inc(usage.prompt_tokens)
        m.cached_tokens.inc(usage.cached_tokens)
        m.output_tokens.inc(usage.completion_tokens)


async def _primed(deltas: AsyncIterator[ChoiceDelta]) -> tuple[ChoiceDelta | None, AsyncIterator[ChoiceDelta]]:
    """Wait for the first delta, so routing failures still become proper HTTP errors."""
    try:
        first = await deltas.__anext__()
    except StopAsyncIteration:
        return None, deltas
    except BaseException:
        await deltas.aclose()
        raise
    return first, deltas


def _sse(payload: msgspec.Struct) -> bytes:
    return b"data: " + _json.encode(payload) + b"\n\n"


def _sse_error(exc: Exception) -> bytes:
    if isinstance(exc, OpenAIError):
        body = exc.body()
    else:
        log.exception("stream failed")
        body = ErrorResponse(ErrorBody(f"internal error: {type(exc).__name__}", "internal_error"))
    return _sse(body)


async def start_generation(state: ServingState, model: ServedModel, choices: list[PreparedChoice], stop, endpoint: str):
    ticket = state.admission.admit(model.name)  # 429 beyond --max-inflight
    usage = UsageCounter()
    tracker = _Tracker(model.name, endpoint, ticket)
    deltas = run_choices(choices, model.tokenizer, stop, lambda c: state.engine.generate(model, c.request), usage,
                         continues_prompt=endpoint == "completions")
    try:
        first, deltas = await _primed(deltas)
    except Exception as exc:
        tracker.finish(type(exc).__name__, usage)
        raise
    return usage, tracker, first, deltas


def _event_stream(
    opening: list[msgspec.Struct],
    first: ChoiceDelta | None,
    deltas: AsyncIterator[ChoiceDelta],
    chunk_of: Callable[[ChoiceDelta], msgspec.Struct | bytes | list[msgspec.Struct] | None],
    usage: UsageCounter,
    tracker: _Tracker,
    usage_chunk: Callable[[Usage], msgspec.Struct] | None,
    choices: int,
) -> Stream:
    """The SSE response both generation endpoints stream: the `opening` chunks, one chunk per
    delta that says something, the usage chunk when asked for, an error event if the stream
    fails, then `[DONE]`. Whatever happens, the engine streams are closed and the request's
    metrics recorded.

    Events that are ready together leave in one write (each write costs a pass through the
    ASGI server, more than encoding the event): the opening chunks with the first delta's,
    which is already here, and the last choice's final chunk with the usage chunk and
    `[DONE]`, which follow it at once. A `chunk_of` that returns bytes has framed the event
    itself."""

    ready = [_sse(chunk) for chunk in opening]
    finished = 0

    def add(delta: ChoiceDelta) -> bool:
        """Frame `delta`'s events; whether they should leave now (not the last choice's end)."""
        nonlocal finished
        tracker.on_delta(delta)
        chunk = chunk_of(delta)
        if isinstance(chunk, bytes):
            ready.append(chunk)
        elif isinstance(chunk, list):
            ready.extend(_sse(one) for one in chunk)
        elif chunk is not None:
            ready.append(_sse(chunk))
        if delta.finish_reason is not None:
            finished += 1
        return bool(ready) and finished < choices

    def take() -> bytes:
        out = b"".join(ready) if len(ready) > 1 else ready[0]
        ready.clear()
        return out

    async def events() -> AsyncIterator[bytes]:
        status = "ok"
        try:
            # `first` by itself, not through chain_deltas: one generator less on every delta.
            if first is not None and add(first):
                yield take()
            async for delta in deltas:
                if add(delta):
                    yield take()
            if usage_chunk is not None:
                ready.append(_sse(usage_chunk(_usage(usage))))
        except Exception as exc:
            status = type(exc).__name__
            ready.append(_sse_error(exc))
        finally:
            await deltas.aclose()
            tracker.finish(status, usage)
        ready.append(_DONE)
        yield b"".join(ready)

    return Stream(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def _stop_list(stop) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


# ---------------------------------------------------------------------------------------------
# chat
# ---------------------------------------------------------------------------------------------


async def chat_completions(state: ServingState, body: bytes) -> Response:
    req: ChatCompletionRequest = decode_body(_chat_decoder, body)
    model = find_model(state, req.model)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    plan = tool_plan(req, model.card)
    choices = await prepare_chat(model, req, request_id, state.prompt_pool, tool_guided=plan.guided, body_chars=len(body))
    usage, tracker, first, deltas = await start_generation(state, model, choices, _stop_list(req.stop), "chat")
    created = int(time.time())
    token_texts = model.token_texts if req.logprobs else None
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        outputs = [ChatOutput(model.card.reasoning_parser, plan) for _ in range(req.n)]
        # OpenAI opens each choice with the assistant role.
        opening = [
            ChatCompletionChunk(request_id, created, model.name, [ChatChunkChoice(i, Delta(role="assistant", content=""))])
            for i in range(req.n)
        ]
        usage_chunk = (lambda u: ChatCompletionChunk(request_id, created, model.name, [], usage=u)) if include_usage else None
        chunks = _chat_chunks(request_id, created, model.name, token_texts, outputs)
        return _event_stream(opening, first, deltas, chunks, usage, tracker, usage_chunk, req.n)
    results = await collect_choices(first, deltas, tracker, usage)
    choices_out = []
    for i in range(req.n):
        result = results.get(i, CollectedChoice())
        logprobs = None
        if token_texts is not None:
            logprobs = ChatLogprobs([entry for d in result.logprob_deltas for entry in token_texts.chat(d)])
        output = ChatOutput(model.card.reasoning_parser, plan)
        message, calls = output.whole("".join(result.texts))
        # Only reasoning, or only calls: OpenAI's content is null.
        content = message.content if message.content or not (message.reasoning or calls) else None
        response_message = ResponseMessage(
            content=content,
            reasoning_content=message.reasoning or None,
            tool_calls=[ToolCallOut(c.id, FunctionCall(c.name, c.arguments)) for c in calls] or msgspec.UNSET,
        )
        finish = output.finish_reason(result.finish) if result.finish else None
        choices_out.append(ChatChoice(i, response_message, finish, logprobs))
    response = ChatCompletion(id=request_id, created=created, model=model.name, choices=choices_out, usage=_usage(usage))
    return Response(_json.encode(response), media_type="application/json")


@dataclass
class CollectedChoice:
    """One choice of a non-streaming response."""

    texts: list[str] = field(default_factory=list)
    finish: str | None = None
    logprob_deltas: list[ChoiceDelta] = field(default_factory=list)
    prompt_delta: ChoiceDelta | None = None  # the one that carries the prompt's logprobs


async def collect_choices(first, deltas, tracker: _Tracker, usage: UsageCounter) -> dict[int, CollectedChoice]:
    """Drain every choice's deltas (non-streaming responses), by choice index."""
    results: dict[int, CollectedChoice] = {}
    status = "ok"
    try:
        async for delta in chain_deltas(first, deltas):
            tracker.on_delta(delta)
            result = results.get(delta.index)
            if result is None:
                result = results[delta.index] = CollectedChoice()
            result.texts.append(delta.text)
            if delta.finish_reason:
                result.finish = delta.finish_reason
            if delta.logprobs:
                result.logprob_deltas.append(delta)
            if delta.prompt_logprobs is not None:
                result.prompt_delta = delta
    except Exception as exc:
        status = type(exc).__name__
        raise
    finally:
        tracker.finish(status, usage)
    return results


async def chain_deltas(first: ChoiceDelta | None, rest: AsyncIterator[ChoiceDelta]) -> AsyncIterator[ChoiceDelta]:
    if first is not None:
        yield first
    async for delta in rest:
        yield delta


def _chat_delta(output: ChatOutput, text: str, last: bool) -> Delta:
    """One streamed text delta through the choice's output parsers."""
    piece = output.feed(text)
    if last:
        rest = output.finish()
        piece.content += rest.content
        piece.reasoning += rest.reasoning
        piece.tool_calls += rest.tool_calls
    calls = [
        ToolCallChunk(c.index, c.id, "function" if c.id else None, FunctionCallDelta(c.name, c.arguments))
        for c in piece.tool_calls
    ]
    return Delta(content=piece.content or None, reasoning_content=piece.reasoning or None, tool_calls=calls or None)


class ContentEvents:
    """The SSE events of a chat stream's text-only chunks, framed around one encoding of such
    a chunk: between two of them only the text differs (and the choice index, one frame
    each), so the rest is encoded once a request instead of once a delta. The bytes are those
    `_sse(ChatCompletionChunk(...))` gives."""

    # Stands for the text in the encoded chunk; no request id or served model name holds it.
    _MARK = "\x00dynamo-content\x00"

    def __init__(self, request_id: str, created: int, model: str):
        self._chunk = (request_id, created, model)
        self._frames: dict[int, tuple[bytes, bytes] | None] = {}

    def event(self, index: int, text: str) -> bytes:
        frame = self._frames.get(index, False)
        if frame is False:
            frame = self._frames[index] = self._frame(index)
        if frame is None:  # the mark could not be told apart: encode the whole chunk
            return _sse(self._struct(index, text))
        return frame[0] + _json.encode(text) + frame[1]

    def _struct(self, index: int, text: str) -> ChatCompletionChunk:
        return ChatCompletionChunk(*self._chunk, [ChatChunkChoice(index, Delta(content=text))])

    def _frame(self, index: int) -> tuple[bytes, bytes] | None:
        encoded, mark = _sse(self._struct(index, self._MARK)), _json.encode(self._MARK)
        if encoded.count(mark) != 1:
            return None
        head, _, tail = encoded.partition(mark)
        return head, tail


def _chat_chunks(
    request_id: str, created: int, model: str, token_texts: TokenTexts | None, outputs: list[ChatOutput]
) -> Callable[[ChoiceDelta], ChatCompletionChunk | bytes | None]:
    """A choice delta as a chat chunk through its choice's output parsers (None: nothing to say
    yet; bytes: a text-only chunk, already an SSE event)."""

    content_events = ContentEvents(request_id, created, model)

    def chunk_of(delta: ChoiceDelta) -> ChatCompletionChunk | bytes | None:
        output = outputs[delta.index]
        finish = delta.finish_reason
        if finish is None and token_texts is None and output.passthrough:
            # The streaming common case, once a token: text only.
            return content_events.event(delta.index, delta.text) if delta.text else None
        logprobs = ChatLogprobs(token_texts.chat(delta)) if token_texts is not None and delta.logprobs else None
        if output.passthrough:
            message = Delta(content=delta.text or None)
        else:
            message = _chat_delta(output, delta.text, finish is not None)
            finish = output.finish_reason(finish) if finish is not None else None
        if finish is None and logprobs is None and message.content is None and message.reasoning_content is None \
                and message.tool_calls is None:
            return None
        return ChatCompletionChunk(request_id, created, model, [ChatChunkChoice(delta.index, message, finish, logprobs)])

    return chunk_of


# ---------------------------------------------------------------------------------------------
# completions
# ---------------------------------------------------------------------------------------------


async def completions(state: ServingState, body: bytes) -> Response:
    req: CompletionRequest = decode_body(_completion_decoder, body)
    model = find_model(state, req.model)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    choices = await prepare_completion(model, req, request_id, state.prompt_pool)
    echo_text = {c.index: _echo_prefix(model, c) for c in choices} if req.echo else {}
    usage, tracker, first, deltas = await start_generation(state, model, choices, _stop_list(req.stop), "completions")
    created = int(time.time())
    token_texts = model.token_texts if req.logprobs is not None else None
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        # Echo with logprobs: each choice's echoed prompt waits for its first delta, which
        # carries the prompt's logprobs, and goes out with them.
        echo_prompt_ids = {c.index: c.prompt_token_ids for c in choices} if req.echo and token_texts is not None else None
        opening = [] if echo_prompt_ids is not None else [
            Completion(request_id, created, model.name, [CompletionChoice(i, text)]) for i, text in echo_text.items()
        ]
        usage_chunk = (lambda u: Completion(request_id, created, model.name, [], usage=u)) if include_usage else None
        chunks = _completion_chunks(request_id, created, model.name, echo_text, token_texts, echo_prompt_ids)
        return _event_stream(opening, first, deltas, chunks, usage, tracker, usage_chunk, len(choices))
    results = await collect_choices(first, deltas, tracker, usage)
    choices_out = []
    for c in choices:
        result = results.get(c.index, CollectedChoice())
        prefix = echo_text.get(c.index, "")
        logprobs = None
        if token_texts is not None:
            logprobs, offset = CompletionLogprobs([], [], [], []), len(prefix)
            if result.prompt_delta is not None:
                logprobs = token_texts.prompt_completion(result.prompt_delta, c.prompt_token_ids, prefix)
            for d in result.logprob_deltas:
                _, offset = token_texts.completion(d, offset, into=logprobs)
        choices_out.append(CompletionChoice(c.index, prefix + "".join(result.texts), result.finish, logprobs))
    response = Completion(id=request_id, created=created, model=model.name, choices=choices_out, usage=_usage(usage))
    return Response(_json.encode(response), media_type="application/json")


def _echo_prefix(model: ServedModel, choice: PreparedChoice) -> str:
    if choice.prompt_text is not None:
        return choice.prompt_text
    return model.tokenizer.decode(choice.prompt_token_ids)


def _completion_chunks(
    request_id: str, created: int, model: str, echo_text: dict[int, str], token_texts: TokenTexts | None,
    echo_prompt_ids: dict[int, list[int]] | None = None,
) -> Callable[[ChoiceDelta], list[Completion]]:
    """A choice delta as completions chunks (none: nothing to say yet). With `echo_prompt_ids`
    a choice's first delta is preceded by its echoed prompt and the prompt's logprobs."""
    offsets = {index: len(text) for index, text in echo_text.items()}  # text offsets for logprobs

    def chunks_of(delta: ChoiceDelta) -> list[Completion]:
        out = []
        if echo_prompt_ids is not None and delta.index in echo_prompt_ids and token_texts is not None:
            text = echo_text[delta.index]
            prompt_logprobs = token_texts.prompt_completion(delta, echo_prompt_ids.pop(delta.index), text)
            out.append(Completion(request_id, created, model, [CompletionChoice(delta.index, text, None, prompt_logprobs)]))
        logprobs = None
        if token_texts is not None and delta.logprobs:
            logprobs, offsets[delta.index] = token_texts.completion(delta, offsets.get(delta.index, 0))
        if delta.text or delta.finish_reason is not None or logprobs is not None:
            out.append(Completion(request_id, created, model, [CompletionChoice(delta.index, delta.text, delta.finish_reason, logprobs)]))
        return out

    return chunks_of
