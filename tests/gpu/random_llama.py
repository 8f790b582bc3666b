"""A small Llama with random weights and the test tokenizer, for GPU tests and benchmarks.

The GPU machine reaches no model hub, so the model is made there: Llama architecture, random
(seeded) weights saved as bf16 safetensors, and the 32k-token sentencepiece tokenizer that
`tests/tokenizer_fixture.py` builds (its Mistral `[INST]` chat template included). vLLM, HF
transformers and dynamo's frontend all read the same directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tokenizer_fixture

from tokenizer_fixture import build_mistral_tokenizer_dir  # noqa: E402

VOCAB_SIZE = 32000  # the tokenizer's
CONTEXT_LENGTH = 4096


def build_random_llama(
    path: Path | str,
    *,
    layers: int = 8,
    hidden: int = 1024,
    heads: int = 16,
    kv_heads: int = 8,
    intermediate: int = 4096,
    seed: int = 0,
) -> Path:
    """Write a random-weight Llama (about 180M parameters by default) into `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    build_mistral_tokenizer_dir(path)
    # Load tokenizer.json exactly as written, whatever model type the config names.
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=CONTEXT_LENGTH,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)  # config.json replaces the tokenizer's
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "llama-8l-random")
    build_random_llama(target)
    print(f"wrote {target}: {sorted(p.name for p in target.iterdir())}")
