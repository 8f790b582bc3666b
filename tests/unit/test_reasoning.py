"""Reasoning parsers: the split of whole outputs, and streams that split the same way."""

from __future__ import annotations

import random

import pytest

from dynamo_core.frontend.reasoning import DeepSeekR1Parser, Qwen3Parser, get_reasoning_parser

CASES = [
    # (parser, output, reasoning, content)
    (DeepSeekR1Parser, "<think>Let me add.</think>\n\nIt is 4.", "Let me add.", "It is 4."),
    (DeepSeekR1Parser, "Let me add.</think>It is 4.", "Let me add.", "It is 4."),  # <think> was in the prompt
    (DeepSeekR1Parser, "Still thinking when cut", "Still thinking when cut", ""),
    (DeepSeekR1Parser, "a < b and </thin k> is not a tag</think>ok", "a < b and </thin k> is not a tag", "ok"),
    (Qwen3Parser, "<think>\nhmm\n</think>\n\nAnswer: yes", "\nhmm\n", "Answer: yes"),
    (Qwen3Parser, "Answer without thinking", "", "Answer without thinking"),
    (Qwen3Parser, "Uses <think> later</think> in text", "", "Uses <think> later</think> in text"),
    (Qwen3Parser, "<think>cut short", "cut short", ""),
    (Qwen3Parser, "<thi", "", "<thi"),
    (Qwen3Parser, "", "", ""),
]


@pytest.mark.parametrize(("parser", "output", "reasoning", "content"), CASES)
def test_whole_output_splits(parser, output, reasoning, content):
    split = parser().parse(output)
    assert (split.reasoning, split.content) == (reasoning, content)


@pytest.mark.parametrize(("parser", "output", "reasoning", "content"), CASES)
@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_streams_split_like_the_whole_output(parser, output, reasoning, content, seed):
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(output):
        step = 1 if seed is None else rng.randint(1, 6)
        pieces.append(output[i : i + step])
        i += step
    p = parser()
    deltas = [p.feed(piece) for piece in pieces] + [p.finish()]
    assert "".join(d.reasoning for d in deltas) == reasoning
    assert "".join(d.content for d in deltas) == content


def test_unknown_parser_names_the_choices():
    with pytest.raises(ValueError, match="deepseek_r1, qwen3"):
        get_reasoning_parser("nope")


def test_a_tag_split_over_tokens_never_reaches_the_client():
    p = DeepSeekR1Parser()
    deltas = [p.feed(t) for t in ["<th", "ink>", "2+2", "</", "thi", "nk>", "\n", "4"]] + [p.finish()]
    assert [(d.reasoning, d.content) for d in deltas if d.reasoning or d.content] == [("2+2", ""), ("", "4")]
