"""Token ids of prompt prefixes, kept so that a chat's next turn encodes only what is new.

A multi-turn chat resends its whole history every turn, and the chat template renders that
history to the same text each time: turn N's prompt starts with turn N-1's up to the special
token that opened the generation prompt. Encoding that text again is the frontend's largest
per-request cost for long chats (HF `tokenizers` takes about 0.14 s for a 16k-token prompt, the
GIL held throughout). `PrefixTokenCache` keeps the token ids of each prompt up to its last
special token and, for a later prompt that starts with a kept prefix, encodes only the rest.

Why it is exact: `tokenizers` first splits the text around added tokens that match the raw
text (`normalized=False`) and then normalizes, pre-tokenizes and encodes each piece on its own,
so the ids of "prefix + rest", split right after such a token, are the ids of "prefix" followed
by those of "rest", provided that

- no added token can match across the split (one that overlaps the boundary token's text, or
  one that strips whitespace to its right (`rstrip`) or must stand alone as a word);
- no normalizer or pre-tokenizer looks at where a piece lies in the whole text (Metaspace's
  `prepend_scheme="first"` does: it prefixes only the text's first piece) or is unknown here;
- no truncation, padding or BPE dropout, and no special tokens added (rendered chat prompts
  already hold theirs).

`split_boundaries(tokenizer)` checks those conditions on the tokenizer's configuration and then
confirms each boundary token on probe strings; a tokenizer where none holds gets no cache
(the bundle encodes in full, as before). Memory is bounded by entries and bytes (LRU).
"""

from __future__ import annotations

import json
import re
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tokenizers import Tokenizer

# Normalizers and pre-tokenizers that treat each piece alone, whatever its offset in the text.
_PIECEWISE_NORMALIZERS = frozenset({
    "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Strip", "StripAccents", "Replace", "Prepend",
    "Precompiled", "BertNormalizer", "Nmt", "ByteLevel", "Sequence",
})
_PIECEWISE_PRE_TOKENIZERS = frozenset({
    "ByteLevel", "Whitespace", "WhitespaceSplit", "Split", "Punctuation", "Digits", "Metaspace",
    "BertPreTokenizer", "CharDelimiterSplit", "UnicodeScripts", "Sequence",
})
# Text on either side of a boundary token in the probes: spaces, newlines, digits, accents and
# nothing at all, where a merge or a prefix space across the split would show.
_PROBES = (("a b", " c"), ("x\n", "\n y"), ("", "héllo 12"), ("1 ", ""), (" ", "  ▁z"))
_MAX_PROBED_TOKENS = 64  # a tokenizer with hundreds of reserved specials: the first ones suffice
_MAX_LOOKUPS = 32  # boundaries tried from the end of a prompt; a chat's last turn adds a few


def component_state(component: object) -> dict | None:
    """A normalizer's or pre-tokenizer's configuration, as tokenizer.json writes it."""
    return json.loads(component.__getstate__()) if component is not None else None


def components(state: dict | None, nested: str) -> Iterable[dict]:
    """A normalizer's or pre-tokenizer's parts (`nested`: "normalizers" or "pretokenizers"),
    `Sequence`s flattened; nothing for None."""
    if not state:
        return
    yield state
    for part in state.get(nested) or ():
        yield from components(part, nested)


def _piecewise(component: object, nested: str, allowed: frozenset[str]) -> bool:
    if component is None:
        return True
    for part in components(component_state(component), nested):
        if part.get("type") not in allowed:
            return False
        if part.get("type") == "Metaspace" and part.get("prepend_scheme", "always") == "first":
            return False
    return True


def _overlaps(token: str, other: str) -> bool:
    """Whether `other` could match over part of `token` and text beside it."""
    if other == token or other in token:
        return False  # matched leftmost-longest: `token` itself wins where both start together
    if token in other:
        return True
    return any(other.endswith(token[:k]) or other.startswith(token[-k:]) for k in range(1, len(token)))


def split_boundaries(tokenizer: Tokenizer) -> frozenset[str]:
    """The special tokens after which a prompt's encoding may be split exactly (see the module
    header); empty where none may."""
    if tokenizer.truncation is not None or tokenizer.padding is not None:
        return frozenset()
    if getattr(tokenizer.model, "dropout", None):
        return frozenset()
    if not _piecewise(tokenizer.normalizer, "normalizers", _PIECEWISE_NORMALIZERS):
        return frozenset()
    if not _piecewise(tokenizer.pre_tokenizer, "pretokenizers", _PIECEWISE_PRE_TOKENIZERS):
        return frozenset()
    added = list(tokenizer.get_added_tokens_decoder().values())
    contents = [t.content for t in added]
    candidates = [
        t.content for t in added
        if t.special and not t.normalized and not t.rstrip and not t.single_word and t.content
        and not any(_overlaps(t.content, other) for other in contents)
    ][:_MAX_PROBED_TOKENS]

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    return frozenset(
        token for token in candidates
        if all(encode(left + token + right) == encode(left + token) + encode(right) for left, right in _PROBES)
    )


@dataclass
class CacheStats:
    hits: int = 0  # prompts that started with a kept prefix
    misses: int = 0  # prompts long enough to look up that did not
    hit_tokens: int = 0  # token ids taken from the cache instead of encoded
    entries: int = 0
    bytes: int = 0


class PrefixTokenCache:
    """Encodes rendered prompts (no special tokens added) reusing the ids of kept prefixes.

    Invariant: every entry maps a text that ends with a boundary token to the ids a full
    encode of that text gives, and `_bytes` is the sum of `_entry_bytes` over the entries.
    Thread-safe: the frontend may encode in threads beside its loop.
    """

    def __init__(
        self, tokenizer: Tokenizer, boundaries: frozenset[str], *, min_chars: int = 1024,
        max_entries: int = 4096, max_bytes: int = 64 << 20, encode: Callable[[str], list[int]] | None = None,
    ):
        if not boundaries:
            raise ValueError("a prefix cache needs at least one boundary token (see split_boundaries)")
        # How the parts between kept prefixes are encoded (the bundle's segmented encoder, say):
        # anything that gives `tokenizer.encode(text, add_special_tokens=False).ids`.
        self._encode_text = encode or (lambda text: tokenizer.encode(text, add_special_tokens=False).ids)
        self._boundary = re.compile("|".join(re.escape(t) for t in sorted(boundaries, key=len, reverse=True)))
        self.min_chars = min_chars  # shorter prompts are encoded whole, and shorter prefixes not kept
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, array] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def _encode(self, text: str) -> list[int]:
        return self._encode_text(text) if text else []

    def encode(self, text: str) -> list[int]:
        """The ids `tokenizer.encode(text, add_special_tokens=False)` gives."""
        if len(text) < self.min_chars:
            return self._encode(text)
        ends = [m.end() for m in self._boundary.finditer(text)]
        if not ends:
            return self._encode(text)
        last = ends[-1]
        start, head = 0, None
        for end in reversed(ends[-_MAX_LOOKUPS:]):
            if end < self.min_chars:
                break
            head = self._get(text[:end])
            if head is not None:
                start = end
                break
        with self._lock:
            if head is None:
                self.stats.misses += 1
            else:
                self.stats.hits += 1
                self.stats.hit_tokens += len(head)
        if start == last:
            return head.tolist() + self._encode(text[last:])
        prefix = (head.tolist() if head is not None else []) + self._encode(text[start:last])
        if last >= self.min_chars:
            self._put(text[:last], prefix)
        return prefix + self._encode(text[last:])

    def _get(self, key: str) -> array | None:
        with self._lock:
            ids = self._entries.get(key)
            if ids is not None:
                self._entries.move_to_end(key)
            return ids

    @staticmethod
    def _entry_bytes(key: str, ids: array) -> int:
        return sys.getsizeof(key) + ids.itemsize * len(ids) + 64  # 64: the dict slot and array header

    def _put(self, key: str, ids: list[int]) -> None:
        stored = array("I", ids)
        size = self._entry_bytes(key, stored)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= self._entry_bytes(key, old)
            self._entries[key] = stored
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                evicted, evicted_ids = self._entries.popitem(last=False)
                self._bytes -= self._entry_bytes(evicted, evicted_ids)
            self.stats.entries, self.stats.bytes = len(self._entries), self._bytes


def prefix_cache_for(tokenizer: Tokenizer, encode: Callable[[str], list[int]] | None = None) -> PrefixTokenCache | None:
    """A prefix cache for `tokenizer` (encoding the rest with `encode`, see PrefixTokenCache),
    or None where no split is provably exact."""
    boundaries = split_boundaries(tokenizer)
    return PrefixTokenCache(tokenizer, boundaries, encode=encode) if boundaries else None
