"""Build an HF-format tokenizer directory from the sentencepiece model mistral-common ships.

No model hub is reachable in CI, so tests get a real, 32k-token sentencepiece BPE tokenizer
(`mistral_common/data/tokenizer.model.v1`) converted to `tokenizer.json` here, in the Llama
"legacy" layout: a "▁" prepended and spaces replaced by "▁", BPE with byte fallback, and a
decoder that undoes both. `test_tokenizer.py` checks it against sentencepiece itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) and message['role'] != 'system' %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)


def mistral_sentencepiece_model() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


def _bpe_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces of the vocabulary is a merge, ranked by the
    merged piece's id (sentencepiece orders pieces by score)."""
    merges = []
    for piece, rank in vocab.items():
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                merges.append((rank, vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for _, _, _, left, right in merges]


def convert_sentencepiece(model_path: Path) -> Tokenizer:
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    bpe_vocab = {p: i for p, i in vocab.items()}
    tokenizer = Tokenizer(
        models.BPE(vocab=bpe_vocab, merges=_bpe_merges(
            {p: i for p, i in vocab.items() if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))}
        ), unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tokenizer


def build_mistral_tokenizer_dir(path: Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json (Mistral-style [INST] template) and a
    config.json with a 4096-token context into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    convert_sentencepiece(mistral_sentencepiece_model()).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
        "chat_template": MISTRAL_TEMPLATE, "model_max_length": 4096,
    }, indent=2))
    (path / "config.json").write_text(json.dumps({
        "architectures": ["MistralForCausalLM"], "max_position_embeddings": 4096, "vocab_size": 32000,
        "bos_token_id": 1, "eos_token_id": 2,
    }, indent=2))
    return path
