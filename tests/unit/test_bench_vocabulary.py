"""The load generator's prompt vocabularies (benchmarks/loadgen.py `Vocabulary`)."""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.loadgen import WORDS, Vocabulary, parse_args, random_words, use_vocabulary  # noqa: E402


def test_the_default_draws_the_common_words():
    assert set(Vocabulary().draw(2000, random.Random(1))) == set(WORDS)


def test_a_sized_vocabulary_draws_made_up_words_by_zipfs_law():
    vocabulary = Vocabulary(5000)
    assert len(set(vocabulary.words)) > 4000 and vocabulary.words == Vocabulary(5000).words  # the same every run
    counts = Counter(vocabulary.draw(100_000, random.Random(2)))
    first, tenth, hundredth = (counts[vocabulary.words[rank]] for rank in (0, 9, 99))
    assert first > 5 * tenth > 25 * hundredth > 0  # weights 1, 1/10, 1/100
    assert len(counts) > 2000  # the long tail shows up


def test_the_flag_switches_what_prompts_are_made_of():
    try:
        parse_args(["--vocabulary", "300"])
        assert not set(random_words(500, random.Random(3))) <= set(WORDS)
    finally:
        use_vocabulary(0)
    with pytest.raises(SystemExit):
        parse_args(["--vocabulary", "-1"])
