"""Shared benchmark plumbing: a streaming OpenAI client, per-request records, summaries, tables.

The load generator and the trace replay both send streaming requests through `StreamClient`,
which turns each SSE response into a `RequestRecord` (start, time to first token, inter-token
gaps, end, token counts, error). `summarize` turns records into the percentiles the tables
print; `markdown_table` and `append_json_lines` print and keep them.

Two transports carry the streams, both over one pool of HTTP/1.1 keep-alive connections:

- `raw` (default): a minimal HTTP/1.1 client on asyncio streams. Against a local SSE server
  sending 64 chunks a response it costs ~0.6 CPU-ms a request where httpx costs 2.7-3.4
  (h11 and anyio work per chunk); against the 2-worker mocker gateway at concurrency 128 on
  2 cores it used 0.26 CPU-s per 1000 requests and drove ~700 requests/s, while httpx used
  11 CPU-s per 1000 and drove 36 (httpx's pool slows down with many concurrent streams:
  encode/httpx#3215). With httpx the generator, not the server, would be measured.
- `httpx`: one `httpx.AsyncClient`, to cross-check the raw client against a standard one.

Control requests (prompt calibration, /metrics) always go through httpx.
"""

from __future__ import annotations

import argparse

import asyncio
import json
import math
import re
import resource
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# per-request records
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# transports
# ---------------------------------------------------------------------------------------------


class Transport(Protocol):
    async def post(self, path: str, body: bytes, on_data: Callable[[bytes], None]) -> int:
        """POST `body`; hand each piece of the response body to `on_data`; return the status."""
        ...

    async def aclose(self) -> None: ...


class _StaleConnection(ConnectionError):
    """The server closed an idle keep-alive connection before answering."""


class _RawConnection:
    """One HTTP/1.1 keep-alive connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host_header: str):
        self._reader, self._writer, self._host_header = reader, writer, host_header

    def close(self) -> None:
        self._writer.close()

    async def post(self, path: str, body: bytes, on_data: Callable[[bytes], None]) -> tuple[int, bool]:
        """Return (status, whether the connection can carry another request)."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host_header}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream, application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self._writer.write(head + body)
        try:
            status_line = await self._reader.readline()
        except ConnectionResetError as exc:
            raise _StaleConnection(str(exc)) from exc
        if not status_line:
            raise _StaleConnection("connection closed before the response")
        status = int(status_line.split(maxsplit=2)[1])
        chunked, length, keep_alive = False, None, True
        while (line := await self._reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "transfer-encoding":
                chunked = "chunked" in value
            elif name == "content-length":
                length = int(value)
            elif name == "connection":
                keep_alive = value != "close"
        if chunked:
            await self._read_chunked(on_data)
        elif length is not None:
            on_data(await self._reader.readexactly(length))
        else:
            # Neither framing: the body runs to the end of the connection.
            while data := await self._reader.read(65536):
                on_data(data)
            keep_alive = False
        return status, keep_alive

    async def _read_chunked(self, on_data: Callable[[bytes], None]) -> None:
        reader = self._reader
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise asyncio.IncompleteReadError(b"", None)
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            on_data((await reader.readexactly(size + 2))[:-2])


class RawTransport:
    """A pool of `_RawConnection`s to one server, shared by every request of a run."""

    def __init__(self, url: str, max_connections: int):
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"the raw client speaks plain http only, not {parts.scheme!r}; use --client httpx")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._host_header = f"{self._host}:{self._port}"
        self._idle: list[_RawConnection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def _open(self) -> _RawConnection:
        reader, writer = await asyncio.open_connection(self._host, self._port, limit=1 << 20)
        return _RawConnection(reader, writer, self._host_header)

    async def post(self, path: str, body: bytes, on_data: Callable[[bytes], None]) -> int:
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            try:
                if conn is not None:
                    try:
                        status, keep_alive = await conn.post(path, body, on_data)
                    except _StaleConnection:
                        # Nothing was answered on an idle connection the server had dropped
                        # (servers time idle ones out; uvicorn after 5 s): send it again on a new one.
                        conn.close()
                        conn = None
                if conn is None:
                    conn = await self._open()
                    status, keep_alive = await conn.post(path, body, on_data)
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            if keep_alive:
                self._idle.append(conn)
            else:
                conn.close()
            return status

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class HttpxTransport:
    """Streams through an `httpx.AsyncClient` (its own connection pool)."""

    def __init__(self, client: httpx.AsyncClient):
        self._client = client

    async def post(self, path: str, body: bytes, on_data: Callable[[bytes], None]) -> int:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        async with self._client.stream("POST", path, content=body, headers=headers) as response:
            async for data in response.aiter_bytes():
                on_data(data)
            return response.status_code

    async def aclose(self) -> None:
        return None  # the client belongs to StreamClient


# ---------------------------------------------------------------------------------------------
# the client the benchmarks use
# ---------------------------------------------------------------------------------------------

_encode_json = msgspec.json.encode
_STREAM_ERRORS = (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError, httpx.HTTPError)


class StreamClient:
    """Streaming requests to one OpenAI-compatible server through one connection pool."""

    def __init__(self, url: str, max_connections: int, transport: str = "raw", timeout_s: float = 600.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            base_url=self.url,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            timeout=httpx.Timeout(timeout_s, connect=10.0),
        )
        if transport == "raw":
            self._transport: Transport = RawTransport(self.url, max_connections)
        elif transport == "httpx":
            self._transport = HttpxTransport(self._http)
        else:
            raise ValueError(f"unknown transport {transport!r} (raw or httpx)")

    async def stream(self, path: str, body: dict[str, Any] | bytes) -> RequestRecord:
        """Send one streaming request; never raises for a failed request, records it instead."""
        payload = body if isinstance(body, bytes) else _encode_json(body)
        accountant = SseAccountant(time.perf_counter())
        try:
            async with asyncio.timeout(self.timeout_s):
                status = await self._transport.post(path, payload, accountant.feed)
        except _STREAM_ERRORS as exc:
            return accountant.fail(f"{type(exc).__name__}: {exc}".rstrip(": ")[:300])
        return accountant.finish(status)

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming request; raises on an HTTP error."""
        response = await self._http.post(path, content=_encode_json(body), headers={"Content-Type": "application/json"})
        if response.status_code != 200:
            raise RuntimeError(f"POST {path}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    async def metrics(self) -> str:
        """The server's Prometheus /metrics page ("" when it has none): parse it with
        `prometheus_value` and `gc_collections`."""
        try:
            response = await self._http.get("/metrics")
        except httpx.HTTPError:
            return ""
        return response.text if response.status_code == 200 else ""

    async def aclose(self) -> None:
        await self._transport.aclose()
        await self._http.aclose()


def gc_collections(text: str) -> list[float] | None:
    """Garbage collections per generation (0, 1, 2) in Prometheus text format, or None."""
    found = {
        int(g): float(n)
        for g, n in re.findall(r'^python_gc_collections_total\{generation="(\d)"\} (\S+)$', text, re.M)
    }
    return [found[g] for g in range(3)] if len(found) >= 3 else None


def prometheus_value(text: str, name: str) -> float | None:
    """The value of the unlabelled sample `name` in Prometheus text format, or None."""
    prefix = name + " "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[1])
    return None


# ---------------------------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (q in 0..100), interpolating linearly between ranks as numpy's
    default does; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def summarize(records: Sequence[RequestRecord], wall_s: float) -> dict[str, Any]:
    """Throughput over `wall_s` and latency percentiles (ms) of the successful requests.

    ITL percentiles pool every token gap of every request, so a request weighs by its length.
    """
    ok = [r for r in records if r.ok]
    ttft = [r.ttft * 1000 for r in ok if r.ttft is not None]
    itl = [gap * 1000 for r in ok for gap in r.itl]
    e2e = [r.e2e * 1000 for r in ok]
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    chunks = sum(r.content_chunks for r in ok)
    errors = Counter(r.error for r in records if not r.ok)
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "wall_s": wall_s,
        "req_per_s": len(ok) / wall_s if wall_s > 0 else math.nan,
        "output_tok_per_s": output_tokens / wall_s if wall_s > 0 else math.nan,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "itl_p50_ms": percentile(itl, 50),
        "itl_p99_ms": percentile(itl, 99),
        "e2e_p50_ms": percentile(e2e, 50),
        "e2e_p99_ms": percentile(e2e, 99),
        "mean_prompt_tokens": prompt_tokens / len(ok) if ok else math.nan,
        "mean_output_tokens": output_tokens / len(ok) if ok else math.nan,
        # Above 1, the server sends several tokens a chunk and ITL is per chunk, not per token.
        "tokens_per_chunk": output_tokens / chunks if chunks else math.nan,
        "prefix_hit_rate": sum(r.cached_tokens for r in ok) / prompt_tokens if prompt_tokens else math.nan,
        "requests_without_usage": sum(1 for r in ok if not r.usage_reported),
        "error_samples": [f"{count}x {message}" for message, count in errors.most_common(3)],
    }


def process_cpu_seconds() -> float:
    """User + system CPU seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table; columns are (key, header, format spec). Missing or NaN cells print
    as "-"; text columns (spec "s") align left, numbers right."""
    head = "| " + " | ".join(header for _, header, _ in columns) + " |"
    rule = "| " + " | ".join("---" if spec == "s" else "---:" for _, _, spec in columns) + " |"
    body = ["| " + " | ".join(_cell(row.get(key), spec) for key, _, spec in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def append_json_lines(path: str | None, rows: Sequence[dict[str, Any]]) -> None:
    """Append one JSON object a row (NaN written as null, which JSON has and NaN is not)."""
    if not path:
        return
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(_without_nan(row)) + "\n")


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return value


def print_errors(rows: Sequence[dict[str, Any]], name_key: str) -> None:
    """Print the commonest error messages of each row that had errors."""
    for row in rows:
        for sample in row.get("error_samples", []):
            print(f"  errors at {row.get(name_key)}: {sample}")


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (a cheaper event loop for the generator itself)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def add_run_options(p: argparse.ArgumentParser, *, timeout_s: float, label_help: str, json_help: str) -> None:
    """The options every load benchmark shares: transport, timeout, and where results go."""
    p.add_argument("--client", choices=["raw", "httpx"], default="raw", help="streaming transport (see common.py)")
    p.add_argument("--timeout", type=float, default=timeout_s, help="seconds before a request counts as failed")
    p.add_argument("--label", default="", help=label_help)
    p.add_argument("--json-out", default=None, help=json_help)


def report(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]], name_key: str,
           json_out: str | None) -> None:
    """Print the table and any errors, and keep the rows as JSON lines."""
    print(markdown_table(rows, columns))
    print_errors(rows, name_key)
    append_json_lines(json_out, rows)
