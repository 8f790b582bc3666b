"""schemathesis driven by OpenAI's own published OpenAPI specification (`tests/data/`, trimmed
to chat, completions, models and responses): requests that OpenAI's schema allows get no 5xx
from `dynamo serve`, and every answer that OpenAI's schema describes conforms to it.

Requests name the served model (else they would all be 404s, which OpenAI's spec does not
describe). The server runs the `echo` engine with reasoning and tool-call parsers, so replies
are short whatever `max_tokens` says. The run is bounded: DYNAMO_SPEC_FUZZ_EXAMPLES per operation.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DynamoCluster

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

SPEC = Path(__file__).resolve().parents[1] / "data" / "openai-openapi.json"
MODEL = "spec-model"
# Stream events as OpenAI's spec describes them: each `data:` line is one of these, as JSON
# (schemathesis reads an event-stream schema as the schema of the whole SSE event instead).
# `/completions` documents no stream (its chunks are checked for 5xx only).
STREAM_EVENT = {"/chat/completions": "CreateChatCompletionStreamResponse", "/responses": "ResponseStreamEvent"}
MAX_EXAMPLES = int(os.environ.get("DYNAMO_SPEC_FUZZ_EXAMPLES", "10"))
pytestmark = pytest.mark.timeout(max(180, MAX_EXAMPLES * 10))


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory, mistral_tokenizer_dir) -> Iterator[tuple[object, str]]:
    cluster = DynamoCluster(tmp_path_factory.mktemp("openai-spec-fuzz"))
    try:
        process, base = cluster.serve(
            "--engine", "echo", "--model", str(mistral_tokenizer_dir), "--model-name", MODEL,
            "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3", workers=1,
        )
        yield process, base
    finally:
        cluster.stop()


# How a generated case is steered; Hypothesis favours the first, so "as generated" comes last.
_STEERS = ("one text input", "one text input, streamed", "as generated")
_TEXT_INPUT = {"messages": [{"role": "user", "content": "fuzz"}], "prompt": "fuzz", "input": "fuzz"}


def _steer(case, how: str):
    if "model" in (case.path_parameters or {}):
        case.path_parameters["model"] = MODEL
    if isinstance(case.body, dict):
        case.body["model"] = MODEL
        # A stream's events are not in OpenAI's schema: only JSON answers are checked against it.
        case.body["stream"] = how.endswith("streamed")
        if how.startswith("one text input"):  # past the template and the text-only check, to the engine
            case.body.update({k: v for k, v in _TEXT_INPUT.items() if k in case.body or k == _input_key(case)})
    return case


def _input_key(case) -> str:
    return {"/chat/completions": "messages", "/completions": "prompt", "/responses": "input"}.get(case.path, "")


def _json_schema(node):
    """OpenAI's document says 3.1 but marks nulls the 3.0 way (`nullable: true`), as
    schemathesis reads it: the same in plain JSON Schema."""
    if isinstance(node, list):
        return [_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if k != "nullable"}
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


def _check_stream_events(doc: dict, path: str, text: str) -> None:
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    resource = Resource.from_contents(_json_schema(doc), default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:openai", resource)
    validator = Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{STREAM_EVENT[path]}"}, registry=registry)
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert events, text[:500]
    for data in events:
        if data == "[DONE]":
            continue
        errors = [f"{e.message[:300]} at {list(e.absolute_path)}" for e in validator.iter_errors(json.loads(data))]
        assert not errors, f"{path} stream event {data[:300]} violates OpenAI's schema: {errors[:3]}"


def test_openai_spec_requests_get_no_5xx_and_answers_conform_to_openais_schema(echo_server):
    process, base = echo_server
    doc = json.loads(SPEC.read_text())
    assert doc["x-dynamo-source"]["commit"]  # where the file came from
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} == {
        "POST /chat/completions", "POST /completions", "GET /models", "GET /models/{model}", "POST /responses"}

    failures: list[str] = []
    statuses: dict[str, dict[int, int]] = {}
    started = time.monotonic()
    for operation in operations:
        strategy = st.tuples(operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                             st.sampled_from(_STEERS)).map(lambda pair: _steer(*pair))
        counts = statuses.setdefault(operation.label, {})

        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def fuzz(case) -> None:
            try:
                response = case.call(base_url=f"{base}/v1", timeout=15)
                counts[response.status_code] = counts.get(response.status_code, 0) + 1
                streamed = response.headers.get("content-type", [""])[0].startswith("text/event-stream")
                checks = [not_a_server_error] + ([] if streamed else [response_schema_conformance])
                case.validate_response(response, checks=checks)
                if streamed and case.path in STREAM_EVENT:
                    _check_stream_events(doc, case.path, response.text)
            except (Exception, BaseExceptionGroup) as exc:  # collect every failure; report them together
                failures.append(f"{case.operation.label}: {type(exc).__name__}: {str(exc)[:2000]}")

        fuzz()
    elapsed = time.monotonic() - started
    print(f"OpenAI-spec schemathesis: status counts {statuses} in {elapsed:.1f}s")
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures[:8])
    # Not all refusals: every operation answered some of OpenAI's valid requests with a 200.
    assert all(counts.get(200) for counts in statuses.values()), statuses
    assert process.proc.poll() is None
    output = process.output()
    assert "unhandled error in the frontend" not in output and "Traceback" not in output, output[-4000:]
