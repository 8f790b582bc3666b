"""An HF-format tokenizer directory built from the sentencepiece model mistral-common ships.

No model hub is reachable in CI, so tests get a real 32k-piece sentencepiece BPE tokenizer
(`mistral_common/data/tokenizer.model.v1`, Mistral 7B v0.1's) converted to `tokenizer.json`
here, as `transformers`' Llama converter lays it out in its "legacy" mode:

- vocabulary: every sentencepiece piece at its own id; merges: every split of a piece into two
  pieces of the vocabulary, ranked by the merged piece's score (sentencepiece merges the
  highest-scoring pair first), as `transformers`' SentencePieceExtractor derives them;
- BPE with byte fallback (characters outside the vocabulary become <0x..> byte pieces) and
  fused unknowns;
- normalizer: prepend "▁" and turn spaces into "▁" (sentencepiece's dummy prefix); decoder:
  "▁" back to spaces, bytes back to characters, and the dummy prefix's space stripped;
- <unk>, <s>, </s> as special tokens, and <s> prepended when special tokens are added.

`tests/unit/test_tokenizer.py` checks the result against sentencepiece itself.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from pathlib import Path

import sentencepiece
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

BOS, EOS, UNK = "<s>", "</s>", "<unk>"

# Mistral 7B Instruct's template: an optional system message folded into the first [INST],
# strictly alternating user/assistant turns, anything else refused through raise_exception.
MISTRAL_TEMPLATE = """\
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, '
                            'with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

CONTEXT_LENGTH = 4096


def mistral_sentencepiece_model() -> Path:
    """Path of the sentencepiece model inside the installed mistral-common package."""
    return Path(str(importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"))


def _bpe_merges(sp: sentencepiece.SentencePieceProcessor, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges from a sentencepiece vocabulary: for each ordinary piece, every split into two
    ordinary pieces, all ranked by the merged piece's score, highest first (ties keep vocabulary
    order, splits of one piece go by the ids of their halves). Control, unknown and byte
    pieces are never the result of a merge in sentencepiece, so they take part in none here:
    text like "<0x41>" must stay text."""
    ordinary = {piece: i for piece, i in vocab.items() if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))}
    scored: list[tuple[float, str, str]] = []
    for piece, piece_id in ordinary.items():
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        splits = [(left, right) for left, right in splits if left in ordinary and right in ordinary]
        splits.sort(key=lambda pair: (ordinary[pair[0]], ordinary[pair[1]]))
        scored += [(sp.get_score(piece_id), left, right) for left, right in splits]
    scored.sort(key=lambda merge: merge[0], reverse=True)  # stable: ties keep their order
    return [(left, right) for _, left, right in scored]


def convert_sentencepiece(model_path: Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` that encodes and decodes as the sentencepiece BPE model at
    `model_path` does (for text without special-token strings in it)."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=_bpe_merges(sp, vocab), unk_token=UNK, fuse_unk=True, byte_fallback=True)
    )
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (UNK, BOS, EOS)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return tokenizer


@functools.cache
def _tokenizer_json(model_path: Path) -> str:
    # Converting takes a second or two; the JSON is cached so every directory after the first
    # (in this process) is only written.
    return convert_sentencepiece(model_path).to_str()


def build_mistral_tokenizer_dir(path: Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json (BOS <s>, EOS </s>, add_bos_token, the
    Mistral [INST] template) and config.json (a 4096-token context) into `path`; return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.json").write_text(_tokenizer_json(mistral_sentencepiece_model()), encoding="utf-8")
    tokenizer_config = {
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "add_bos_token": True,
        "add_eos_token": False,
        "chat_template": MISTRAL_TEMPLATE,
        "model_max_length": CONTEXT_LENGTH,
        "tokenizer_class": "LlamaTokenizer",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    model_config = {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "max_position_embeddings": CONTEXT_LENGTH,
        "vocab_size": 32000,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (path / "config.json").write_text(json.dumps(model_config, indent=2), encoding="utf-8")
    return path


def pool_prefix_cache_hits(source: str, card: bytes) -> int:
    """Run in a prompt-pool process (importable there, unlike a test module): the prefix-cache
    hits of that process's bundle for the model."""
    from dynamo_core.frontend import prompt_pool

    return prompt_pool._worker_model(source, card).tokenizer.prefix_cache.stats.hits
