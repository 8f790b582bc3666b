"""Chat templates rendered as transformers' apply_chat_template renders them."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from dynamo_core.frontend.chat_template import (
    ChatTemplateError,
    TemplateError,
    UnsupportedContentError,
    compile_template,
    render_chat_template,
)
from dynamo_core.tokenizer import BUILTIN_TOKENIZER, TokenizerBundle, load_tokenizer

USER_HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def chatml() -> TokenizerBundle:
    return load_tokenizer(BUILTIN_TOKENIZER)


@pytest.fixture(scope="module")
def mistral(mistral_tokenizer_dir: Path) -> TokenizerBundle:
    return load_tokenizer(str(mistral_tokenizer_dir))


def render(bundle: TokenizerBundle, messages, template: str | None = None, **kwargs) -> str:
    return render_chat_template(bundle, messages, template=template, **kwargs)


# --- the models' own templates -----------------------------------------------------------------


def test_chatml_renders_each_message_and_the_generation_prompt(chatml):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 世界"}]
    assert render(chatml, messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 世界<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(chatml, messages, add_generation_prompt=False).endswith("Hi 世界<|im_end|>\n")


def test_mistral_template_places_bos_inst_markers_and_eos(mistral):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    prompt = render(mistral, messages)
    assert prompt == "<s>[INST] Be brief.\n\nHi [/INST]Hello.</s>[INST] Bye [/INST]"
    ids = mistral.encode(prompt)
    assert ids[0] == 1 and ids.count(1) == 1 and ids.count(2) == 1  # BOS and EOS are single tokens


def test_raise_exception_in_the_template_becomes_a_template_error_with_its_message(mistral):
    with pytest.raises(TemplateError, match="Conversation roles must alternate") as caught:
        render(mistral, [{"role": "assistant", "content": "first"}])
    assert caught.value.message == "Conversation roles must alternate user/assistant/user/assistant/..."
    assert isinstance(caught.value, ChatTemplateError)


# --- rendering options -------------------------------------------------------------------------


def test_continue_final_message_ends_the_prompt_right_after_its_content(chatml):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Once upon "}]
    prompt = render(chatml, messages, add_generation_prompt=False, continue_final_message=True)
    assert prompt.endswith("<|im_start|>assistant\nOnce upon ")  # trailing space kept


def test_continue_final_message_under_a_trimming_template_drops_trailing_space_too(chatml):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | trim }}\n{% endfor %}"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Once upon "}]
    prompt = render(chatml, messages, template, add_generation_prompt=False, continue_final_message=True)
    assert prompt == "[user] hi\n[assistant] Once upon"


def test_continue_final_message_fails_when_the_template_drops_the_message(chatml):
    template = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Once"}]
    with pytest.raises(ChatTemplateError, match="continue_final_message"):
        render(chatml, messages, template, add_generation_prompt=False, continue_final_message=True)


def test_continue_final_message_excludes_the_generation_prompt(chatml):
    with pytest.raises(ChatTemplateError, match="exclude each other"):
        render(chatml, USER_HI, add_generation_prompt=True, continue_final_message=True)


def test_tools_reach_the_template_as_openai_function_entries(chatml):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Wetter für Köln",
                                               "parameters": {"type": "object", "properties": {}}}}]
    template = (
        "{% for tool in tools %}{{ tool['function']['name'] }}={{ tool | tojson }}\n{% endfor %}"
        "{{ tools | tojson(indent=2, sort_keys=true) }}"
    )
    prompt = render(chatml, USER_HI, template, tools=tools)
    first, pretty = prompt.split("\n", 1)
    assert first == "get_weather=" + json.dumps(tools[0], ensure_ascii=False)  # no \\u escapes, no HTML escaping
    assert pretty == json.dumps(tools, indent=2, sort_keys=True, ensure_ascii=False)


def test_absent_tools_and_documents_are_none_to_the_template(chatml):
    template = "{{ tools is none }} {{ documents is none }}"
    assert render(chatml, USER_HI, template) == "True True"
    documents = [{"title": "Doc", "text": "Body"}]
    assert render(chatml, USER_HI, "{{ documents[0]['title'] }}", documents=documents) == "Doc"


def test_tool_call_arguments_sent_as_json_text_reach_the_template_as_objects(chatml):
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Köln"}'}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    template = (
        "{% for m in messages %}{% for call in m.tool_calls or [] %}"
        "{{ call.function.arguments.city }} {{ call.function.arguments | tojson }}{% endfor %}"
        "[{{ m.content }}]{% endfor %}"
    )
    assert render(chatml, messages, template) == '[weather?]Köln {"city": "Köln"}[][sunny]'
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Köln"}'  # caller's copy untouched


def test_tool_call_arguments_that_are_not_json_are_refused(chatml):
    messages = [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]
    with pytest.raises(ChatTemplateError, match="not valid JSON"):
        render(chatml, messages)


def test_chat_template_kwargs_reach_the_template_and_may_override_special_tokens(chatml, mistral):
    template = "{% if enable_thinking %}<think>{% endif %}{{ bos_token }}|{{ eos_token }}"
    assert render(mistral, USER_HI, template, template_kwargs={"enable_thinking": True}) == "<think><s>|</s>"
    assert render(mistral, USER_HI, template, template_kwargs={"enable_thinking": False}) == "<s>|</s>"
    assert render(mistral, USER_HI, template, template_kwargs={"eos_token": "<eot>"}) == "<s>|<eot>"
    assert render(chatml, USER_HI, "{{ bos_token is defined }}") == "False"  # as transformers: unset, not ""


def test_chat_template_kwargs_may_not_replace_the_messages(chatml):
    with pytest.raises(ChatTemplateError, match="may not set messages"):
        render(chatml, USER_HI, template_kwargs={"messages": []})


# --- content parts -----------------------------------------------------------------------------


def test_multi_part_text_content_is_joined_with_newlines(chatml):
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}, "third"]
    prompt = render(chatml, [{"role": "user", "content": parts}])
    assert "<|im_start|>user\nfirst\nsecond\nthird<|im_end|>" in prompt


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
])
def test_image_and_audio_parts_are_refused_as_text_only(chatml, part):
    messages = [{"role": "user", "content": [{"type": "text", "text": "look"}, part]}]
    with pytest.raises(UnsupportedContentError, match="accepts text only") as caught:
        render(chatml, messages)
    assert isinstance(caught.value, ChatTemplateError)


def test_missing_content_renders_as_empty_text(chatml):
    prompt = render(chatml, [{"role": "user", "content": "hi"}, {"role": "assistant"}], add_generation_prompt=False)
    assert prompt.endswith("<|im_start|>assistant\n<|im_end|>\n")


def test_the_callers_messages_are_not_changed(chatml):
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}]}, {"role": "assistant", "content": "b"}]
    before = copy.deepcopy(messages)
    render(chatml, messages, add_generation_prompt=False, continue_final_message=True)
    assert messages == before


# --- the environment ---------------------------------------------------------------------------


def test_loop_controls_strftime_now_and_generation_blocks_are_available(chatml):
    template = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m['content'] }}{% endfor %}"
        "|{{ strftime_now('%Y') | length }}|{% generation %}kept{% endgeneration %}"
    )
    messages = [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    assert render(chatml, messages, template) == "one|4|kept"


def test_trim_blocks_and_lstrip_blocks_shape_whitespace_as_in_transformers(chatml):
    template = "{% for m in messages %}\n    {% if true %}\n{{ m['content'] }}\n    {% endif %}\n{% endfor %}"
    assert render(chatml, [{"role": "user", "content": "x"}], template) == "x\n"


def test_the_sandbox_refuses_to_mutate_the_messages(chatml):
    with pytest.raises(ChatTemplateError, match="chat template failed"):
        render(chatml, USER_HI, "{{ messages.append({'role': 'x'}) }}")


def test_template_that_does_not_compile_is_a_chat_template_error(chatml):
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render(chatml, USER_HI, "{% for m in messages %}")


def test_template_failing_on_these_messages_is_a_chat_template_error(chatml):
    with pytest.raises(ChatTemplateError, match="cannot render these messages"):
        render(chatml, USER_HI, "{{ messages[0]['content'] + 1 }}")


def test_model_without_a_template_is_a_chat_template_error(chatml):
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat_template(dataclasses.replace(chatml, chat_template=None), USER_HI)


def test_each_template_is_compiled_once():
    source = "{{ messages | length }} compiled once"
    assert compile_template(source) is compile_template(source)
