"""Incremental detokenization that never emits half a character.

Decoding token by token goes wrong two ways: a multi-byte UTF-8 character split over tokens
decodes to U+FFFD until its last byte arrives, and tokenizers that mark word starts (the
sentencepiece "▁") decode a lone token differently from the same token in context. So, like
HF's TextStreamer and vLLM, we decode a short window twice: the tokens up to `read_offset`
(already emitted) and up to the newest token, both starting at `prefix_offset`, and emit the
difference, holding it back while it ends in U+FFFD.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynamo_core.tokenizer import TokenizerBundle

# Context tokens decoded before the new ones, so spacing rules see a word's start.
_CONTEXT = 6


class IncrementalDetokenizer:
    def __init__(self, bundle: TokenizerBundle, skip_special_tokens: bool = True):
        self._decode = bundle.tokenizer.decode
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0  # where the decoding window starts
        self._read_offset = 0  # tokens before this are already emitted

    def add(self, token_ids: Sequence[int]) -> str:
        """Append tokens; return the text they complete (possibly empty)."""
        self._ids.extend(token_ids)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=self._skip)
        full = self._decode(self._ids[self._prefix_offset :], skip_special_tokens=self._skip)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""  # an incomplete character: wait for more bytes
        new_text = full[len(prefix) :]
        # Slide the window, keeping a little context for the next decode.
        self._read_offset = len(self._ids)
        self._prefix_offset = max(self._read_offset - _CONTEXT, 0) if len(self._ids) > _CONTEXT else 0
        return new_text

    def flush(self) -> str:
        """The text still held back when the stream ends (a truncated character shows as U+FFFD)."""
        if self._read_offset >= len(self._ids):
            return ""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=self._skip)
        full = self._decode(self._ids[self._prefix_offset :], skip_special_tokens=self._skip)
        self._read_offset = len(self._ids)
        return full[len(prefix) :]
