"""One streamed request's record, and the SSE accountant that fills it from the response.

`SseAccountant` reads an OpenAI SSE stream chunk by chunk into a `RequestRecord`: start, time
to first token, inter-token gaps, end, token counts, cache hits, error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgspec


@dataclass(slots=True)
class RequestRecord:
    """What one streamed request did; times are `time.perf_counter()` seconds."""

    start: float
    status: int | None = None  # HTTP status; None when the connection failed before the stream ended
    ttft: float | None = None  # seconds from start to the first content chunk
    end: float | None = None
    itl: list[float] = field(default_factory=list)  # seconds per token after the first chunk
    output_tokens: int = 0
    content_chunks: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    usage_reported: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None

    @property
    def e2e(self) -> float:
        return (self.end or self.start) - self.start


# ---------------------------------------------------------------------------------------------
# SSE accounting
# ---------------------------------------------------------------------------------------------

# Only the fields the accounting reads: msgspec skips the rest of each chunk without building it.


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None  # chat completions
    text: str | None = None  # text completions


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: dict[str, Any] | str | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_ERROR_BODY_BYTES = 300


class SseAccountant:
    """Builds a `RequestRecord` from the bytes of one SSE response as they arrive.

    A content chunk's arrival time is when its line is parsed; the gap since the previous
    content chunk is divided by the tokens the chunk carried. That count is known when the
    server puts cumulative usage on every chunk (vLLM's `continuous_usage_stats`); otherwise
    a chunk counts as one token, which is what token-by-token streaming servers send.
    """

    def __init__(self, start: float):
        self.record = RequestRecord(start=start)
        self._pending = b""
        self._head = b""  # the first bytes, for the message of a non-200 response
        self._last_content: float | None = None
        self._streamed_tokens = 0
        self._done = False

    def feed(self, data: bytes) -> None:
        if len(self._head) < _ERROR_BODY_BYTES:
            self._head += data[: _ERROR_BODY_BYTES - len(self._head)]
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            self._on_line(line)

    def _on_line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return  # blank separators, comments, event names
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self._done = True
            return
        try:
            chunk = _decode_chunk(payload)
        except msgspec.DecodeError as exc:
            self.record.error = self.record.error or f"undecodable chunk: {exc}"
            return
        self._on_chunk(chunk)

    def _on_chunk(self, chunk: _Chunk) -> None:
        record = self.record
        if chunk.error is not None:
            message = chunk.error.get("message") if isinstance(chunk.error, dict) else chunk.error
            record.error = str(message or chunk.error)
            return
        tokens_in_chunk = 1
        if chunk.usage is not None:
            usage = chunk.usage
            tokens_in_chunk = max(usage.completion_tokens - record.output_tokens, 1)
            record.output_tokens = usage.completion_tokens
            record.prompt_tokens = usage.prompt_tokens
            details = usage.prompt_tokens_details
            record.cached_tokens = (details.cached_tokens or 0) if details is not None else 0
            record.usage_reported = True
        if not any(_has_content(choice) for choice in chunk.choices):
            return
        now = time.perf_counter()
        record.content_chunks += 1
        self._streamed_tokens += tokens_in_chunk
        if record.ttft is None:
            record.ttft = now - record.start
        elif self._last_content is not None:
            per_token = (now - self._last_content) / tokens_in_chunk
            record.itl.extend([per_token] * tokens_in_chunk)
        self._last_content = now

    def fail(self, message: str) -> RequestRecord:
        self.record.error = message
        self.record.end = time.perf_counter()
        return self.record

    def finish(self, status: int) -> RequestRecord:
        record = self.record
        record.end = time.perf_counter()
        record.status = status
        if self._pending:
            self._on_line(self._pending)
            self._pending = b""
        if status != 200:
            record.error = f"HTTP {status}: {self._head.decode(errors='replace')}"
        elif record.error is None and not self._done:
            record.error = "stream ended without [DONE]"
        if not record.usage_reported:
            # Without a usage chunk the best count left is one token a content chunk.
            record.output_tokens = self._streamed_tokens
        return record


def _has_content(choice: _Choice) -> bool:
    if choice.delta is not None:
        return bool(choice.delta.content)
    return bool(choice.text)
