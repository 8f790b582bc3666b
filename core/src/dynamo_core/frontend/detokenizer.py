"""Incremental detokenization: token ids in, text out, never half a character.

Decoding each token on its own goes wrong in two ways. A multi-byte UTF-8 character spread over
several tokens (byte-level BPE, sentencepiece byte fallback) decodes to U+FFFD until its last
byte arrives. And decoders treat the first token of what they decode specially: sentencepiece
strips the leading space of the text, so "▁world" alone decodes to "world", not " world".

So, like HF's TextStreamer and vLLM (their prefix_offset/read_offset), we decode a short window
of the newest tokens that starts a little before the new ones, and return what the window's
text has beyond the part already returned. The window's first token gets the same treatment
in every decode of the window, so the difference between two decodes is the true continuation.
Text ending in U+FFFD is held back until the next token completes the character. The window
only ever starts at a clean boundary (a token boundary where the text ends on a whole
character): when a new one is found, the window moves up to the one before it, which keeps at
least one token of context.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynamo_core.tokenizer import TokenizerBundle

_REPLACEMENT = "\ufffd"

# Prompt tokens decoded before the first output token, so that its leading space is kept.
PROMPT_CONTEXT_TOKENS = 6
# What a caller passes as the prompt's tail: room for a few skipped specials among them.
PROMPT_TAIL_TOKENS = 2 * PROMPT_CONTEXT_TOKENS

# A held U+FFFD that this many tokens in a row have not resolved is real (invalid bytes, or
# the model wrote U+FFFD itself): a UTF-8 character spans at most four tokens. All of the run
# but its last one, which may be a character still arriving, is then released.
_MAX_TOKENS_WITHOUT_PROGRESS = 8

# A window that grows this long while text is held (tokens that keep ending inside a character,
# or invalid bytes) restarts at the last few tokens, which hold any incomplete character.
_MAX_HELD_WINDOW_TOKENS = 32
_INCOMPLETE_CHARACTER_TOKENS = 4

# The ids before the window are dropped once this many have gathered.
_DROP_DECODED_IDS_AFTER = 4096


class IncrementalDetokenizer:
    """Turns one sequence's streamed token ids into text deltas.

    Contract: for output that is valid UTF-8, the concatenation of everything `add` and
    `flush` return equals `bundle.decode(output_ids, skip_special_tokens)`; with
    `prompt_token_ids_tail` (the prompt's last tokens) the output is decoded as the prompt's
    continuation, so its first word keeps the leading space that a decode of the output alone
    strips. No returned piece holds part of a character, except the U+FFFD that `flush` returns
    for a stream cut mid-character. Invalid bytes from the model come out as U+FFFD (a few
    tokens late) with the characters around them intact, where a full byte-fallback decode
    would blank the whole run of byte tokens. Each call decodes a few tokens, not the output.
    """

    def __init__(
        self,
        bundle: TokenizerBundle,
        prompt_token_ids_tail: Sequence[int] | None = None,
        skip_special_tokens: bool = True,
    ):
        self._tokenizer = bundle.tokenizer
        self._skip = skip_special_tokens
        # Skipped specials are dropped on arrival: decoding drops them anyway, and a window made
        # of them alone would decode to "" and lose the context it is there for.
        self._dropped = bundle.special_token_ids if skip_special_tokens else frozenset()
        self._ids: list[int] = []
        self._window_start = 0  # index into _ids of the window's first token
        self._emitted = 0  # characters of the window's text already returned
        self._last_clean = 0  # index into _ids of the latest token boundary that decodes cleanly
        self._without_progress = 0  # tokens added since text was last returned
        self._started = False  # whether any output token has arrived (a seeded context may go then)
        if prompt_token_ids_tail:
            self._seed_context(prompt_token_ids_tail)

    def _decode(self, start: int, end: int) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=self._skip)

    def _seed_context(self, prompt_tail: Sequence[int]) -> None:
        """Start the window inside the prompt's last few tokens, at a character boundary."""
        context = [t for t in prompt_tail if t not in self._dropped][-PROMPT_CONTEXT_TOKENS:]
        # A prompt ending mid-character is no usable context; one starting mid-character (a
        # byte-level tail cut through a character) becomes usable once the cut bytes are off.
        while context:
            text = self._tokenizer.decode(context, skip_special_tokens=self._skip)
            if text.endswith(_REPLACEMENT):
                return
            if not text.startswith(_REPLACEMENT):
                self._ids = list(context)
                self._emitted = len(text)
                self._last_clean = len(context)
                return
            context = context[1:]

    def add(self, token_ids: Sequence[int]) -> str:
        """Append `token_ids` (any number, possibly none) and return the text they complete,
        possibly ""."""
        if not self._started and token_ids:
            self._started = True
            if self._ids and token_ids[0] in self._dropped:
                # Output that opens with a skipped special (a BOS: the echo engine sends the
                # prompt back) starts a new text, not the prompt's continuation.
                self._ids, self._emitted, self._last_clean = [], 0, 0
        new = [t for t in token_ids if t not in self._dropped] if self._dropped else list(token_ids)
        if not new:
            return ""
        self._ids.extend(new)
        text = self._decode(self._window_start, len(self._ids))
        if text.endswith(_REPLACEMENT):
            return self._add_held(text, len(new))
        delta = text[self._emitted :]
        self._emitted = max(self._emitted, len(text))
        self._without_progress = 0
        self._advance_clean(len(self._ids), text)
        return delta

    def _add_held(self, text: str, added: int) -> str:
        """The window's text ends in U+FFFD, most likely a character whose last bytes are yet
        to come. Return what precedes it and is not yet returned: the text up to the last token
        boundary that ends cleanly, or up to the trailing run of U+FFFD, whichever is longer
        (byte fallback turns a whole run of byte tokens into U+FFFD while one character of it
        is incomplete; byte-level decoding marks only the incomplete character)."""
        released = text[: len(text.rstrip(_REPLACEMENT))]
        # An incomplete character starts within the last few tokens, so only the boundaries
        # among the newest tokens can be the last clean one.
        clean_at, clean_text = None, ""
        newest = len(self._ids)
        lowest = max(newest - _INCOMPLETE_CHARACTER_TOKENS, newest - added + 1, self._window_start + 1)
        for boundary in range(newest - 1, lowest - 1, -1):
            candidate = self._decode(self._window_start, boundary)
            if not candidate.endswith(_REPLACEMENT):
                clean_at, clean_text = boundary, candidate
                break
        if len(clean_text) > len(released):
            released = clean_text
        delta = released[self._emitted :]
        if delta:
            self._emitted = len(released)
            self._without_progress = 0
        else:
            self._without_progress += added
            if self._without_progress > _MAX_TOKENS_WITHOUT_PROGRESS and len(text) - 1 > self._emitted:
                delta = text[self._emitted : -1]
                self._emitted = len(text) - 1
        if clean_at is not None and clean_at > self._last_clean:
            self._advance_clean(clean_at, clean_text)
        elif newest - self._window_start > _MAX_HELD_WINDOW_TOKENS:
            self._shorten_held_window(text)
        return delta

    def _advance_clean(self, boundary: int, text_to_boundary: str) -> None:
        """`boundary` ends on a whole character, and `text_to_boundary` (the window's text up to
        it) is all returned. The window now starts at the previous such boundary, keeping the
        tokens since then as context (at least one, which is all a decoder's first-token rule
        needs)."""
        previous, self._last_clean = self._last_clean, boundary
        if previous > self._window_start:
            # Text returned beyond `boundary`: byte-level tokens that straddle characters.
            beyond = self._emitted - len(text_to_boundary)
            self._window_start = previous
            self._emitted = len(self._decode(previous, boundary)) + beyond
        if self._window_start > _DROP_DECODED_IDS_AFTER:
            # The ids before the window are never decoded again.
            del self._ids[: self._window_start]
            self._last_clean = max(0, self._last_clean - self._window_start)
            self._window_start = 0

    def _shorten_held_window(self, text: str) -> None:
        """No clean boundary for a long while (tokens that keep ending inside characters, or
        invalid bytes): restart the window at the newest tokens. What is not yet returned is
        a run of U+FFFD at the end, each from at most three bytes (a cut-off character, or
        invalid bytes), so a few tokens per U+FFFD hold all of it; the part already returned
        is then counted from the end, the tail being the same in both windows."""
        not_returned = len(text) - self._emitted
        keep = 3 * not_returned + _INCOMPLETE_CHARACTER_TOKENS
        self._window_start = max(self._window_start, len(self._ids) - keep)
        self._emitted = max(0, len(self._decode(self._window_start, len(self._ids))) - not_returned)

    def flush(self) -> str:
        """At the end of the stream: the text still held back (an unfinished character shows as
        U+FFFD, as a full decode shows it). Further `add`s continue after it."""
        if self._last_clean == len(self._ids):
            return ""
        text = self._decode(self._window_start, len(self._ids))
        delta = text[self._emitted :]
        self._emitted = max(self._emitted, len(text))
        self._without_progress = 0
        self._advance_clean(len(self._ids), text)
        return delta
