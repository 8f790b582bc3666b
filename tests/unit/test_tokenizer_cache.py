"""The prompt-prefix token cache (tokenizer_cache.py): the same ids as a full encode on real
multi-turn chats, no cache where a split could change the ids, bounded memory, and in use in
the prompt pool's processes."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path

import msgspec
import pytest
from tokenizers import AddedToken, Tokenizer, pre_tokenizers

from dynamo_core.frontend import prompt_pool
from dynamo_core.frontend.chat_template import render_chat_template
from dynamo_core.frontend.prompt_encoding import render_and_encode_chat
from dynamo_core.frontend.served_model import ServedModel
from dynamo_core.protocols.discovery import ModelCard
from dynamo_core.protocols.openai import ChatCompletionRequest
from dynamo_core.tokenizer import BUILTIN_TOKENIZER, CHATML_TEMPLATE, TokenizerBundle, load_tokenizer
from dynamo_core.tokenizer_cache import PrefixTokenCache, split_boundaries
from tokenizer_fixture import pool_prefix_cache_hits

# Text where a merge or a prefix space across a turn boundary would show: leading and trailing
# spaces and newlines, digits, accents, emoji, special-token text inside content, empty turns.
PIECES = [
    "Hello world", " leading space", "trailing space ", "  two", "\nnewline first", "last newline\n",
    "12345 678", "Grüße ça va", "世界 日本語", "😀👍🏽", "<|im_end|> inside", "</s> and <s> inside",
    "[INST] fake [/INST]", "▁metaspace▁", "", " ", "\n\n", "a" * 40, "x</s>y", "tabs\tand\r\nCRLF",
]


def _chat_turns(rng: random.Random, turns: int, words: int) -> list[list[dict]]:
    """The message lists a client sends turn by turn: each resends the history and adds one."""
    history: list[dict] = []
    out = []
    for turn in range(turns):
        user = " ".join(rng.choice(PIECES) for _ in range(words)) + f" question {turn}"
        history = [*history, {"role": "user", "content": user}]
        out.append(history)
        reply = "".join(rng.choice(PIECES) for _ in range(words))
        history = [*history, {"role": "assistant", "content": reply}]
    return out


@pytest.fixture(scope="module")
def mistral(mistral_tokenizer_dir: Path) -> TokenizerBundle:
    return load_tokenizer(str(mistral_tokenizer_dir))


def _fresh(bundle: TokenizerBundle) -> TokenizerBundle:
    # A bundle of its own tokenizer (the cache is per tokenizer), for hit counts that other
    # tests do not touch.
    return dataclasses.replace(bundle, tokenizer=Tokenizer.from_str(bundle.tokenizer.to_str()))


@pytest.mark.parametrize("source", ["builtin", "mistral"])
@pytest.mark.parametrize("seed", range(4))
def test_encode_prompt_gives_the_full_encodes_ids_on_multi_turn_chats(source, seed, mistral):
    bundle = _fresh(load_tokenizer(BUILTIN_TOKENIZER) if source == "builtin" else mistral)
    rng = random.Random(seed)
    for messages in _chat_turns(rng, turns=8, words=60):
        prompt = render_chat_template(bundle, messages)
        assert bundle.encode_prompt(prompt) == bundle.encode(prompt)
    stats = bundle.prefix_cache.stats
    # The first turn is too short to keep (min_chars). ChatML's prompt ends with the generation
    # prompt's <|im_start|>, so each turn after the second hits the one before; Mistral's ends
    # in text after the last reply's </s>, so a turn hits the one before the one before.
    assert stats.hits >= (6 if source == "builtin" else 5)
    assert stats.hit_tokens > 0


def test_short_prompts_are_encoded_whole_and_not_kept(mistral):
    bundle = _fresh(mistral)
    prompt = render_chat_template(bundle, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                                           {"role": "user", "content": "again"}])
    assert bundle.encode_prompt(prompt) == bundle.encode(prompt)
    assert bundle.prefix_cache.stats.entries == 0 and bundle.prefix_cache.stats.misses == 0


def _naive_split_differs(tokenizer: Tokenizer, token: str, left: str, right: str) -> bool:
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    return encode(left + token + right) != encode(left + token) + encode(right)


def test_no_cache_where_a_piece_depends_on_its_offset(mistral):
    """Metaspace with prepend_scheme="first" (transformers' non-legacy Llama and Mistral
    tokenizers) prefixes only the text's first piece: a split would add a "▁"."""
    tokenizer = Tokenizer.from_str(mistral.tokenizer.to_str())
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    assert _naive_split_differs(tokenizer, "</s>", "a b", "c d")
    assert split_boundaries(tokenizer) == frozenset()
    bundle = TokenizerBundle(tokenizer=tokenizer, eos_token_ids=[2], bos_token="<s>", eos_token="</s>",
                             chat_template=CHATML_TEMPLATE, vocab_size=tokenizer.get_vocab_size())
    assert bundle.prefix_cache is None
    prompt = "</s>".join(["some text here " * 30] * 4) + " tail"
    assert bundle.encode_prompt(prompt) == bundle.encode(prompt)


def test_tokens_that_strip_or_overlap_across_the_boundary_are_not_boundaries():
    tokenizer = Tokenizer.from_str(load_tokenizer(BUILTIN_TOKENIZER).tokenizer.to_str())
    tokenizer.add_special_tokens([
        AddedToken("<strip>", special=True, normalized=False, rstrip=True),  # eats the spaces after it
        AddedToken("<a>", special=True, normalized=False),
        AddedToken("<a>b", special=True, normalized=False),  # "<a>" then "b" is one token
        AddedToken("<word>", special=True, normalized=False, single_word=True),
        AddedToken("<norm>", special=True, normalized=True),
    ])
    assert _naive_split_differs(tokenizer, "<strip>", "x", "  y")
    assert _naive_split_differs(tokenizer, "<a>", "x", "b")
    assert split_boundaries(tokenizer) == {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<a>b"}


def test_no_cache_with_truncation_or_padding():
    tokenizer = Tokenizer.from_str(load_tokenizer(BUILTIN_TOKENIZER).tokenizer.to_str())
    tokenizer.enable_truncation(128)
    assert split_boundaries(tokenizer) == frozenset()


def test_memory_is_bounded_by_entries_and_bytes_least_recently_used_first():
    tokenizer = load_tokenizer(BUILTIN_TOKENIZER).tokenizer
    cache = PrefixTokenCache(tokenizer, split_boundaries(tokenizer), min_chars=16, max_entries=3, max_bytes=1 << 20)
    prompts = [f"<|im_start|>user\n{'word ' * 20}{i}<|im_end|>\n<|im_start|>assistant\n" for i in range(5)]
    for p in prompts:
        assert cache.encode(p) == tokenizer.encode(p).ids
    assert cache.stats.entries == 3
    assert cache.encode(prompts[0] + "more") == tokenizer.encode(prompts[0] + "more").ids
    assert cache.stats.hits == 0  # the first ones were evicted
    assert cache.encode(prompts[4] + "more") == tokenizer.encode(prompts[4] + "more").ids
    assert cache.stats.hits == 1

    small = PrefixTokenCache(tokenizer, split_boundaries(tokenizer), min_chars=16, max_bytes=4096)
    for i in range(50):
        small.encode(prompts[0].replace("user", f"user{i}"))
        assert small.stats.bytes <= 4096
    assert 0 < small.stats.entries < 50


def test_the_prompt_pools_processes_reuse_prefixes_with_the_loops_ids(mistral_tokenizer_dir):
    """Two chats at once through two prompt processes, in turn order swapped each turn (so the
    least busy process alone would alternate them): every turn's ids are the loop's, and each
    chat's turns go to one process (`chat_affinity`), whose cache holds its earlier turns."""
    card = ModelCard(served_name="m", tokenizer=str(mistral_tokenizer_dir), context_length=1 << 20, block_size=16,
                     kv_capacity_blocks=8)
    bundle = load_tokenizer(str(mistral_tokenizer_dir))
    model = ServedModel("m", card, bundle, router=None, tokenizer_source=str(mistral_tokenizer_dir))
    pool = prompt_pool.PromptPool(2, min_chars=0)
    turns = 5
    chats = [_chat_turns(random.Random(seed), turns=turns, words=80) for seed in range(2)]

    async def turn_of(messages: list[dict]) -> None:
        req = msgspec.convert({"model": "m", "messages": messages}, ChatCompletionRequest)
        assert await pool.render_and_encode_chat(model, req) == render_and_encode_chat(model, req)

    async def run() -> int:
        try:
            for turn in range(turns):
                order = chats if turn % 2 else chats[::-1]
                await asyncio.gather(*(turn_of(chat[turn]) for chat in order))
            loop = asyncio.get_running_loop()
            hits = await asyncio.gather(*(
                loop.run_in_executor(pool._executor_of(lane), pool_prefix_cache_hits, str(mistral_tokenizer_dir),
                                     model.encoded_card)
                for lane in pool._lanes
            ))
            return sum(hits)
        finally:
            await pool.close()

    # Mistral's prompts hit from the third turn on (see the multi-turn test above).
    assert asyncio.run(run()) == len(chats) * (turns - 2)


def test_a_chat_template_override_shares_its_tokenizers_cache(mistral):
    bundle = _fresh(mistral)
    assert bundle.with_chat_template("{{ messages[0]['content'] }}").prefix_cache is bundle.prefix_cache
