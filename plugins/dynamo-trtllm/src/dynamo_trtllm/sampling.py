"""A dynamo `PreprocessedRequest` as the keyword arguments of TensorRT-LLM's `SamplingParams`.

`tensorrt_llm/sampling_params.py:SamplingParams` is a dataclass; only what the request sets is
passed, so TensorRT-LLM's defaults apply to the rest. The worker starts TensorRT-LLM with
`skip_tokenizer_init=True` (the gateway tokenizes), and then `LLM._prepare_sampling_params`
refuses a request without `end_id`: it is always given here, from the request's EOS ids. The
other EOS ids and the stop token ids go in `stop_token_ids`. Stop strings never reach the
engine (the gateway applies them to detokenized text), and nothing is detokenized there.

Under `ignore_eos` TensorRT-LLM sets `end_id` -1 and drops every stop word, stop token ids
included (`executor/base_worker.py`, where it builds the C++ request). A request that ignores
EOS but gives stop token ids is therefore sent as `end_id=-1` with those ids and
`ignore_eos=False`, which is what it asks for.

`include_stop_str_in_output=True` keeps a matched stop token in `token_ids`: without it
TensorRT-LLM cuts the stop tokens off the cumulative output when the request finishes
(`GenerationResultBase._handle_sequence`), and the gateway, like vLLM, expects the token.
"""

from __future__ import annotations

from typing import Any

from dynamo_core.protocols.engine import PreprocessedRequest, SamplingOptions

# Our sampling options carry TensorRT-LLM's names (the tests check each against its fields);
# `n` is handled apart.
_SAMPLING_FIELDS = tuple(name for name in SamplingOptions.__struct_fields__ if name != "n")

# TensorRT-LLM's own marker for "no end token" (what it uses under ignore_eos).
NO_END_ID = -1


class UnsupportedRequestError(ValueError):
    """A request asks for something this engine adapter cannot express."""


def end_id(request: PreprocessedRequest) -> int:
    """The token that ends generation: the model's (first) EOS, or none under `ignore_eos`.

    The gateway lists the model's EOS ids first among the stop token ids unless `ignore_eos`."""
    if request.stop.ignore_eos or not request.stop.stop_token_ids:
        return NO_END_ID
    return request.stop.stop_token_ids[0]


def sampling_kwargs(request: PreprocessedRequest, *, extra_tokens: int = 0) -> dict[str, Any]:
    """Keyword arguments for `tensorrt_llm.SamplingParams`.

    `extra_tokens`: output tokens TensorRT-LLM will report beyond what the request asks for (a
    decode worker's first token, which came from the prefill worker) - they count toward its
    `max_tokens` and `min_tokens` there.
    """
    sampling, stop = request.sampling, request.stop
    if request.guided is not None:
        raise UnsupportedRequestError("structured output is not supported by the trtllm engine yet")
    eos = end_id(request)
    # end_id is the first stop token id unless `ignore_eos` (see `end_id`); the rest follow.
    stop_ids = stop.stop_token_ids if stop.ignore_eos else stop.stop_token_ids[1:]
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": stop.max_tokens + extra_tokens,
        "end_id": eos,
        "pad_id": eos,
        "ignore_eos": stop.ignore_eos and not stop.stop_token_ids,
        "detokenize": False,
        "include_stop_str_in_output": True,
    }
    if stop.min_tokens:
        kwargs["min_tokens"] = stop.min_tokens + extra_tokens
    stop_ids = [t for t in dict.fromkeys(stop_ids) if t != eos]
    if stop_ids:
        kwargs["stop_token_ids"] = stop_ids
    for name in _SAMPLING_FIELDS:
        value = getattr(sampling, name)
        if value is not None:
            kwargs[name] = value
    if request.output.logprobs is not None:
        # TensorRT-LLM counts the sampled token among the `logprobs` it returns per position.
        kwargs["logprobs"] = max(1, request.output.logprobs)
    return kwargs
