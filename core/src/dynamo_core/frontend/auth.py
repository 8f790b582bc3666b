"""API keys: every `/v1/*` route (and `/metrics` with `--protect-metrics`) needs
`Authorization: Bearer KEY`.

An ASGI wrapper around the whole app, so that it holds for every route, present or future,
before a body is read. A missing or wrong key is a 401 in OpenAI's shape
(`code: invalid_api_key`). The given key is compared with every configured key in constant
time (`hmac.compare_digest`), and no key is ever logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from dynamo_core.protocols.openai import ErrorBody, ErrorResponse

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

_MISSING = msgspec.json.encode(ErrorResponse(ErrorBody(
    "You didn't provide an API key. Send it as `Authorization: Bearer KEY`.", "invalid_request_error",
    code="invalid_api_key",
)))
_WRONG = msgspec.json.encode(ErrorResponse(ErrorBody(
    "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key",
)))


class ApiKeyGuard:
    """Wraps an ASGI app: protected paths answer 401 unless the request carries a known key."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], protect_metrics: bool = False):
        self.app = app
        self._keys = [k.encode() for k in keys]
        self._protected = ("/v1/", "/metrics") if protect_metrics else ("/v1/",)

    def _allowed(self, header: bytes | None) -> bool:
        if header is None or not header[:7].lower() == b"bearer ":
            return False
        given = header[7:].strip()
        match = False
        for key in self._keys:  # every key, so the time taken does not say which one matched
            match |= hmac.compare_digest(given, key)
        return match

    async def __call__(self, scope: Scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith(self._protected) or path == "/v1"):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if self._allowed(header):
            await self.app(scope, receive, send)
            return
        body = _MISSING if header is None else _WRONG
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b'Bearer realm="dynamo"')],
        })
        await send({"type": "http.response.body", "body": body})
