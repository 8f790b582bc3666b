"""Explicit nulls in request bodies mean the field's default (`nulls_as_defaults`), for every
request class that decodes with it, on every request (its field list is cached per class)."""

from __future__ import annotations

import msgspec
import pytest

from dynamo_core.protocols.openai import ChatCompletionRequest, CompletionRequest, _non_null_defaults
from dynamo_core.protocols.responses import ResponsesRequest

REQUIRED = {
    ChatCompletionRequest: {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    CompletionRequest: {"model": "m", "prompt": "hi"},
    ResponsesRequest: {"model": "m", "input": "hi"},
}


@pytest.mark.parametrize("cls", list(REQUIRED), ids=lambda c: c.__name__)
def test_explicit_nulls_become_defaults_on_every_request(cls: type[msgspec.Struct]) -> None:
    fields = [f for f in msgspec.structs.fields(cls) if f.default is not None and f.default is not msgspec.NODEFAULT]
    assert fields, "each request class has fields whose null means a non-null default"
    defaults = {f.name: f.default for f in fields}
    nulls = {f.encode_name: None for f in fields}
    body = msgspec.json.encode({**REQUIRED[cls], **nulls})
    for _ in range(3):  # the cached field list serves later requests the same way
        req = msgspec.json.decode(body, type=cls)
        assert {name: getattr(req, name) for name in defaults} == defaults
    # A value the client gave is kept, and a field whose default is None stays None.
    given = msgspec.json.decode(msgspec.json.encode({**REQUIRED[cls], "stream": True, "user": None}), type=cls)
    assert given.stream is True and given.user is None


def test_the_default_field_list_is_computed_once_per_class() -> None:
    _non_null_defaults.cache_clear()
    for _ in range(5):
        msgspec.json.decode(msgspec.json.encode(REQUIRED[ChatCompletionRequest]), type=ChatCompletionRequest)
    info = _non_null_defaults.cache_info()
    assert info.misses == 1 and info.hits == 4
