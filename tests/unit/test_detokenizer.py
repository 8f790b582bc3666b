"""Incremental detokenization on real tokenizers: byte-level BPE and sentencepiece with byte fallback."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from dynamo_core.frontend.detokenizer import IncrementalDetokenizer
from dynamo_core.tokenizer import BUILTIN_TOKENIZER, TokenizerBundle, load_tokenizer

SAMPLES = [
    "Hello world, how are you today?",
    "Grüße, 世界! 😀👍🏽 mixed",
    "  two leading spaces and  double  gaps ",
    "lines\nand\n\nblank lines\n",
    "日本語のテキストと中文字符，还有한국어。",
    "🧑‍🚀👩‍👩‍👧‍👦🏳️‍🌈 zero-width joiners",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀𓁐 rare planes go through byte fallback",
    "ends with an emoji 🚀",
]


@pytest.fixture(scope="module")
def builtin() -> TokenizerBundle:
    return load_tokenizer(BUILTIN_TOKENIZER)


@pytest.fixture(scope="module")
def mistral(mistral_tokenizer_dir: Path) -> TokenizerBundle:
    return load_tokenizer(str(mistral_tokenizer_dir))


@pytest.fixture(params=["builtin", "mistral"])
def bundle(request, builtin, mistral) -> TokenizerBundle:
    return builtin if request.param == "builtin" else mistral


def stream(bundle: TokenizerBundle, ids: Sequence[int], chunks: Sequence[int] = (1,), **kwargs) -> list[str]:
    """Feed `ids` in chunks of the given sizes (cycled); the pieces returned, flush last."""
    detok = IncrementalDetokenizer(bundle, **kwargs)
    pieces, at, turn = [], 0, 0
    while at < len(ids):
        size = chunks[turn % len(chunks)]
        pieces.append(detok.add(ids[at : at + size]))
        at, turn = at + size, turn + 1
    pieces.append(detok.flush())
    return pieces


@pytest.mark.parametrize("text", SAMPLES)
def test_token_by_token_stream_reproduces_the_text_and_never_splits_a_character(bundle, text):
    pieces = stream(bundle, bundle.encode(text))
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


@pytest.mark.parametrize("chunks", [(2,), (3, 1), (5, 2, 7), (1000,)])
def test_uneven_chunks_reproduce_the_text(bundle, chunks):
    text = " ".join(SAMPLES)
    pieces = stream(bundle, bundle.encode(text), chunks)
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_characters_are_released_as_soon_as_their_last_byte_arrives(mistral):
    ids = mistral.encode("a𓀀b")  # the hieroglyph is not in the vocabulary: four byte pieces
    assert [mistral.id_to_token(t) for t in ids] == ["▁a", "<0xF0>", "<0x93>", "<0x80>", "<0x80>", "b"]
    assert stream(mistral, ids) == ["a", "", "", "", "𓀀", "b", ""]


def test_a_complete_character_is_not_held_behind_the_next_incomplete_one(mistral):
    ids = mistral.encode("𓀀𓁐")
    detok = IncrementalDetokenizer(mistral)
    assert detok.add(ids[:7]) == "𓀀"  # "▁", four bytes, then two of the next four
    assert detok.add(ids[7:]) == "𓁐"


def test_long_runs_of_byte_fallback_characters_stream_intact(mistral):
    text = "𓀀" * 40 + " then 😀😀😀 and 𝔘" * 5
    ids = mistral.encode(text)
    assert sum(mistral.id_to_token(t).startswith("<0x") for t in ids) > 150
    assert "".join(stream(mistral, ids)) == text


def test_sentencepiece_word_starts_keep_their_spaces(mistral):
    ids = mistral.encode("Hello big world")
    assert [mistral.id_to_token(t) for t in ids] == ["▁Hello", "▁big", "▁world"]
    assert stream(mistral, ids) == ["Hello", " big", " world", ""]


def test_prompt_tail_keeps_the_first_output_word_s_leading_space(mistral):
    prompt = mistral.encode("[INST] Say hi [/INST]", add_special_tokens=True)
    output = mistral.encode("Sure thing")  # "▁Sure", "▁thing": the model writes a space first
    assert "".join(stream(mistral, output, prompt_token_ids_tail=prompt)) == " Sure thing"
    assert "".join(stream(mistral, output)) == "Sure thing"  # what decode(output) gives


def test_prompt_tail_ending_mid_character_is_not_used_as_context(builtin):
    prompt = builtin.encode("ab世")[:-1]  # the prompt's last character is cut
    output = builtin.encode("xyz")
    assert "".join(stream(builtin, output, prompt_token_ids_tail=prompt)) == "xyz"


def test_prompt_tail_starting_mid_character_is_still_usable_context(builtin):
    prompt = builtin.encode("世界")[1:]  # cut through the first character
    assert "".join(stream(builtin, builtin.encode("ok"), prompt_token_ids_tail=prompt)) == "ok"


def test_special_tokens_are_skipped_unless_asked_for(builtin):
    im_end = builtin.tokenizer.token_to_id("<|im_end|>")
    ids = [*builtin.encode("done"), im_end, *builtin.encode(" after")]
    assert "".join(stream(builtin, ids)) == "done after"
    assert "".join(stream(builtin, ids, skip_special_tokens=False)) == "done<|im_end|> after"


def test_sentencepiece_space_after_skipped_special_tokens_is_kept(mistral):
    ids = [*mistral.encode("Hello"), 2, 2, 2, *mistral.encode("world")]
    assert "".join(stream(mistral, ids)) == mistral.decode(ids) == "Hello world"


def test_stream_cut_mid_character_flushes_a_replacement_character(builtin):
    detok = IncrementalDetokenizer(builtin)
    assert detok.add(builtin.encode("é世")[:-1]) == "é"
    assert detok.flush() == "\ufffd"


def test_invalid_bytes_from_the_model_do_not_stall_the_stream(builtin):
    ids = [0x80, *b"ok", 0xFF, 0xFE, *b"!"]  # a stray continuation byte, never-valid bytes
    pieces = stream(builtin, ids)
    assert pieces == ["", "\ufffdo", "k", "", "", "\ufffd\ufffd!", ""]
    assert "".join(pieces) == builtin.decode(ids)


def test_an_endless_run_of_invalid_bytes_is_released_before_the_end(builtin):
    detok = IncrementalDetokenizer(builtin)
    released = "".join(detok.add([0xF0]) for _ in range(100))  # each lead byte breaks the last
    assert released == "\ufffd" * 99  # the last may still be a character's start
    assert detok.add(list("😀".encode())[1:]) == "😀"
    assert detok.flush() == ""


def test_random_byte_streams_match_a_full_decode(builtin):
    rng = random.Random(7)
    alphabet = [*b"ab ", *"é世😀".encode(), 0x80, 0xC0, 0xFF]
    for _ in range(300):
        ids = [rng.choice(alphabet) for _ in range(rng.randint(1, 40))]
        chunks = [rng.randint(1, 4) for _ in range(5)]
        assert "".join(stream(builtin, ids, chunks)) == builtin.decode(ids), ids


class _RecordingTokenizer:
    """A tokenizer proxy that records how many ids each decode call gets."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.decoded_lengths: list[int] = []

    def decode(self, ids, skip_special_tokens=True):
        self.decoded_lengths.append(len(ids))
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_each_step_decodes_a_few_tokens_not_the_whole_output(mistral):
    recorder = _RecordingTokenizer(mistral.tokenizer)
    bundle = dataclasses.replace(mistral, tokenizer=recorder)
    text = " ".join(SAMPLES) * 20
    ids = mistral.encode(text)
    assert len(ids) > 3000
    assert "".join(stream(bundle, ids)) == text
    assert max(recorder.decoded_lengths) <= 8
    assert len(recorder.decoded_lengths) <= 2 * len(ids) + 1
