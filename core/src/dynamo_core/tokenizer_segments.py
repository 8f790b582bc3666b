"""Texts encoded word by word or in pieces, with the ids of a whole encode, at a fraction of its cost.

HF `tokenizers` encodes a text on the calling thread, and for a sentencepiece-style tokenizer
(Llama 2, Mistral: spaces become "▁" in the normalizer and there is no pre-tokenizer) the
whole text is one "word" for its BPE: the library's word cache never applies, and the cost
grows faster than the text (1.8 ms for a 512-token prompt, ~60 ms for 16k tokens, the GIL held
throughout). `SegmentedEncoder` cuts a text at single spaces between ASCII letters or digits
(cut points) and

- for such a tokenizer, keeps each word's ids (a bounded dictionary) and builds a prompt's ids
  from them, encoding only the words it has not seen (together, in one `encode`): a prompt
  of known words then costs a `str.split` and a lookup a word, 5-7x less than the whole encode;
- otherwise, for long texts, encodes pieces of about a thousand characters with `encode_batch`,
  which runs them on the library's Rust thread pool with the GIL released.

Why the ids are the same: a cut is a place no token can span, in one of two ways (`CutMode`):

- `DROP`: the normalizer (or a Metaspace pre-tokenizer) turns every space into a symbol R
  ("▁") and starts a text with one, and no vocabulary entry has R after another character
  (entries are `R*` then no R). A BPE merge or a unigram piece over the cut would be such an
  entry, so the pieces' encodings are independent, and the piece after a cut, without its
  space, starts with the R that the space became.
- `KEEP`: the pre-tokenizer splits the text before a space that precedes a word (GPT-2's and
  Llama 3's byte-level regexes, whitespace splitting), so a cut is already a word boundary and
  the piece after it keeps its space.

Either way no added token may span a cut or stand beside one (none holds whitespace or R, or
starts or ends with an ASCII letter or digit), there is no truncation, padding or BPE dropout, and the mode is confirmed on
probe texts before it is used. `add_special_tokens=True` adds the post-processor's fixed
prefix and suffix (BOS, say), confirmed on probes too. A tokenizer where none of this holds
gets no `SegmentedEncoder`: the bundle encodes whole, as before.
"""

from __future__ import annotations

import enum
import itertools
import random
import re
import threading
from dataclasses import dataclass

from tokenizers import Tokenizer

from dynamo_core.tokenizer_cache import component_state, components

# Cut points: one space with an ASCII letter or digit on each side. Text without any (code
# with no spaces, CJK) is encoded whole.
_CUT = re.compile(r"[A-Za-z0-9] (?=[A-Za-z0-9])")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_SPLITTING_PRE_TOKENIZERS = frozenset({"Split", "Whitespace", "WhitespaceSplit", "BertPreTokenizer"})
_WORD_MODELS = frozenset({"BPE", "Unigram"})
_PROBE_TEXTS, _PROBE_WORDS = 4, 200
_PROBE_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_PROBE_FILLERS = (" ", "  ", "\n", "\n\n", ", ", ". ", "'s ", " - ", "\t", " é ", " 日本 ", " 🙂 ", "(", ") ", " ▁ ", "123 ")


class CutMode(enum.Enum):
    DROP = "drop"  # the piece after a cut starts after the space
    KEEP = "keep"  # the piece after a cut starts with the space


def _space_symbol(normalizer: dict | None, pre_tokenizer: dict | None) -> str | None:
    """The symbol spaces become before the model sees them (sentencepiece's "▁"), if any."""
    for part in components(normalizer, "normalizers"):
        pattern = part.get("pattern") or {}
        if part.get("type") == "Replace" and pattern.get("String") == " ":
            return part.get("content") or None
    for part in components(pre_tokenizer, "pretokenizers"):
        if part.get("type") == "Metaspace":
            return part.get("replacement") or None
    return None


def _splits_before_words(part: dict) -> bool:
    """Whether this pre-tokenizer part ends a word before a space that precedes a word."""
    kind = part.get("type")
    if kind == "ByteLevel":
        return bool(part.get("use_regex", True))
    if kind == "Metaspace":
        return bool(part.get("split", True))
    return kind in _SPLITTING_PRE_TOKENIZERS


def _vocabulary_cannot_span(tokenizer: Tokenizer, symbol: str) -> bool:
    """No vocabulary entry holds `symbol` after another character."""
    lone = re.compile(f"^{re.escape(symbol)}*[^{re.escape(symbol)}]*$")
    return all(lone.match(token) for token in tokenizer.get_vocab(with_added_tokens=False))


def _added_tokens_cannot_span(tokenizer: Tokenizer, symbol: str | None) -> bool:
    """No added token holds whitespace or `symbol` (so none spans a cut) or starts or ends with
    an ASCII letter or digit (so none stands beside one: the library splits the text around an
    added token and normalizes each side alone, so the space there does not become the "▁" a
    piece after the cut would have)."""
    for token in tokenizer.get_added_tokens_decoder().values():
        content = token.content
        if not content or any(c.isspace() for c in content) or (symbol and symbol in content):
            return False
        if content[0] in _ALNUM or content[-1] in _ALNUM:
            return False
    return True


def _probe_texts(seed: int = 0) -> list[str]:
    """Texts with many cuts: words of letters and digits between spaces, newlines, tabs,
    punctuation, runs of spaces, "▁" and non-ASCII text."""
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choice(_PROBE_ALPHABET) for _ in range(rng.randint(1, 9)))

    def text() -> str:
        parts = [word()]
        for _ in range(_PROBE_WORDS):
            parts += [rng.choice(_PROBE_FILLERS) if rng.random() < 0.3 else " ", word()]
        return "".join(parts)

    return [text() for _ in range(_PROBE_TEXTS)]


def _words(text: str, skip: int) -> list[str]:
    """`text` cut at every cut point (the same points as `_CUT`): `skip` 1 drops the space at a
    cut, 0 keeps it at the start of the next word. `str.split` and a scan of its parts, which is
    several times faster than the regex over a whole prompt."""
    parts = text.split(" ")
    words, start = [], 0
    for i in range(1, len(parts)):
        before, after = parts[i - 1], parts[i]
        if before and after and before[-1] in _ALNUM and after[0] in _ALNUM:
            word = " ".join(parts[start:i]) if i - start > 1 else before
            words.append(word if skip or not words else " " + word)
            start = i
    last = " ".join(parts[start:]) if len(parts) - start > 1 else parts[start]
    words.append(last if skip or not words else " " + last)
    return words


@dataclass(frozen=True)
class _Affixes:
    """What `add_special_tokens=True` puts around a text's ids."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]


def _affixes(tokenizer: Tokenizer, probes: list[str]) -> _Affixes | None:
    found: _Affixes | None = None
    for text in probes:
        plain = tokenizer.encode(text, add_special_tokens=False).ids
        full = tokenizer.encode(text, add_special_tokens=True).ids
        extra = len(full) - len(plain)
        start = next((i for i in range(extra + 1) if full[i : i + len(plain)] == plain), None)
        if extra < 0 or start is None:
            return None
        this = _Affixes(tuple(full[:start]), tuple(full[start + len(plain) :]))
        if found is not None and this != found:
            return None
        found = this
    return found


def cut_mode(tokenizer: Tokenizer) -> CutMode | None:
    """How `tokenizer`'s texts may be cut exactly (see the module header), or None."""
    if tokenizer.truncation is not None or tokenizer.padding is not None:
        return None
    model = tokenizer.model  # its attributes, not its state: that is the whole vocabulary as JSON
    if getattr(model, "dropout", None):
        return None
    normalizer, pre_tokenizer = component_state(tokenizer.normalizer), component_state(tokenizer.pre_tokenizer)
    symbol = _space_symbol(normalizer, pre_tokenizer)
    if not _added_tokens_cannot_span(tokenizer, symbol):
        return None
    no_span = bool(symbol) and type(model).__name__ in _WORD_MODELS and not getattr(model, "ignore_merges", False) \
        and _vocabulary_cannot_span(tokenizer, symbol)
    splits = any(_splits_before_words(part) for part in components(pre_tokenizer, "pretokenizers"))
    candidates = [mode for mode, holds in ((CutMode.DROP, no_span), (CutMode.KEEP, no_span or splits)) if holds]

    probes = _probe_texts()
    for mode in candidates:
        skip = 1 if mode is CutMode.DROP else 0
        if all(_joined(tokenizer, _words(text, skip)) == _joined(tokenizer, [text]) for text in probes):
            return mode
    return None


def _joined(tokenizer: Tokenizer, pieces: list[str]) -> list[int]:
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(pieces, add_special_tokens=False):
        ids += encoding.ids
    return ids


class SegmentedEncoder:
    """`encode(text, add_special_tokens)` with the ids `tokenizer.encode` gives.

    In `DROP` mode texts of at least `word_min_chars` are cut at every cut point and each word's
    ids are kept (`max_words` of up to `max_word_chars` characters; the whole cache is dropped
    when it is full, which costs less a lookup than an LRU's bookkeeping), so a prompt costs a
    split and a dictionary lookup a word. The words not kept yet are encoded together, joined
    by spaces (every join is a cut) in one `encode` whose token offsets tell the words apart:
    no thread pool (which, in many frontend processes at once, spins more than it encodes) and
    no per-word call. Otherwise texts of at least `piece_chars * 4` are cut into pieces of about
    `piece_chars` and encoded together with `encode_batch` (on the library's threads)."""

    def __init__(
        self, tokenizer: Tokenizer, mode: CutMode, *, piece_chars: int = 1024, word_min_chars: int = 256,
        max_words: int = 1 << 16, max_word_chars: int = 64,
    ):
        self._tokenizer = tokenizer
        self.mode = mode
        self.piece_chars = piece_chars
        self.pieces_min_chars = piece_chars * 4
        # Texts shorter than this are encoded whole (`TokenizerBundle.encode` checks it first).
        self.min_chars = word_min_chars if mode is CutMode.DROP else self.pieces_min_chars
        self.max_words, self.max_word_chars = max_words, max_word_chars
        self._word_ids: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._skip = 1 if mode is CutMode.DROP else 0  # the space: dropped or kept after a cut
        self._affixes = _affixes(tokenizer, [text[: 16 * (i + 1)] for i, text in enumerate(_probe_texts(seed=1))])
        # Whether the offsets of a joined encode split it into its words' own encodes (probed).
        self._joins_split = mode is CutMode.DROP and self._offsets_split_words()

    def pieces(self, text: str) -> list[str]:
        """`text` cut at spaces every `piece_chars` or so; one piece where there is no cut."""
        out, start, size = [], 0, self.piece_chars
        while len(text) - start > size + size // 2:
            cut = _CUT.search(text, start + size)
            if cut is None:
                break
            out.append(text[start : cut.start() + 1])
            start = cut.start() + 1 + self._skip
        out.append(text[start:])
        return out

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        affixes = self._affixes if add_special_tokens else _Affixes((), ())
        ids = None
        if affixes is not None and len(text) >= self.min_chars:
            if self.mode is CutMode.DROP:
                ids = self._by_words(text)
            elif len(text) >= self.pieces_min_chars:
                pieces = self.pieces(text)
                ids = _joined(self._tokenizer, pieces) if len(pieces) > 1 else None
        if ids is None:
            return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return [*affixes.prefix, *ids, *affixes.suffix] if affixes.prefix or affixes.suffix else ids

    def _by_words(self, text: str) -> list[int]:
        """The ids of `text` from its words' kept ids, encoding the words not kept yet."""
        words = _words(text, 1)
        known = self._word_ids
        ids: list[int] = []
        try:
            for word in words:
                ids += known[word]
            return ids
        except KeyError:  # a word not kept yet (or the cache was just dropped by another thread)
            pass
        with self._lock:  # one thread at a time may add words or drop the cache
            new = list(dict.fromkeys(word for word in words if word not in known))
            if len(known) + len(new) > self.max_words:
                known.clear()
                new = list(dict.fromkeys(words))
            fresh = self._encode_words(new)
            room = self.max_words - len(known)
            known.update(itertools.islice(((w, i) for w, i in fresh.items() if len(w) <= self.max_word_chars), max(room, 0)))
            ids = []
            for word in words:
                ids += fresh[word] if word in fresh else known[word]
            return ids

    def _encode_words(self, words: list[str]) -> dict[str, list[int]]:
        """Each word's own ids, `tokenizer.encode(word, add_special_tokens=False).ids`."""
        joinable = [w for w in words if w[0] in _ALNUM and w[-1] in _ALNUM] if self._joins_split else []
        out = self._split_by_offsets(joinable) if joinable else {}
        rest = [w for w in words if w not in out]
        if rest:
            out.update(zip(rest, (e.ids for e in self._tokenizer.encode_batch(rest, add_special_tokens=False))))
        return out

    def _split_by_offsets(self, words: list[str]) -> dict[str, list[int]]:
        """`words` (each starting and ending with a letter or digit, so every join is a cut)
        encoded as one text, its tokens given to the word their first character falls in: the
        space before a word became the "▁" of its first token."""
        encoding = self._tokenizer.encode(" ".join(words), add_special_tokens=False)
        out: dict[str, list[int]] = {}
        k, end, current = 0, len(words[0]), []
        for token, (start, _) in zip(encoding.ids, encoding.offsets):
            while start >= end and k + 1 < len(words):
                out[words[k]] = current
                k, current = k + 1, []
                end += 1 + len(words[k])
            current.append(token)
        out[words[k]] = current
        return out

    def _offsets_split_words(self) -> bool:
        for text in _probe_texts(seed=2):
            words = list(dict.fromkeys(w for w in _words(text, 1) if w[0] in _ALNUM and w[-1] in _ALNUM))
            split = self._split_by_offsets(words)
            if any(split.get(w) != self._tokenizer.encode(w, add_special_tokens=False).ids for w in words):
                return False
        return True


def segmented_encoder_for(tokenizer: Tokenizer) -> SegmentedEncoder | None:
    """A `SegmentedEncoder` for `tokenizer`, or None where no cut is provably exact."""
    mode = cut_mode(tokenizer)
    return SegmentedEncoder(tokenizer, mode) if mode is not None else None
