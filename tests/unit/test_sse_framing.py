"""Pre-framed SSE events of text-only chat chunks are byte for byte what encoding the chunk gives."""

from __future__ import annotations

import pytest

from dynamo_core.frontend.completions import ContentEvents, _sse
from dynamo_core.protocols.openai import ChatChunkChoice, ChatCompletionChunk, Delta

TEXTS = ["Hello", " world", "", "quote \" backslash \\ newline \n tab \t", "é ü 漢字 🙂", "\x00\x1f", "</s>"]


@pytest.mark.parametrize("model", ["test-model", 'odd "model" name/é'])
@pytest.mark.parametrize("index", [0, 3])
def test_a_content_event_is_the_encoded_chunk(model, index):
    events = ContentEvents("chatcmpl-abc", 1_700_000_000, model)
    for text in TEXTS:
        expected = _sse(ChatCompletionChunk("chatcmpl-abc", 1_700_000_000, model,
                                            [ChatChunkChoice(index, Delta(content=text))]))
        assert events.event(index, text) == expected


def test_a_name_holding_the_mark_falls_back_to_encoding_each_chunk():
    model = "x" + ContentEvents._MARK  # no served model is named so; the framing must not break
    events = ContentEvents("chatcmpl-abc", 1, model)
    expected = _sse(ChatCompletionChunk("chatcmpl-abc", 1, model, [ChatChunkChoice(0, Delta(content="hi"))]))
    assert events.event(0, "hi") == expected
