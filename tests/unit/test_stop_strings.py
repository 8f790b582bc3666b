"""Stop strings on streamed text."""

from __future__ import annotations

import random

import pytest

from dynamo_core.frontend.stop_strings import StopStringMatcher


def run(stop: list[str], pieces: list[str]) -> tuple[str, bool]:
    """Feed `pieces` until a stop string is found; what was emitted and whether one was."""
    matcher = StopStringMatcher(stop)
    out = []
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def expected(stop: list[str], text: str) -> tuple[str, bool]:
    """Reading one character at a time, the first stop string to complete (the longest of
    those completing together) is where generation stops."""
    for end in range(1, len(text) + 1):
        done = [s for s in stop if s and text.endswith(s, 0, end)]
        if done:
            return text[: end - max(map(len, done))], True
    return text, False


def test_stop_string_split_across_pieces_is_cut_and_never_leaked():
    matcher = StopStringMatcher(["<END>", "STOP"])
    assert matcher.feed("Hello <") == ("Hello ", False)
    assert matcher.feed("E") == ("", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("D> after") == ("", True)
    assert matcher.matched == "<END>" and matcher.stopped


@pytest.mark.parametrize("split", range(1, 17))
def test_every_split_point_of_a_stop_string_is_caught(split):
    text = "answer: 42<|eot|> trailing"
    assert run(["<|eot|>"], [text[:split], text[split:]]) == ("answer: 42", True)


def test_text_that_only_looks_like_a_stop_prefix_is_released():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("abc ST") == ("abc ", False)
    assert matcher.feed("ART") == ("START", False)
    assert matcher.feed("xS") == ("x", False)
    assert matcher.flush() == "S"


def test_a_held_prefix_that_is_completed_inside_the_next_piece_is_found():
    assert run(["abcd"], ["xab", "cabcd!"]) == ("xabc", True)


def test_the_stop_string_completed_first_wins_when_several_match():
    assert run(["world", "o w"], ["hello world"]) == ("hell", True)
    matcher = StopStringMatcher(["abcab", "ca"])
    assert matcher.feed("xabcab") == ("xab", True)  # "ca" completes before "abcab" does
    assert matcher.matched == "ca"
    matcher = StopStringMatcher(["c", "abc"])
    assert matcher.feed("xabc") == ("x", True)
    assert matcher.matched == "abc"  # the longest of those completing together


def test_the_result_does_not_depend_on_how_the_text_is_split():
    text = "xabcabz"
    whole = run(["abcab", "ca"], [text])
    assert whole == run(["abcab", "ca"], list(text)) == ("xab", True)


def test_stop_string_inside_a_single_piece_truncates_that_piece():
    assert run(["\n\n"], ["line one\n\nline two"]) == ("line one", True)


def test_multi_byte_characters_and_stop_strings_mix():
    assert run(["。"], ["日本", "語です", "。次"]) == ("日本語です", True)
    assert run(["🛑"], ["go 😀", "🛑 no"]) == ("go 😀", True)


def test_feed_after_a_match_returns_nothing():
    matcher = StopStringMatcher(["x"])
    assert matcher.feed("ax") == ("a", True)
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""


def test_without_stop_strings_text_passes_straight_through():
    matcher = StopStringMatcher(["", ""])
    assert matcher.feed("anything <") == ("anything <", False)
    assert matcher.flush() == ""


def test_random_texts_and_splits_match_a_plain_search():
    rng = random.Random(3)
    stops = [["ab"], ["aba", "bb"], ["abcab", "ca"], ["a", "bcd"]]
    for _ in range(2000):
        stop = rng.choice(stops)
        text = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 20)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert run(stop, pieces) == expected(stop, text), (stop, pieces)
