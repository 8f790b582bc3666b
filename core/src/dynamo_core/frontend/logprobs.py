"""Engine logprobs (token ids and floats) as OpenAI's response shapes.

Each token is shown as its own text and raw bytes, as OpenAI and vLLM show it: a
sentencepiece piece keeps its leading space ("▁world" -> " world"), a byte token is its byte,
and a byte-level BPE symbol maps back to the bytes it stands for. A token that is part of a
multi-byte character decodes to U+FFFD in `token`; `bytes` keeps what it really is, which is
why OpenAI carries both. Engines may report -inf (a token outside the sampled distribution);
JSON has no infinity, so it is clamped to -9999.0 as vLLM does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from dynamo_core.frontend.stages import ChoiceDelta
from dynamo_core.protocols.engine import TokenLogprob
from dynamo_core.protocols.openai import ChatTokenLogprob, CompletionLogprobs, TopLogprob
from dynamo_core.tokenizer import TokenizerBundle, byte_symbols

_FLOOR = -9999.0
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_METASPACE = "\u2581"


def _decoder_types(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["type"]} if isinstance(node.get("type"), str) else set()
        for value in node.values():
            found |= _decoder_types(value)
        return found
    if isinstance(node, list):
        return set().union(*(_decoder_types(v) for v in node)) if node else set()
    return set()


def _clamp(logprob: float) -> float:
    return logprob if logprob > _FLOOR else _FLOOR


class TokenTexts:
    """Each token's text and bytes for one tokenizer, cached by id (one per served model)."""

    def __init__(self, bundle: TokenizerBundle):
        self._bundle = bundle
        # The decoder's own state, not `to_str()`: serialising a large vocabulary would stall
        # the event loop on the first request that asks for logprobs.
        decoder = bundle.tokenizer.decoder
        types = _decoder_types(json.loads(decoder.__getstate__())) if decoder is not None else set()
        self._byte_level = "ByteLevel" in types
        self._byte_of_symbol = {symbol: b for b, symbol in enumerate(byte_symbols())}
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        cached = self._cache.get(token_id)
        if cached is None:
            cached = self._cache[token_id] = self._lookup(token_id)
        return cached

    def _lookup(self, token_id: int) -> tuple[str, list[int]]:
        piece = self._bundle.id_to_token(token_id)
        if piece is None:
            return "", []
        if token_id in self._bundle.special_token_ids:
            raw = piece.encode()
        elif (byte := _BYTE_TOKEN.fullmatch(piece)) is not None:
            raw = bytes([int(byte.group(1), 16)])
        elif self._byte_level and all(c in self._byte_of_symbol for c in piece):
            raw = bytes(self._byte_of_symbol[c] for c in piece)
        else:
            raw = piece.replace(_METASPACE, " ").encode()
        return raw.decode("utf-8", errors="replace"), list(raw)

    def top(self, alternatives: Sequence[TokenLogprob]) -> list[TopLogprob]:
        out = []
        for alt in alternatives:
            text, raw = self(alt.token_id)
            out.append(TopLogprob(text, _clamp(alt.logprob), raw))
        return out

    def chat(self, delta: ChoiceDelta) -> list[ChatTokenLogprob]:
        """The chat `logprobs.content` entries of one delta's tokens."""
        tops = delta.top_logprobs or []
        entries = []
        for i, (token_id, logprob) in enumerate(zip(delta.token_ids, delta.logprobs or [])):
            text, raw = self(token_id)
            entries.append(ChatTokenLogprob(text, _clamp(logprob), raw, self.top(tops[i]) if i < len(tops) else []))
        return entries

    def completion(self, delta: ChoiceDelta, offset: int, into: CompletionLogprobs | None = None) -> tuple[CompletionLogprobs, int]:
        """One delta's tokens in the completions shape (appended to `into` when given), and the
        text offset after the delta; `offset` is where the delta's text starts in the choice.

        Offsets follow the text actually returned: a token's own text can differ from its part
        of the detokenized text (a sentencepiece word that starts the output loses its space,
        special tokens are skipped), so inside a delta they advance by the tokens' lengths but
        never past the delta's text, and the next delta starts where this one's text ends.
        """
        result = into if into is not None else CompletionLogprobs([], [], [], [])
        tops = delta.top_logprobs or []
        end = offset + len(delta.text)
        position = offset
        for i, (token_id, logprob) in enumerate(zip(delta.token_ids, delta.logprobs or [])):
            text, _ = self(token_id)
            result.tokens.append(text)
            result.token_logprobs.append(_clamp(logprob))
            top = {alt.token_id: alt for alt in tops[i]} if i < len(tops) else {}
            result.top_logprobs.append({self(t)[0]: _clamp(alt.logprob) for t, alt in top.items()})
            result.text_offset.append(min(position, end))
            if token_id not in self._bundle.special_token_ids:
                position += len(text)
        return result, end
