"""Shared benchmark plumbing: an SSE streaming client, per-request records, summaries, tables."""

from __future__ import annotations

import asyncio
import json
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import urllib.request
from urllib.parse import urlsplit

import msgspec


@dataclass
class RequestRecord:
    start: float
    ttft: float | None = None
    end: float | None = None
    gaps: list[float] = field(default_factory=list)  # seconds per token between content chunks
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: dict | None = None


class _Chunk(msgspec.Struct):
    choices: list[dict] = []
    usage: _Usage | None = None
    error: dict | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


def _chunk_text(choice: dict) -> str:
    delta = choice.get("delta")
    if delta is not None:
        return delta.get("content") or ""
    return choice.get("text") or ""


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


class RawHttpConnection:
    """A minimal HTTP/1.1 keep-alive client for streaming POSTs.

    A general client (httpx) costs more CPU per SSE chunk than the gateway does to produce it,
    so at high concurrency the load generator, not the server, would be measured. This one
    parses only what a streaming JSON POST needs: the status line, Content-Length or chunked
    framing, and lines.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def post_lines(self, path: str, body: bytes):
        """Send a POST; yield (status, None) first, then each line of the response body."""
        reused = self._writer is not None and not self._writer.is_closing()
        if not reused:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self._writer.write(head + body)
        reader = self._reader
        try:
            status_line = await reader.readline()
        except ConnectionError:
            status_line = b""
        if not status_line and reused:
            # The server closed this idle keep-alive connection before reading the request
            # (uvicorn does after 5 s): nothing was processed, so send it again on a new one.
            await self._connect()
            self._writer.write(head + body)
            reader = self._reader
            status_line = await reader.readline()
        if not status_line:
            self._writer = None
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        chunked, length, keep_alive = False, None, True
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "content-length":
                length = int(value)
            elif name == "connection" and value == "close":
                keep_alive = False
        yield status, None
        if chunked:
            pending = b""
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                data = pending + await reader.readexactly(size)
                await reader.readexactly(2)
                *lines, pending = data.split(b"\n")
                for line in lines:
                    yield status, line
            if pending:
                yield status, pending
        else:
            data = await reader.readexactly(length or 0)
            for line in data.split(b"\n"):
                yield status, line
        if not keep_alive:
            self._writer.close()
            self._writer = None


def _record_chunk(record: RequestRecord, chunk: _Chunk, last: float | None) -> float | None:
    """Account one SSE chunk; return the time of the latest content chunk."""
    if chunk.error:
        record.error = chunk.error.get("message", "error")
        return last
    if chunk.usage is not None:
        record.output_tokens = chunk.usage.completion_tokens
        record.prompt_tokens = chunk.usage.prompt_tokens
        details = chunk.usage.prompt_tokens_details or {}
        record.cached_tokens = details.get("cached_tokens", 0) or 0
    if chunk.choices and _chunk_text(chunk.choices[0]):
        now = time.perf_counter()
        if record.ttft is None:
            record.ttft = now - record.start
        elif last is not None:
            record.gaps.append(now - last)
        return now
    return last


async def stream_request_raw(conn: RawHttpConnection, path: str, body: dict) -> RequestRecord:
    """`stream_request` over a `RawHttpConnection` (one request at a time per connection)."""
    record = RequestRecord(start=time.perf_counter())
    last = None
    try:
        lines = conn.post_lines(path, json.dumps(body).encode())
        status, _ = await lines.__anext__()
        if status != 200:
            body_text = b"".join([line async for _, line in lines])
            record.error = f"HTTP {status}: {body_text[:200]!r}"
            record.end = time.perf_counter()
            return record
        async for _, line in lines:
            if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                last = _record_chunk(record, _decode_chunk(line[6:]), last)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        conn._writer = None
    record.end = time.perf_counter()
    return record


def summarize(records: list[RequestRecord], wall_s: float) -> dict:
    ok = [r for r in records if r.error is None and r.end is not None]
    ttft = [r.ttft * 1000 for r in ok if r.ttft is not None]
    # Inter-token latency: gaps between content chunks, spread over the tokens they carried.
    itl = [g * 1000 for r in ok for g in r.gaps]
    e2e = [(r.end - r.start) * 1000 for r in ok]
    out_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "req_per_s": len(ok) / wall_s if wall_s else math.nan,
        "output_tok_per_s": out_tokens / wall_s if wall_s else math.nan,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "itl_p50_ms": percentile(itl, 50),
        "itl_p99_ms": percentile(itl, 99),
        "e2e_p50_ms": percentile(e2e, 50),
        "e2e_p99_ms": percentile(e2e, 99),
        "mean_prompt_tokens": prompt_tokens / len(ok) if ok else math.nan,
        "prefix_hit_rate": (sum(r.cached_tokens for r in ok) / prompt_tokens) if prompt_tokens else math.nan,
    }


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def scrape_cpu_seconds(base_url: str) -> float | None:
    """The frontend's own `process_cpu_seconds_total` from its /metrics."""
    try:
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(f"{base_url}/metrics", timeout=10).read().decode())
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("process_cpu_seconds_total "):
            return float(line.split()[1])
    return None


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, header, format spec)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "| " + " | ".join("---:" for _ in columns) + " |"
    body = []
    for row in rows:
        cells = []
        for key, _, spec in columns:
            value = row.get(key)
            cells.append("-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


def write_json(path: str | None, rows: list[dict]) -> None:
    if path:
        with open(path, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
