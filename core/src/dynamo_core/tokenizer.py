"""Tokenizers for the gateway: an HF-format directory, or the built-in byte-level one.

`load_tokenizer(source)` returns a `TokenizerBundle`: the HF `tokenizers.Tokenizer`, the
special tokens and EOS ids, and the chat template, read the way `transformers` reads them
(`chat_template.jinja` first, then `tokenizer_config.json`'s `chat_template`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

BUILTIN_TOKENIZER = "builtin:bytes"

# ChatML, as many instruction-tuned models use; the built-in tokenizer's special tokens match it.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TokenizerLoadError(RuntimeError):
    """The tokenizer source is missing or malformed."""


@dataclass(frozen=True)
class TokenizerBundle:
    tokenizer: Tokenizer
    eos_token_ids: list[int]
    bos_token: str | None
    eos_token: str | None
    chat_template: str | None
    vocab_size: int
    add_bos_token: bool = False

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _builtin() -> TokenizerBundle:
    """A byte-level BPE with no merges: every UTF-8 byte is a token, so any text round-trips."""
    byte_to_unicode = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(byte_to_unicode))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    eos = [tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")]
    return TokenizerBundle(
        tokenizer=tokenizer,
        eos_token_ids=eos,
        bos_token=None,
        eos_token="<|im_end|>",
        chat_template=CHATML_TEMPLATE,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
    )


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TokenizerLoadError(f"{path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _eos_ids_from(config: dict) -> list[int]:
    value = config.get("eos_token_id")
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int)]
    return []


def _chat_template(directory: Path, config: dict) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: use "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        return named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _from_directory(directory: Path) -> TokenizerBundle:
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise TokenizerLoadError(f"{directory} has no tokenizer.json (an HF-format model directory is expected)")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:
        raise TokenizerLoadError(f"{tokenizer_file}: {exc}") from exc
    config = _read_json(directory / "tokenizer_config.json")
    bos = _token_content(config.get("bos_token"))
    eos = _token_content(config.get("eos_token"))
    eos_ids: list[int] = []
    if eos is not None and tokenizer.token_to_id(eos) is not None:
        eos_ids.append(tokenizer.token_to_id(eos))
    for extra in (_read_json(directory / "generation_config.json"), _read_json(directory / "config.json")):
        eos_ids += [i for i in _eos_ids_from(extra) if i not in eos_ids]
    return TokenizerBundle(
        tokenizer=tokenizer,
        eos_token_ids=eos_ids,
        bos_token=bos,
        eos_token=eos,
        chat_template=_chat_template(directory, config),
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        add_bos_token=bool(config.get("add_bos_token", False)),
    )


@functools.lru_cache(maxsize=32)
def load_tokenizer(source: str) -> TokenizerBundle:
    """Load (once per source) the tokenizer of a model directory, or the built-in one."""
    if source == BUILTIN_TOKENIZER:
        return _builtin()
    directory = Path(source)
    if not directory.is_dir():
        raise TokenizerLoadError(f"tokenizer source {source!r} is not a directory")
    return _from_directory(directory)
