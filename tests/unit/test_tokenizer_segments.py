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
        if len(text) >= segments.pieces_min_chars:
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
    _assert_same_ids_in_pieces(byte_level, SegmentedEncoder(byte_level, CutMode.KEEP, piece_chars=128), seed)


def test_a_bundle_encodes_long_texts_in_pieces(mistral, monkeypatch):
    calls = []

    class Counting(SegmentedEncoder):
        def _by_words(self, text):
            calls.append(text)
            return super()._by_words(text)

    counting = Counting(mistral.tokenizer, CutMode.DROP)
    monkeypatch.setattr("dynamo_core.tokenizer._segments_of", lambda tokenizer: counting)
    text = _text(random.Random(1), 3000)
    assert mistral.encode(text) == mistral.tokenizer.encode(text, add_special_tokens=False).ids
    assert mistral.encode("short text") == mistral.tokenizer.encode("short text", add_special_tokens=False).ids
    assert calls == [text]  # the long text went through the words, the short one did not


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


def _zipf_text(rng: random.Random, vocabulary: list[str], words: int) -> str:
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    gaps = rng.choices(GAPS, k=words)
    return "".join(g + w for g, w in zip(gaps, rng.choices(vocabulary, weights, k=words)))


@pytest.fixture(scope="module")
def vocabulary() -> list[str]:
    rng = random.Random(11)
    letters = "abcdefghijklmnopqrstuvwxyzé0123456789"
    return [*WORDS, *("".join(rng.choice(letters) for _ in range(rng.randint(1, 12))) for _ in range(3000))]


def test_kept_words_give_the_whole_encodes_ids_as_the_cache_fills_and_is_dropped(mistral, vocabulary):
    # A small cache: it is dropped and refilled many times over these texts, and some texts
    # bring more new words than it holds.
    segments = SegmentedEncoder(mistral.tokenizer, CutMode.DROP, max_words=300)
    rng = random.Random(5)
    for words in [20, 200, 2000, 60, 600, 3000, 10] * 6:
        text = _zipf_text(rng, vocabulary, words)
        for special in (False, True):
            assert segments.encode(text, special) == mistral.tokenizer.encode(text, add_special_tokens=special).ids
        assert len(segments._word_ids) <= 300


def test_a_text_of_known_words_is_looked_up_not_encoded(mistral, monkeypatch):
    segments = SegmentedEncoder(mistral.tokenizer, CutMode.DROP)
    rng = random.Random(2)
    text = " ".join(rng.choice(["the", "model", "Paris,", "1234", "naïve", "x\n\ny"]) for _ in range(400))
    expected = mistral.tokenizer.encode(text, add_special_tokens=False).ids
    assert segments.encode(text) == expected  # fills the cache
    batches = []
    real = segments._tokenizer

    class Recording:
        def encode(self, text, add_special_tokens):
            batches.append(text)
            return real.encode(text, add_special_tokens=add_special_tokens)

        def encode_batch(self, texts, add_special_tokens):
            batches.append(texts)
            return real.encode_batch(texts, add_special_tokens=add_special_tokens)

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(segments, "_tokenizer", Recording())
    assert segments.encode(text) == expected
    assert batches == []
    assert segments.encode(text + " zebraquux") == mistral.tokenizer.encode(text + " zebraquux", add_special_tokens=False).ids
    assert batches == ["zebraquux"]  # only the new word, in one encode (no thread pool)


def test_words_longer_than_the_limit_are_encoded_not_kept(mistral):
    segments = SegmentedEncoder(mistral.tokenizer, CutMode.DROP, max_word_chars=8)
    text = " ".join(["short", "x" * 50 + "y", "tiny"] * 100)
    assert segments.encode(text) == mistral.tokenizer.encode(text, add_special_tokens=False).ids
    assert set(segments._word_ids) == {"short", "tiny"}


def test_threads_encoding_together_get_the_whole_encodes_ids(mistral, vocabulary):
    from concurrent.futures import ThreadPoolExecutor

    segments = SegmentedEncoder(mistral.tokenizer, CutMode.DROP, max_words=500)
    rng = random.Random(9)
    texts = [_zipf_text(rng, vocabulary, rng.randint(50, 800)) for _ in range(64)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(segments.encode, texts))
    assert got == [mistral.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]


def test_new_words_are_told_apart_by_the_offsets_of_one_encode(mistral, vocabulary):
    segments = SegmentedEncoder(mistral.tokenizer, CutMode.DROP)
    assert segments._joins_split  # probed at construction
    rng = random.Random(13)
    words = list(dict.fromkeys(w for w in rng.choices(vocabulary, k=2000) if w[0].isascii() and w[0].isalnum()
                               and w[-1].isascii() and w[-1].isalnum()))
    split = segments._split_by_offsets(words)
    assert split == {w: mistral.tokenizer.encode(w, add_special_tokens=False).ids for w in words}


def test_without_usable_offsets_new_words_are_encoded_one_by_one(mistral, vocabulary, monkeypatch):
    monkeypatch.setattr(SegmentedEncoder, "_offsets_split_words", lambda self: False)
    segments = SegmentedEncoder(mistral.tokenizer, CutMode.DROP)
    assert not segments._joins_split
    text = _zipf_text(random.Random(4), vocabulary, 500)
    assert segments.encode(text) == mistral.tokenizer.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("content", ["assistant", "<tool>call", "end42"])
def test_no_cuts_beside_an_added_token_that_starts_or_ends_with_a_letter_or_digit(mistral, content):
    # The space before or after such a token is a cut point, but the token splits the text
    # into its own normalized segments there, so the space's "▁" is not where a piece has it.
    tokenizer = Tokenizer.from_str(mistral.tokenizer.to_str())
    tokenizer.add_special_tokens([AddedToken(content, special=True, normalized=False)])
    texts = [" ".join(["hello", content, "world"] * 400), " ".join([content, "world", "hello"] * 400),
             " ".join(["hello", "world", content] * 400), " ".join(["hello", f"{content}x", "world"] * 400)]
    # What cutting there would do: some text comes out wrong.
    assert any(SegmentedEncoder(tokenizer, CutMode.DROP).encode(t) != tokenizer.encode(t, add_special_tokens=False).ids
               for t in texts)
    assert cut_mode(tokenizer) is None
