"""A worker's HTTP health endpoints, for probes of process supervisors (Kubernetes).

Workers speak only the request plane (TCP frames or NATS), which a kubelet cannot probe. This
tiny HTTP/1.0 responder answers two paths and nothing else, on asyncio's own server so that it
adds no dependency and no thread:

- `/live`: 200 while the event loop runs (a wedged loop stops answering: restart the pod);
- `/health`: 200 once the engine is loaded and the instance registered, 503 before that and
  while draining (the pod stops counting as ready).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import msgspec

_READ_TIMEOUT_S = 5.0


class HealthStatus(msgspec.Struct):
    status: str  # "ok" | "starting" | "draining"


_encoder = msgspec.json.Encoder()


class HealthServer:
    """Serves `/live` and `/health`; `status()` is asked on every `/health` request."""

    def __init__(self, host: str, port: int, status: Callable[[], str]):
        self.host, self.port, self._status = host, port, status
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT_S)
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if path == "/live":
                code, body = 200, HealthStatus(status="ok")
            elif path == "/health":
                state = self._status()
                code, body = (200 if state == "ok" else 503), HealthStatus(status=state)
            else:
                code, body = 404, None
            payload = _encoder.encode(body) if body is not None else b'{"error":"not found"}'
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[code]
            writer.write(
                f"HTTP/1.0 {code} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
            )
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
