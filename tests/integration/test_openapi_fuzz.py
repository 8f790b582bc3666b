"""`GET /openapi.json` describes every route, and a bounded schemathesis run against a live
`dynamo serve` finds no 5xx, no non-OpenAI-shaped error, and leaves the server serving.

The fuzzed server runs the `echo` engine: a reply is at most the prompt's last message, so
`stream: true` cases (which are fuzzed too) end after a few tokens whatever `max_tokens` says,
and every request also carries a client timeout, so a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator

import pytest

from conftest import DynamoCluster, http_get

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

MODEL = "fuzz-model"
# Examples per (operation, generation mode): enough to reach every field, small enough that the
# whole module stays well under a minute on two cores. DYNAMO_FUZZ_EXAMPLES=500 for a deeper run.
MAX_EXAMPLES = int(os.environ.get("DYNAMO_FUZZ_EXAMPLES", "25"))
pytestmark = pytest.mark.timeout(max(180, MAX_EXAMPLES * 8))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory, mistral_tokenizer_dir) -> Iterator[tuple[object, str]]:
    cluster = DynamoCluster(tmp_path_factory.mktemp("openapi-fuzz"))
    try:
        process, base = cluster.serve(
            "--engine", "echo", "--model", str(mistral_tokenizer_dir), "--model-name", MODEL, workers=1
        )
        yield process, base
    finally:
        cluster.stop()


def _refs(node) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_openapi_document_lists_every_route_with_schemas(echo_server):
    from dynamo_core.frontend.app import FrontendConfig, create_app
    from dynamo_core.frontend.openapi import openapi_path

    _, base = echo_server
    status, doc = http_get(f"{base}/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")

    # A valid OpenAPI 3.1 document (checked against the specification's own schema).
    schemathesis.openapi.from_dict(doc).validate()

    # The app's own route table, built in-process (nothing starts until the app's startup hook).
    app = create_app(FrontendConfig(discovery="mem"))
    served = {
        (openapi_path(route.path), method.lower())
        for route in app.routes
        for method in route.methods - {"OPTIONS", "HEAD"}
    }
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert documented == served
    assert ("/openapi.json", "get") in documented

    components = doc["components"]["schemas"]
    assert all(ref.removeprefix("#/components/schemas/") in components for ref in _refs(doc))
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["summary"] and "200" in op["responses"], (method, path)
            if method == "post":
                assert op["requestBody"]["content"]["application/json"]["schema"], path
                assert op["responses"]["400"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"
                }
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    assert {"application/json", "text/event-stream"} <= set(chat["responses"]["200"]["content"])
    assert set(components["ChatCompletionRequest"]["required"]) == {"model", "messages"}
    model = doc["paths"]["/v1/models/{model_id}"]["get"]
    assert [p["name"] for p in model["parameters"]] == ["model_id"]

    # Litestar's own schema and docs pages are off: one /openapi.json, no stale second document.
    status, body = http_get(f"{base}/openapi")
    assert status == 404 and set(body["error"]) == {"message", "type", "param", "code"}


def _check_openai_error(case, response) -> None:
    if not 400 <= response.status_code < 500:
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str), body
    if response.status_code == 400 and isinstance(case.body, dict):
        # A JSON object was sent, so whatever is wrong is one of its parameters: name it.
        assert isinstance(error["param"], str) and error["param"], body


def _post_chat(base: str) -> dict:
    request = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "still here"}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


# Hypothesis favours the first choice, so "as generated" comes last.
_STEERS = ("served model", "served model, one user message", "served model, one user message, streamed", "as generated")


def _steer(case, how: str):
    if how == "as generated":
        return case
    if "model_id" in (case.path_parameters or {}):
        case.path_parameters["model_id"] = MODEL
    if isinstance(case.body, dict):
        case.body["model"] = MODEL
        if "one user message" in how and "messages" in case.body:
            case.body["messages"] = [{"role": "user", "content": "fuzz " + str(case.body.get("user") or "")}]
        if how.endswith("streamed"):
            case.body["stream"] = True
    return case


def test_schemathesis_fuzz_finds_no_5xx_and_only_openai_errors(echo_server):
    process, base = echo_server
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # Schemathesis leaves out the operation serving the schema document itself.
    documented = {f"{method.upper()} {path}" for path, item in schema.raw_schema["paths"].items() for method in item}
    assert {op.label for op in operations} == documented - {"GET /openapi.json"}

    failures: list[str] = []
    calls = streamed = 0
    started = time.monotonic()

    def run(operation, mode: GenerationMode) -> None:
        strategy = operation.as_strategy(generation_mode=mode)
        if mode is GenerationMode.POSITIVE:
            # Most valid requests name the served model (and some chats get one user message), so
            # they reach the preprocessor, the engine and the streaming path, not just "not found".
            strategy = st.tuples(strategy, st.sampled_from(_STEERS)).map(lambda pair: _steer(*pair))
        checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # failures are collected below, not shrunk
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def fuzz(case) -> None:
            nonlocal calls, streamed
            calls += 1
            try:
                response = case.call(base_url=base, timeout=15)
                if any(v.startswith("text/event-stream") for v in response.headers.get("content-type", [])):
                    streamed += 1
                case.validate_response(response, checks=checks)
                _check_openai_error(case, response)
            except (Exception, BaseExceptionGroup) as exc:  # collect every failure; report them together
                failures.append(f"{operation.label} [{mode.value}]: {type(exc).__name__}: {str(exc)[:2500]}")

        fuzz()

    for operation in operations:
        run(operation, GenerationMode.POSITIVE)
        if operation.body:  # a path parameter has no invalid form that can be sent in a URL
            run(operation, GenerationMode.NEGATIVE)

    elapsed = time.monotonic() - started
    print(f"schemathesis: {calls} calls ({streamed} streamed) over {len(operations)} operations in {elapsed:.1f}s")
    assert not failures, f"{len(failures)} failures in {calls} calls:\n\n" + "\n\n".join(failures[:10])
    assert streamed, "no fuzzed request reached the streaming path"

    # Still serving, and nothing reached the catch-all handlers or logged a traceback.
    assert process.proc.poll() is None
    reply = _post_chat(base)
    assert reply["choices"][0]["message"]["content"] == "still here"
    output = process.output()
    assert "unhandled error in the frontend" not in output and "Traceback" not in output, output[-4000:]
