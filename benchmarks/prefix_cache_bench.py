"""CPU time of encoding multi-turn chat prompts, in full and through the prompt-prefix cache.

    uv run python -m benchmarks.prefix_cache_bench [--chats 20]

Each chat sends T turns; turn t's prompt is the chat template over the history (user messages
of W words, assistant replies of 64) and one new user message, so each prompt extends the
last, as a client resends it. The prompts are encoded in the order the chats send them, once
with `TokenizerBundle.encode` and once with `encode_prompt` (tokenizer_cache.py) on a bundle of
its own; the ids must be equal. Tokenizers: the built-in byte-level one and the 32k-piece
Mistral sentencepiece BPE that the tests build (tests/tokenizer_fixture.py). Process CPU time,
so other load on the machine moves the figures less than wall time would.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from dynamo_core.frontend.chat_template import render_chat_template
from dynamo_core.tokenizer import BUILTIN_TOKENIZER, load_tokenizer

WORDS = "the quick brown fox jumps over lazy dogs while seven wizards quietly hex bad jocks".split()


def _chat(rng: random.Random, turns: int, words: int) -> list[list[dict]]:
    history: list[dict] = []
    out = []
    for turn in range(turns):
        history = [*history, {"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(words)) + f" {turn}"}]
        out.append(history)
        history = [*history, {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(64))}]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tokenizer_fixture import build_mistral_tokenizer_dir

    mistral = str(build_mistral_tokenizer_dir(Path(tempfile.mkdtemp()) / "mistral"))
    print("| tokenizer | turns | words a turn | mean prompt tokens | full encode ms | encode_prompt ms | speedup | cache hits | kept MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, source, turns, words in (
        ("builtin", BUILTIN_TOKENIZER, 8, 200), ("mistral", mistral, 8, 200), ("mistral", mistral, 16, 1000),
    ):
        plain = load_tokenizer(source)
        cached = plain.with_chat_template(plain.chat_template + " ")  # a bundle of its own: an empty cache
        prompts = [render_chat_template(plain, m) for seed in range(args.chats) for m in _chat(random.Random(seed), turns, words)]
        t0 = time.process_time()
        full = [plain.encode(p) for p in prompts]
        t1 = time.process_time()
        reused = [cached.encode_prompt(p) for p in prompts]
        t2 = time.process_time()
        assert reused == full, "the cache changed token ids"
        n = len(prompts)
        stats = cached.prefix_cache.stats
        print(f"| {name} | {turns} | {words} | {sum(map(len, full)) / n:.0f} | {1000 * (t1 - t0) / n:.2f} | "
              f"{1000 * (t2 - t1) / n:.2f} | {(t1 - t0) / (t2 - t1):.1f}x | {stats.hits}/{n} | {stats.bytes / 2**20:.1f} |")


if __name__ == "__main__":
    main()
