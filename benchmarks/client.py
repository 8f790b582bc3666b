"""The streaming OpenAI client the benchmarks send through, and its two transports.

The load generator and the trace replay both send streaming requests through `StreamClient`,
which turns each SSE response into a `RequestRecord` (start, time to first token, inter-token
gaps, end, token counts, error). `stats.summarize` turns records into the percentiles the tables
print; `report` prints and keeps them.

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

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import msgspec

from benchmarks.records import RequestRecord, SseAccountant


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
