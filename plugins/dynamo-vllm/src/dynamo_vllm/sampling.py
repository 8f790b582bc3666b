"""A dynamo `PreprocessedRequest` as the keyword arguments of vLLM's `SamplingParams`.

Only what the request sets is passed, so vLLM's own defaults apply to the rest. Stop strings
never reach the engine (the gateway applies them to detokenized text); stop token ids do, and
the gateway already counts EOS among them unless `ignore_eos` is set. vLLM is told not to
detokenize: the gateway does that once, incrementally, for every engine alike.
"""

from __future__ import annotations

from typing import Any

from dynamo_core.protocols.engine import PreprocessedRequest

# SamplingOptions field -> SamplingParams keyword (same names in both today; kept explicit so
# a rename on either side shows up here and in the tests).
_SAMPLING_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
}


def sampling_kwargs(request: PreprocessedRequest) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams` (the caller adds `output_kind=DELTA`)."""
    sampling, stop = request.sampling, request.stop
    # `n` is always 1: the gateway fans choices out into one request each.
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": stop.max_tokens,
        "min_tokens": stop.min_tokens,
        "ignore_eos": stop.ignore_eos,
        "detokenize": False,
    }
    if stop.stop_token_ids:
        kwargs["stop_token_ids"] = list(stop.stop_token_ids)
    for ours, theirs in _SAMPLING_FIELDS.items():
        value = getattr(sampling, ours)
        if value is not None:
            kwargs[theirs] = value
    if request.output.logprobs is not None:
        kwargs["logprobs"] = request.output.logprobs
    return kwargs


def structured_output_kwargs(request: PreprocessedRequest) -> dict[str, Any]:
    """Keyword arguments for vLLM's `StructuredOutputsParams`, or {} when unconstrained."""
    guided = request.guided
    if guided is None:
        return {}
    if guided.json_schema is not None:
        return {"json": guided.json_schema}
    if guided.json_object:
        return {"json_object": True}
    if guided.regex is not None:
        return {"regex": guided.regex}
    if guided.choice is not None:
        return {"choice": list(guided.choice)}
    if guided.grammar is not None:
        return {"grammar": guided.grammar}
    return {}
