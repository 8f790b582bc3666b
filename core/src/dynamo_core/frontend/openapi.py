"""The frontend's OpenAPI 3.1 document, built at startup from its route table and msgspec structs.

Handlers decode and encode bodies themselves (so every error is OpenAI-shaped), which leaves
Litestar's generator nothing to describe. Instead each route handler carries its body types in
``opt=api(...)``; `build_openapi` walks the app's routes and turns those types into JSON Schema
with `msgspec.json.schema_components`, so the document cannot drift from the code: a changed
struct changes the document, and a new route appears in it even without `api(...)` (then with
no body schemas, which tests/integration/test_openapi_fuzz.py rejects for POSTs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar
from litestar.routes import HTTPRoute

from dynamo_core.protocols.openai import ErrorResponse

_REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")

_ERROR_TEXT = {
    400: "Malformed request; `error.param` names the offending parameter",
    404: "Unknown model",
    500: "The worker failed the request",
    503: "No worker serves any model",
}
_SKIPPED_METHODS = {"OPTIONS", "HEAD"}


@dataclass(frozen=True)
class ApiSpec:
    """What one route handler reads and writes, for the OpenAPI document."""

    request: Any = None  # a msgspec-describable type, a tuple of them (any of), or None
    response: Any = None  # the 200 body type; None with `media_type` for non-JSON bodies
    stream: Any = None  # the SSE event type when the request asks for `stream: true`
    errors: tuple[int, ...] = ()  # statuses answered with an OpenAI `ErrorResponse`
    media_type: str = "application/json"
    extra: tuple[tuple[int, Any], ...] = ()  # (status, body type) of other documented answers


def api(**kwargs: Any) -> dict[str, ApiSpec]:
    """`opt=` for a route decorator: ``@post(..., opt=api(request=X, response=Y))``."""
    return {"openapi": ApiSpec(**kwargs)}


def openapi_path(litestar_path: str) -> str:
    """``/v1/models/{model_id:path}`` -> ``/v1/models/{model_id}``."""
    return _PARAM.sub(r"{\1}", litestar_path)


def documented_operations(app: Litestar) -> list[tuple[str, str, Any]]:
    """(OpenAPI path, lower-case method, handler) for every route the app serves."""
    out = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods - _SKIPPED_METHODS):
                out.append((openapi_path(route.path), method.lower(), handler))
    return out


def _sse_event(chunk: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event (OpenAPI 3.1 describes a stream by its events): `data` holds a chunk
    as JSON, an `ErrorResponse` if the stream fails after it started, or the final `[DONE]`."""
    payload = {"anyOf": [chunk, {"$ref": _REF.format(name="ErrorResponse")}]}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
                ]
            }
        },
    }


def _alternatives(t: Any) -> tuple[Any, ...]:
    return t if isinstance(t, tuple) else (t,)


def build_openapi(app: Litestar, title: str, version: str) -> dict[str, Any]:
    operations = documented_operations(app)
    specs = [handler.opt.get("openapi") or ApiSpec() for _, _, handler in operations]

    # Every type any operation names, in one components pass (shared structs appear once).
    types: list[Any] = [ErrorResponse]
    for spec in specs:
        types += [t for t in (*_alternatives(spec.request), spec.response, spec.stream) if t is not None]
        types += [t for _, t in spec.extra]
    unique = list(dict.fromkeys(types))
    refs, components = msgspec.json.schema_components(unique, ref_template=_REF)
    schema_of = dict(zip(unique, refs))

    def json_content(t: Any) -> dict[str, Any]:
        if isinstance(t, tuple):  # msgspec unions cannot hold untagged structs; say "any of" here
            return {"application/json": {"schema": {"anyOf": [schema_of[a] for a in t]}}}
        return {"application/json": {"schema": schema_of[t]}}

    paths: dict[str, dict[str, Any]] = {}
    for (path, method, handler), spec in zip(operations, specs):
        op: dict[str, Any] = {"operationId": handler.handler_name, "summary": handler.summary or handler.handler_name}
        if isinstance(handler.description, str) and handler.description:
            op["description"] = handler.description
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            for name in _PARAM.findall(path)
        ]
        if params:
            op["parameters"] = params
        if spec.request is not None:
            op["requestBody"] = {"required": True, "content": json_content(spec.request)}

        ok: dict[str, Any] = {"description": "OK"}
        if spec.response is not None:
            ok["content"] = json_content(spec.response)
        elif spec.media_type != "application/json":
            ok["content"] = {spec.media_type: {"schema": {"type": "string"}}}
        if spec.stream is not None:
            name = getattr(spec.stream, "__name__", None)
            if name is not None:
                ok["description"] = f"OK; with `stream: true`, server-sent events: `data: <{name}>` ... `data: [DONE]`"
            else:  # a union of typed events (the Responses API): no [DONE]
                ok["description"] = "OK; with `stream: true`, server-sent events `event: <type>` / `data: <event>`"
            ok.setdefault("content", {})["text/event-stream"] = {"schema": _sse_event(schema_of[spec.stream])}
        responses: dict[str, Any] = {"200": ok}
        for status, body in spec.extra:
            responses[str(status)] = {"description": "See the body", "content": json_content(body)}
        for status in spec.errors:
            responses[str(status)] = {"description": _ERROR_TEXT.get(status, "Error"), "content": json_content(ErrorResponse)}
        op["responses"] = responses
        paths.setdefault(path, {})[method] = op

    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components},
    }
