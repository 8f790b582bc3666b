"""A dynamo request as TensorRT-LLM `SamplingParams` keyword arguments.

`SamplingParams` below mirrors the fields of `tensorrt_llm/sampling_params.py:SamplingParams`
(a dataclass, as of the releases the README names) that this adapter may set, with the same
defaults; building it from the kwargs fails on any name TensorRT-LLM's class would not take.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest

from dynamo_core.protocols.engine import (
    GuidedDecoding,
    OutputOptions,
    PreprocessedRequest,
    SamplingOptions,
    StopConditions,
)
from dynamo_trtllm.sampling import NO_END_ID, UnsupportedRequestError, sampling_kwargs


@dataclass
class SamplingParams:
    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    n: int = 1
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_p: float | None = None
    logprobs: int | None = None
    ignore_eos: bool = False
    detokenize: bool = True


def request(**kwargs) -> PreprocessedRequest:
    # As the gateway makes them: the model's EOS ids (2, 3) first, then the request's own (7).
    stop = kwargs.pop("stop", StopConditions(max_tokens=16, stop_token_ids=[2, 3, 7]))
    return PreprocessedRequest(request_id="r", model="m", token_ids=[5, 6], stop=stop, **kwargs)


def test_end_id_is_explicit_and_the_other_stop_ids_follow():
    params = SamplingParams(**sampling_kwargs(request()))
    assert (params.end_id, params.pad_id) == (2, 2)  # skip_tokenizer_init needs it
    assert params.stop_token_ids == [3, 7]  # the second EOS and the stop token id, not end_id again
    assert params.max_tokens == 16 and params.n == 1 and params.detokenize is False
    assert params.include_stop_str_in_output is True and params.ignore_eos is False
    assert params.min_tokens is None and params.logprobs is None and params.temperature is None


def test_ignore_eos_gives_no_end_id_and_keeps_the_requests_own_stop_ids():
    # TensorRT-LLM's ignore_eos would also drop stop token ids: end_id -1 says "ignore EOS" alone.
    params = SamplingParams(**sampling_kwargs(request(stop=StopConditions(max_tokens=4, stop_token_ids=[7], ignore_eos=True))))
    assert params.end_id == NO_END_ID and params.ignore_eos is False and params.stop_token_ids == [7]
    params = SamplingParams(**sampling_kwargs(request(stop=StopConditions(max_tokens=4, ignore_eos=True))))
    assert params.end_id == NO_END_ID and params.ignore_eos is True and params.stop_token_ids is None


def test_a_model_without_eos_has_no_end_id():
    req = PreprocessedRequest(request_id="r", model="m", token_ids=[1], stop=StopConditions(max_tokens=3))
    params = SamplingParams(**sampling_kwargs(req))
    assert params.end_id == NO_END_ID and params.stop_token_ids is None


def test_sampling_options_and_logprobs_pass_through():
    sampling = SamplingOptions(temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, seed=11, presence_penalty=0.1,
                               frequency_penalty=0.2, repetition_penalty=1.1)
    params = SamplingParams(**sampling_kwargs(request(sampling=sampling, output=OutputOptions(logprobs=0))))
    assert (params.temperature, params.top_p, params.top_k, params.min_p, params.seed) == (0.7, 0.9, 40, 0.05, 11)
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (0.1, 0.2, 1.1)
    assert params.logprobs == 1  # TensorRT-LLM's 0 means none; 1 is the sampled token's


def test_a_decode_workers_extra_token_counts_toward_max_and_min_tokens():
    req = request(stop=StopConditions(max_tokens=9, min_tokens=3, stop_token_ids=[2]))
    params = SamplingParams(**sampling_kwargs(req, extra_tokens=1))
    assert (params.max_tokens, params.min_tokens) == (10, 4)


@pytest.mark.parametrize("changes, text", [({"guided": GuidedDecoding(regex="[0-9]+")}, "structured output")])
def test_what_the_adapter_cannot_express_is_refused(changes, text):
    with pytest.raises(UnsupportedRequestError, match=text):
        sampling_kwargs(request(**changes))


def test_every_sampling_option_has_a_sampling_params_field_of_its_name():
    names = {f.name for f in fields(SamplingParams)}
    assert set(SamplingOptions.__struct_fields__) <= names
