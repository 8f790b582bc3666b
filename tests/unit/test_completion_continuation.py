"""A text completion is decoded as its prompt's continuation: sentencepiece strips the leading
space of the first token it decodes, so a completion decoded alone loses the space before its
first word ("...is" + "Paris" instead of " Paris"), and with echo the text no longer matches
the logprobs' text offsets."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamo_core.frontend.postprocessor import ChoicePostprocessor
from dynamo_core.frontend.stages import UsageCounter
from dynamo_core.protocols.engine import EngineOutput, FinishReason
from dynamo_core.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def mistral(mistral_tokenizer_dir: Path):
    return load_tokenizer(str(mistral_tokenizer_dir))


def _text(post: ChoicePostprocessor, ids: list[int]) -> str:
    delta = post.process(EngineOutput(token_ids=ids, finish_reason=FinishReason.LENGTH, prompt_tokens=5))
    return delta.text


def test_a_completion_keeps_the_space_before_its_first_word(mistral):
    prompt = mistral.encode("The capital of France is")
    whole = mistral.encode("The capital of France is Paris sea")
    output = whole[len(prompt):]
    assert mistral.decode(output) == "Paris sea"  # decoded alone, the leading space is gone

    continued = ChoicePostprocessor(0, mistral, [], UsageCounter(), prompt[-8:])
    assert _text(continued, output) == " Paris sea"
    alone = ChoicePostprocessor(0, mistral, [], UsageCounter())
    assert _text(alone, output) == "Paris sea"  # what a chat reply, a new message, gets


def test_output_that_opens_with_bos_starts_a_new_text(mistral):
    prompt = mistral.encode("one two three", add_special_tokens=True)
    assert prompt[0] in mistral.special_token_ids  # BOS
    echoed = ChoicePostprocessor(0, mistral, [], UsageCounter(), prompt[-8:])
    assert _text(echoed, prompt) == "one two three"  # the echo engine's reply: the prompt again
