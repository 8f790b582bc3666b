"""Tokenizers for the gateway: an HF-format model directory, or the built-in byte-level one.

`load_tokenizer(source)` returns a `TokenizerBundle`: the HF `tokenizers.Tokenizer`, the special
tokens, the EOS ids and the chat template, read from the directory the way `transformers` reads
them, so a prompt tokenizes here exactly as it would in the engine:

- `tokenizer.json` is the tokenizer (added tokens, normalizer, post-processor and decoder);
- `tokenizer_config.json` names `bos_token`, `eos_token` (a string, or an AddedToken-style dict
  with "content"), `add_bos_token` and `chat_template` (a string, or a list of named templates
  of which "default" is used); `special_tokens_map.json`, when present, overrides the token
  names as it does in `transformers`;
- `chat_template.jinja` takes precedence over the config's `chat_template`;
- the `eos_token_id`s of `generation_config.json` and `config.json` (an int or a list) join the
  EOS token's id, since instruction-tuned models often end turns with a token other than
  `eos_token` (Llama 3's `<|eot_id|>`, for one).

`BUILTIN_TOKENIZER` ("builtin:bytes") needs no files: one token per UTF-8 byte plus ChatML's
special tokens, for the mocker and echo engines on a machine with no model downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from dynamo_core.tokenizer_cache import PrefixTokenCache, prefix_cache_for
from dynamo_core.tokenizer_segments import SegmentedEncoder, segmented_encoder_for

BUILTIN_TOKENIZER = "builtin:bytes"

# ChatML, as many instruction-tuned models use it; the built-in tokenizer's special tokens match.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_BUILTIN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_BUILTIN_EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")


class TokenizerLoadError(RuntimeError):
    """The tokenizer source is missing or malformed; the message names the file and the fault."""


@dataclass(frozen=True)
class TokenizerBundle:
    """A model's tokenizer with what the gateway needs around it.

    Frozen, because `load_tokenizer` shares one bundle between every request of a model; use
    `dataclasses.replace` for a variant (a model card's own chat template, say).
    """

    tokenizer: Tokenizer
    eos_token_ids: list[int]  # every id that ends generation; the EOS token's own id first
    bos_token: str | None
    eos_token: str | None
    chat_template: str | None
    vocab_size: int  # ids the tokenizer knows, added tokens included
    add_bos_token: bool = False  # whether `encode(..., add_special_tokens=True)` prepends BOS
    tool_chat_template: str | None = None  # the model's "tool_use" template, for requests with tools
    # The other named special tokens (unk_token, pad_token, sep_token, cls_token, mask_token),
    # as `transformers` hands its `special_tokens_map` to chat templates.
    template_tokens: dict[str, Any] = field(default_factory=dict)

    def with_chat_template(self, template: str | None) -> TokenizerBundle:
        """This bundle with a deployment's chat template override (a model card's), which
        replaces the model's templates for every request, those with tools included; the bundle
        itself when there is none."""
        if not template:
            return self
        return dataclasses.replace(self, chat_template=template, tool_chat_template=None)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings in `text` (e.g. "<|im_end|>") become their
        ids, as in `transformers`; `add_special_tokens` applies the post-processor (BOS etc.).
        A rendered chat prompt already holds its special tokens, so the default is False.
        Long texts are encoded in pieces where that is exact (tokenizer_segments.py)."""
        return _encode(self.tokenizer, self.segments, text, add_special_tokens)

    def encode_prompt(self, text: str) -> list[int]:
        """`encode(text)` of a rendered chat prompt, reusing the ids of a prefix this bundle
        encoded before (a chat's earlier turns; see tokenizer_cache.py) where that is exact."""
        cache = self.prefix_cache
        return cache.encode(text) if cache is not None else self.encode(text)

    @property
    def prefix_cache(self) -> PrefixTokenCache | None:
        """The prompt-prefix cache of this bundle's tokenizer, None where the tokenizer allows
        no exact split. Shared by the bundles of one tokenizer (a chat template override's
        too: its prompts are other texts, so they do not collide), built on first use."""
        return _prefix_cache_of(self.tokenizer)

    @property
    def segments(self) -> SegmentedEncoder | None:
        """How this bundle's tokenizer encodes long texts in pieces, None where no cut is
        provably exact; one per tokenizer, built on first use."""
        return _segments_of(self.tokenizer)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`. Ids the tokenizer does not know are ignored; a byte sequence that is not
        valid UTF-8 decodes to U+FFFD."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry of `token_id` (e.g. "▁Hello", "Ġworld", "<0x0A>"), or None."""
        return self.tokenizer.id_to_token(token_id)

    @functools.cached_property
    def special_token_ids(self) -> frozenset[int]:
        """Ids that `decode(..., skip_special_tokens=True)` drops."""
        return frozenset(i for i, token in self.tokenizer.get_added_tokens_decoder().items() if token.special)


# Per tokenizer, not per bundle: both probe the tokenizer when built (a few milliseconds), and a
# chat template override makes a new bundle of the same tokenizer.
@functools.lru_cache(maxsize=64)
def _segments_of(tokenizer: Tokenizer) -> SegmentedEncoder | None:
    return segmented_encoder_for(tokenizer)


@functools.lru_cache(maxsize=64)
def _prefix_cache_of(tokenizer: Tokenizer) -> PrefixTokenCache | None:
    return prefix_cache_for(tokenizer, functools.partial(_encode, tokenizer, _segments_of(tokenizer), add_special_tokens=False))


def _encode(tokenizer: Tokenizer, segments: SegmentedEncoder | None, text: str, add_special_tokens: bool) -> list[int]:
    if segments is not None and len(text) >= segments.min_chars:
        return segments.encode(text, add_special_tokens)
    return tokenizer.encode(text, add_special_tokens=add_special_tokens).ids


# ---------------------------------------------------------------------------------------------
# the built-in tokenizer
# ---------------------------------------------------------------------------------------------


def byte_symbols() -> list[str]:
    """The printable stand-in of each byte value, as GPT-2's byte-level BPE (and so the
    `ByteLevel` decoder) defines them: printable Latin-1 bytes stand for themselves, the others
    are shifted past U+0100 in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + shifted)
            shifted += 1
    return [symbols[b] for b in range(256)]


def _builtin() -> TokenizerBundle:
    """A byte-level BPE without merges: token id b is byte b, so every UTF-8 string (and every
    byte sequence a model might emit) has exactly one tokenization and decodes back unchanged."""
    vocab = {symbol: byte for byte, symbol in enumerate(byte_symbols())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # No prefix space and no regex split: both would only matter for merges, and a prefix space
    # would add a byte that decoding cannot tell from the text's own.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _BUILTIN_SPECIAL_TOKENS])
    return TokenizerBundle(
        tokenizer=tokenizer,
        eos_token_ids=[tokenizer.token_to_id(t) for t in _BUILTIN_EOS_TOKENS],
        bos_token=None,
        eos_token=_BUILTIN_EOS_TOKENS[0],
        chat_template=CHATML_TEMPLATE,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        add_bos_token=False,
    )


# ---------------------------------------------------------------------------------------------
# HF-format directories
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or {} when the file does not exist."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TokenizerLoadError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenizerLoadError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _token_content(value: Any) -> str | None:
    """A special token as configs write it: "</s>", or {"content": "</s>", "lstrip": ...}."""
    if isinstance(value, dict):
        content = value.get("content")
        return content if isinstance(content, str) else None
    return value if isinstance(value, str) else None


_NAMED_SPECIAL_TOKENS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _template_tokens(names: dict[str, Any]) -> dict[str, Any]:
    """The special tokens besides BOS and EOS that templates may use, by their config names.
    (transformers 5 no longer passes `additional_special_tokens` to templates; nor do we.)"""
    return {name: content for name in _NAMED_SPECIAL_TOKENS if (content := _token_content(names.get(name))) is not None}


def _eos_ids_in(config: dict[str, Any]) -> list[int]:
    value = config.get("eos_token_id")
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0]


def _chat_templates(directory: Path, config: dict[str, Any]) -> tuple[str | None, str | None]:
    """The chat template, and the one for requests with tools when the model has its own."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8"), None
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenizerLoadError(f"{jinja} is not readable: {exc}") from exc
    template = config.get("chat_template")
    if isinstance(template, list):
        # Named templates ("default", "tool_use", "rag", ...): chat uses "default", and
        # "tool_use" when tools are given, as `transformers` picks them when no name is asked for.
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        default, tool_use = named.get("default"), named.get("tool_use")
        return (default if isinstance(default, str) else None), (tool_use if isinstance(tool_use, str) else None)
    return (template if isinstance(template, str) else None), None


def _starts_with_bos(tokenizer: Tokenizer, bos: str | None) -> bool:
    """Whether the post-processor prepends `bos`: what `add_bos_token` means when the config
    does not say."""
    bos_id = tokenizer.token_to_id(bos) if bos is not None else None
    return bos_id is not None and tokenizer.encode("", add_special_tokens=True).ids[:1] == [bos_id]


def _from_directory(directory: Path) -> TokenizerBundle:
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise TokenizerLoadError(
            f"{directory} has no tokenizer.json (an HF-format model directory with a fast tokenizer is expected)"
        )
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # the Rust loader raises plain Exception for every fault
        raise TokenizerLoadError(f"{tokenizer_file} is not a valid tokenizer: {exc}") from exc

    config = _read_json(directory / "tokenizer_config.json")
    names = {**config, **_read_json(directory / "special_tokens_map.json")}
    bos = _token_content(names.get("bos_token"))
    eos = _token_content(names.get("eos_token"))

    eos_ids: list[int] = []
    eos_id = tokenizer.token_to_id(eos) if eos is not None else None
    if eos_id is not None:
        eos_ids.append(eos_id)
    for extra in (_read_json(directory / "generation_config.json"), _read_json(directory / "config.json")):
        eos_ids += [i for i in _eos_ids_in(extra) if i not in eos_ids]

    add_bos = config.get("add_bos_token")
    chat_template, tool_chat_template = _chat_templates(directory, config)
    return TokenizerBundle(
        tokenizer=tokenizer,
        eos_token_ids=eos_ids,
        bos_token=bos,
        eos_token=eos,
        chat_template=chat_template,
        tool_chat_template=tool_chat_template,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        add_bos_token=add_bos if isinstance(add_bos, bool) else _starts_with_bos(tokenizer, bos),
        template_tokens=_template_tokens(names),
    )


@functools.lru_cache(maxsize=32)
def load_tokenizer(source: str) -> TokenizerBundle:
    """The tokenizer of `source`: an HF-format directory, or `BUILTIN_TOKENIZER`.

    Loaded once per source string and shared; raises `TokenizerLoadError` (not cached) when the
    directory or one of its files is missing or malformed. Loading a large tokenizer.json takes
    a while: call this off the event loop.
    """
    if source == BUILTIN_TOKENIZER:
        return _builtin()
    directory = Path(source)
    if not directory.is_dir():
        raise TokenizerLoadError(f"tokenizer source {source!r} is not a directory (nor {BUILTIN_TOKENIZER!r})")
    return _from_directory(directory)
