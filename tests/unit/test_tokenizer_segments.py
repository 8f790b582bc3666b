"""Long texts encoded in pieces (tokenizer_segments.py): the ids of a whole encode, on the
test suite's Mistral tokenizer (cut after the space), a byte-level BPE (cut before it), and no
cutting at all where a token could span a cut."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from dynamo_core.tokenizer import BUILTIN_TOKENIZER, TokenizerBundle, load_tokenizer
from dynamo_core.tokenizer_segments import CutMode, SegmentedEncoder, cut_mode

WORDS = ["the", "a", "model", "gateway", "tokens", "Paris", "x", "1234", "é", "naïve", "日本語", "🙂", "can't",
         "well-known", "(aside)", "end.", "▁odd", "</s>", "<s>", "[INST]", "<|im_end|>"]
GAPS = [" "] * 12 + ["  ", "\n", "\n\n", "\t", " \n ", ", "]


def _text(rng: random.Random, words: int) -> str:
    parts = [rng.choice(WORDS)]
    for _ in range(words):
        parts += [rng.choice(GAPS), rng.choice(WORDS)]
    return "".join(parts)


def _trained(normalizer, pre_tokenizer, corpus: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if pre_tokenizer else [])
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rng = random.Random(7)
    return [_text(rng, 60) for _ in range(200)]


@pytest.fixture(scope="module")
def mistral(mistral_tokenizer_dir: Path) -> TokenizerBundle:
    return load_tokenizer(str(mistral_tokenizer_dir))


@pytest.fixture(scope="module")
def byte_level(corpus) -> Tokenizer:
    tokenizer = _trained(None, pre_tokenizers.ByteLevel(add_prefix_space=False), corpus)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _assert_same_ids_in_pieces(tokenizer: Tokenizer, segments: SegmentedEncoder, seed: int) -> None:
    rng = random.Random(seed)
    for words in (40, 900, 3000):
        text = _text(rng, words)
        if len(text) >= segments.min_chars:
            assert len(segments.pieces(text)) > 1  # really cut, not encoded whole
        for special in (False, True):
            assert segments.encode(text, special) == tokenizer.encode(text, add_special_tokens=special).ids


@pytest.mark.parametrize("seed", range(3))
def test_mistral_is_cut_after_the_space_with_the_ids_of_a_whole_encode(mistral, seed):
    segments = mistral.segments
    assert segments is not None and segments.mode is CutMode.DROP
    _assert_same_ids_in_pieces(mistral.tokenizer, segments, seed)


@pytest.mark.parametrize("seed", range(3))
def test_byte_level_bpe_is_cut_before_the_space(byte_level, seed):
    assert cut_mode(byte_level) is CutMode.KEEP
    _assert_same_ids_in_pieces(byte_level, SegmentedEncoder(byte_level, CutMode.KEEP, min_chars=512, piece_chars=256), seed)


def test_a_bundle_encodes_long_texts_in_pieces(mistral, monkeypatch):
    calls = []

    class Counting(SegmentedEncoder):
        def pieces(self, text):
            calls.append(text)
            return super().pieces(text)

    counting = Counting(mistral.tokenizer, CutMode.DROP)
    monkeypatch.setattr("dynamo_core.tokenizer._segments_of", lambda tokenizer: counting)
    text = _text(random.Random(1), 3000)
    assert mistral.encode(text) == mistral.tokenizer.encode(text, add_special_tokens=False).ids
    assert mistral.encode("short text") == mistral.tokenizer.encode("short text", add_special_tokens=False).ids
    assert calls == [text]  # the long text went through the pieces, the short one did not


def test_no_cuts_where_merges_span_spaces(corpus):
    # Spaces become "▁" with no pre-tokenizer, and the trainer learns merges over them
    # ("e▁t"): a cut could split such a token, so there is none.
    tokenizer = _trained(normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]), None, corpus)
    assert any("▁" in token.lstrip("▁") for token in tokenizer.get_vocab())
    assert cut_mode(tokenizer) is None


def test_no_cuts_where_an_added_token_holds_a_space(byte_level):
    tokenizer = Tokenizer.from_str(byte_level.to_str())
    tokenizer.add_special_tokens([AddedToken("end of turn", special=True, normalized=False)])
    assert cut_mode(tokenizer) is None


def test_no_cuts_with_bpe_dropout_or_truncation(byte_level):
    truncated = Tokenizer.from_str(byte_level.to_str())
    truncated.enable_truncation(64)
    assert cut_mode(truncated) is None
    dropout = Tokenizer.from_str(byte_level.to_str())
    dropout.model = models.BPE(vocab=byte_level.get_vocab(), merges=[], dropout=0.5)
    assert cut_mode(dropout) is None


def test_the_builtin_tokenizer_is_not_cut():
    # One token a byte and no merges: nothing to gain, and no splitting pre-tokenizer to rely on.
    assert load_tokenizer(BUILTIN_TOKENIZER).segments is None


def test_text_without_cuts_is_one_piece(mistral):
    segments = mistral.segments
    text = "x" * 10_000 + " " + "日本語" * 2000
    assert segments.pieces(text) == [text]
    assert segments.encode(text) == mistral.tokenizer.encode(text, add_special_tokens=False).ids
