"""Loading tokenizers: the converted sentencepiece model, the built-in one, HF-format directories."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
import sentencepiece

from dynamo_core.frontend.chat_template import render_chat_template
from dynamo_core.tokenizer import BUILTIN_TOKENIZER, TokenizerBundle, TokenizerLoadError, load_tokenizer
from tokenizer_fixture import mistral_sentencepiece_model

SENTENCEPIECE_SAMPLES = [
    "Hello world",
    "The quick brown fox, jumps; over 12345 lazy dogs!?",
    "don't stop-me (now) #$%^&* 3.14159",
    "  two leading spaces",
    "trailing spaces  ",
    "a  b   c    d",
    " ",
    "lines\nand\n\nblank lines\twith a tab\r\n",
    "Grüße, ça va? naïve élan",
    "世界 日本語のテキスト 한국어",
    "😀👍🏽 🧑‍🚀 emoji with modifiers",
    "<0x41> is text, not a byte piece",
    "",
]

UTF8_SAMPLES = SENTENCEPIECE_SAMPLES + ["\x00\x01\x7f control bytes", "﷽ ǅ ﬁ ＡＢＣ", "\U0010ffff last code point"]


@pytest.fixture(scope="module")
def sp() -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_file=str(mistral_sentencepiece_model()))


@pytest.fixture(scope="module")
def mistral(mistral_tokenizer_dir: Path) -> TokenizerBundle:
    return load_tokenizer(str(mistral_tokenizer_dir))


def _write(directory: Path, name: str, content: object) -> None:
    (directory / name).write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A directory with the built-in tokenizer's tokenizer.json and nothing else."""
    load_tokenizer(BUILTIN_TOKENIZER).tokenizer.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


# --- the converted sentencepiece tokenizer ---------------------------------------------------


@pytest.mark.parametrize("text", SENTENCEPIECE_SAMPLES)
def test_converted_mistral_tokenizer_gives_sentencepiece_ids_and_decodes_back(mistral, sp, text):
    assert mistral.encode(text) == sp.encode(text)
    assert mistral.encode(text, add_special_tokens=True) == [sp.bos_id(), *sp.encode(text)]
    assert mistral.decode(mistral.encode(text)) == text == sp.decode(sp.encode(text))


def test_mistral_directory_yields_bos_eos_template_and_vocab(mistral):
    assert (mistral.bos_token, mistral.eos_token) == ("<s>", "</s>")
    assert mistral.eos_token_ids == [2]  # </s>, also named by config.json
    assert mistral.add_bos_token is True
    assert mistral.vocab_size == 32000
    assert "[INST]" in mistral.chat_template
    assert mistral.id_to_token(1) == "<s>" and mistral.special_token_ids == {0, 1, 2}


# --- the built-in tokenizer --------------------------------------------------------------------


@pytest.mark.parametrize("text", UTF8_SAMPLES)
def test_builtin_tokenizer_is_one_token_per_utf8_byte_and_round_trips(text):
    bundle = load_tokenizer(BUILTIN_TOKENIZER)
    ids = bundle.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert bundle.decode(ids) == text
    assert bundle.encode(text, add_special_tokens=True) == ids  # no BOS


def test_builtin_tokenizer_has_chatml_special_tokens_that_end_generation():
    bundle = load_tokenizer(BUILTIN_TOKENIZER)
    im_start, im_end, eot = (bundle.tokenizer.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"))
    assert bundle.encode("<|im_start|>user\nhi<|im_end|>") == [im_start, *b"user\nhi", im_end]
    assert bundle.eos_token_ids == [im_end, eot] and bundle.eos_token == "<|im_end|>"
    assert bundle.bos_token is None and bundle.add_bos_token is False
    assert bundle.vocab_size == 259 and bundle.special_token_ids == {im_start, im_end, eot}
    assert bundle.decode([*b"ok", im_end]) == "ok"
    assert bundle.decode([*b"ok", im_end], skip_special_tokens=False) == "ok<|im_end|>"
    assert "<|im_start|>" in bundle.chat_template


def test_load_tokenizer_shares_one_bundle_per_source(mistral_tokenizer_dir):
    assert load_tokenizer(BUILTIN_TOKENIZER) is load_tokenizer(BUILTIN_TOKENIZER)
    assert load_tokenizer(str(mistral_tokenizer_dir)) is load_tokenizer(str(mistral_tokenizer_dir))


# --- reading HF-format directories -------------------------------------------------------------


def test_config_tokens_may_be_added_token_dicts_and_generation_config_adds_eos_ids(model_dir):
    _write(model_dir, "tokenizer_config.json", {
        "bos_token": {"content": "<|im_start|>", "lstrip": False, "special": True},
        "eos_token": {"content": "<|im_end|>", "rstrip": False},
        "chat_template": "{{ bos_token }}config",
    })
    _write(model_dir, "generation_config.json", {"eos_token_id": [258, 256]})
    _write(model_dir, "config.json", {"eos_token_id": 10})
    bundle = load_tokenizer(str(model_dir))
    assert (bundle.bos_token, bundle.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert bundle.eos_token_ids == [258, 256, 10]
    assert bundle.chat_template == "{{ bos_token }}config"


def test_chat_template_jinja_file_takes_precedence_over_the_config(model_dir):
    _write(model_dir, "tokenizer_config.json", {"chat_template": "from the config"})
    _write(model_dir, "chat_template.jinja", "from the file\n")
    assert load_tokenizer(str(model_dir)).chat_template == "from the file\n"


def test_named_chat_templates_use_the_default_one_and_tool_use_with_tools(model_dir):
    _write(model_dir, "tokenizer_config.json", {"chat_template": [
        {"name": "tool_use", "template": "tools: {{ tools | length }}"},
        {"name": "default", "template": "plain"},
    ]})
    bundle = load_tokenizer(str(model_dir))
    assert bundle.chat_template == "plain"
    messages = [{"role": "user", "content": "hi"}]
    assert render_chat_template(bundle, messages) == "plain"
    assert render_chat_template(bundle, messages, tools=[{"type": "function", "function": {"name": "f"}}]) == "tools: 1"


def test_a_deployments_chat_template_replaces_the_tool_use_one_on_the_loop_and_in_the_pool(model_dir):
    """A `--chat-template` override serves requests with tools too, whether the prompt is
    rendered on the frontend's loop or (long prompts) in a prompt process."""
    from dynamo_core.frontend import prompt_pool
    from dynamo_core.protocols.discovery import ModelCard

    _write(model_dir, "tokenizer_config.json", {"chat_template": [
        {"name": "tool_use", "template": "model's tools"},
        {"name": "default", "template": "model's plain"},
    ]})
    tools = [{"type": "function", "function": {"name": "f"}}]
    messages = [{"role": "user", "content": "hi"}]
    on_loop = load_tokenizer(str(model_dir)).with_chat_template("override")
    card = ModelCard(served_name="m", tokenizer=str(model_dir), context_length=64, block_size=16,
                     kv_capacity_blocks=8, chat_template="override")
    in_pool = prompt_pool._worker_model(str(model_dir), msgspec.msgpack.encode(card)).tokenizer
    for bundle in (on_loop, in_pool):
        assert render_chat_template(bundle, messages, tools=tools) == "override"
    assert load_tokenizer(str(model_dir)).with_chat_template(None).chat_template == "model's plain"


def test_special_tokens_map_overrides_the_config_token_names(model_dir):
    _write(model_dir, "tokenizer_config.json", {"eos_token": "<|endoftext|>"})
    _write(model_dir, "special_tokens_map.json", {"eos_token": {"content": "<|im_end|>"}})
    bundle = load_tokenizer(str(model_dir))
    assert bundle.eos_token == "<|im_end|>" and bundle.eos_token_ids == [258]


def test_add_bos_token_follows_the_post_processor_when_the_config_is_silent(mistral_tokenizer_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((mistral_tokenizer_dir / "tokenizer.json").read_bytes())
    _write(tmp_path, "tokenizer_config.json", {"bos_token": "<s>", "eos_token": "</s>"})
    assert load_tokenizer(str(tmp_path)).add_bos_token is True


def test_directory_without_config_files_still_loads_without_template(model_dir):
    bundle = load_tokenizer(str(model_dir))
    assert bundle.chat_template is None and bundle.eos_token_ids == [] and bundle.bos_token is None
    assert bundle.decode(bundle.encode("still works")) == "still works"


# --- errors ------------------------------------------------------------------------------------


def test_missing_directory_or_tokenizer_json_is_a_tokenizer_load_error(tmp_path):
    with pytest.raises(TokenizerLoadError, match="not a directory"):
        load_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(TokenizerLoadError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path))


def test_malformed_tokenizer_json_is_a_tokenizer_load_error(tmp_path):
    _write(tmp_path, "tokenizer.json", {"model": {"type": "NoSuchModel"}})
    with pytest.raises(TokenizerLoadError, match="not a valid tokenizer"):
        load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_malformed_config_is_a_tokenizer_load_error_naming_the_file(model_dir, content):
    _write(model_dir, "tokenizer_config.json", content)
    with pytest.raises(TokenizerLoadError, match="tokenizer_config.json"):
        load_tokenizer(str(model_dir))


def test_failed_load_is_not_cached(model_dir):
    _write(model_dir, "tokenizer_config.json", "{broken")
    with pytest.raises(TokenizerLoadError):
        load_tokenizer(str(model_dir))
    _write(model_dir, "tokenizer_config.json", {"eos_token": "<|im_end|>"})
    assert load_tokenizer(str(model_dir)).eos_token_ids == [258]
