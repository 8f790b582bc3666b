"""Tokenizers, chat templates, incremental detokenization and stop strings, on real tokenizers."""

from __future__ import annotations

import pytest
import sentencepiece

from dynamo_core.frontend.chat_template import ChatTemplateError, render_chat_template
from dynamo_core.frontend.detokenizer import IncrementalDetokenizer
from dynamo_core.frontend.stop_strings import StopStringMatcher
from dynamo_core.tokenizer import BUILTIN_TOKENIZER, TokenizerLoadError, load_tokenizer
from tokenizer_fixture import mistral_sentencepiece_model

SAMPLES = [
    "Hello world",
    "Grüße, 世界! 😀👍🏽",
    "  two leading spaces",
    "lines\nand\n\nblank lines",
    "The quick brown fox, jumps; over 12345 lazy dogs!?",
    "Ünïcödé — ça va? 日本語のテキスト 🚀 end",
]


@pytest.fixture(scope="module")
def mistral(mistral_tokenizer_dir):
    return load_tokenizer(str(mistral_tokenizer_dir))


def test_converted_tokenizer_matches_sentencepiece_ids_and_round_trips(mistral):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(mistral_sentencepiece_model()))
    for text in SAMPLES:
        assert mistral.encode(text) == sp.encode(text), text
        assert mistral.decode(mistral.encode(text)) == text
    assert mistral.encode("hi", add_special_tokens=True)[0] == 1  # BOS
    assert mistral.eos_token_ids == [2] and mistral.vocab_size == 32000


def test_builtin_tokenizer_round_trips_any_utf8_text():
    bundle = load_tokenizer(BUILTIN_TOKENIZER)
    for text in SAMPLES + ["\x00\x7f", "🧑‍🚀 zero-width joiners"]:
        assert bundle.decode(bundle.encode(text)) == text
    assert len(bundle.eos_token_ids) == 2 and bundle.chat_template


def test_missing_tokenizer_directory_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerLoadError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(TokenizerLoadError, match="not a directory"):
        load_tokenizer(str(tmp_path / "missing"))


@pytest.mark.parametrize("source", ["builtin", "mistral"])
def test_token_by_token_detokenization_reproduces_the_text_and_never_breaks_a_character(source, mistral):
    bundle = mistral if source == "mistral" else load_tokenizer(BUILTIN_TOKENIZER)
    for text in SAMPLES:
        detok = IncrementalDetokenizer(bundle)
        pieces = [detok.add([token]) for token in bundle.encode(text)]
        pieces.append(detok.flush())
        assert "".join(pieces) == text
        assert not any("\ufffd" in p for p in pieces)


def test_stop_string_split_across_chunks_is_cut_and_never_leaked():
    matcher = StopStringMatcher(["<END>", "STOP"])
    emitted = []
    for chunk in ["Hello <", "E", "N", "D> after"]:
        text, hit = matcher.feed(chunk)
        emitted.append(text)
        if hit:
            break
    assert "".join(emitted) == "Hello " and hit


def test_text_that_only_looks_like_a_stop_prefix_is_released():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("abc ST") == ("abc ", False)
    assert matcher.feed("ART") == ("START", False)
    assert matcher.feed("xS") == ("x", False)
    assert matcher.flush() == "S"


def test_template_raise_exception_becomes_template_error(mistral):
    bad = [{"role": "assistant", "content": "first"}]
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render_chat_template(mistral, bad)


def test_template_features_generation_prompt_continue_and_kwargs():
    bundle = load_tokenizer(BUILTIN_TOKENIZER)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hel"}]
    continued = render_chat_template(bundle, messages, add_generation_prompt=False, continue_final_message=True)
    assert continued.endswith("<|im_start|>assistant\nHel")
    template = "{% if enable_thinking %}THINK {% endif %}{{ messages[0]['content'] }}{{ tools | tojson }}"
    out = render_chat_template(
        bundle, [{"role": "user", "content": "é"}], template=template,
        tools=[{"type": "function", "function": {"name": "f"}}], template_kwargs={"enable_thinking": True},
    )
    assert out == 'THINK é[{"type": "function", "function": {"name": "f"}}]'


def test_multi_part_text_is_flattened_and_images_are_refused():
    bundle = load_tokenizer(BUILTIN_TOKENIZER)
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert "a\nb" in render_chat_template(bundle, [{"role": "user", "content": parts}])
    with pytest.raises(ChatTemplateError, match="text only"):
        render_chat_template(bundle, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
