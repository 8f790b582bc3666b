"""Token texts and bytes in OpenAI's logprobs shapes, for both kinds of tokenizer we ship."""

from __future__ import annotations

import msgspec

from dynamo_core.frontend.logprobs import TokenTexts
from dynamo_core.frontend.stages import ChoiceDelta
from dynamo_core.protocols.engine import TokenLogprob
from dynamo_core.tokenizer import BUILTIN_TOKENIZER, load_tokenizer

BYTES = load_tokenizer(BUILTIN_TOKENIZER)


def test_sentencepiece_pieces_keep_their_space_and_byte_tokens_their_byte(mistral_tokenizer_dir):
    bundle = load_tokenizer(str(mistral_tokenizer_dir))
    texts = TokenTexts(bundle)
    world = bundle.encode(" world")[-1]
    assert bundle.id_to_token(world) == "▁world"
    assert texts(world) == (" world", list(b" world"))
    byte = bundle.tokenizer.token_to_id("<0xE4>")  # first byte of a CJK character
    assert texts(byte) == ("\ufffd", [0xE4])
    eos = bundle.eos_token_ids[0]
    assert texts(eos) == ("</s>", list(b"</s>"))


def test_byte_level_symbols_map_back_to_their_bytes():
    texts = TokenTexts(BYTES)
    space = BYTES.encode(" ")[0]
    assert texts(space) == (" ", [0x20])
    first_of_euro = BYTES.encode("€")[0]
    assert texts(first_of_euro) == ("\ufffd", [0xE2])


def test_chat_and_completion_shapes_clamp_minus_infinity():
    texts = TokenTexts(BYTES)
    a, b = BYTES.encode("ab")
    delta = ChoiceDelta(0, "ab", None, [a, b], [-0.5, float("-inf")],
                        [[TokenLogprob(a, -0.5), TokenLogprob(b, -2.0)], [TokenLogprob(a, -0.1)]])
    chat = msgspec.to_builtins(texts.chat(delta))
    assert chat == [
        {"token": "a", "logprob": -0.5, "bytes": [97],
         "top_logprobs": [{"token": "a", "logprob": -0.5, "bytes": [97]}, {"token": "b", "logprob": -2.0, "bytes": [98]}]},
        {"token": "b", "logprob": -9999.0, "bytes": [98], "top_logprobs": [{"token": "a", "logprob": -0.1, "bytes": [97]}]},
    ]
    completion, offset = texts.completion(delta, offset=3)
    assert msgspec.to_builtins(completion) == {
        "tokens": ["a", "b"], "token_logprobs": [-0.5, -9999.0],
        "top_logprobs": [{"a": -0.5, "b": -2.0}, {"a": -0.1}], "text_offset": [3, 4],
    }
    assert offset == 5
    # Offsets never run past the delta's text (here the text lost a token's worth).
    short = ChoiceDelta(0, "a", None, [a, b], [-0.5, -0.5])
    assert texts.completion(short, offset=0)[0].text_offset == [0, 1]
    assert texts.completion(short, offset=0)[1] == 1
