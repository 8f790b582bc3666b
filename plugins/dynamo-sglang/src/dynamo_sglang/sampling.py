"""A dynamo `PreprocessedRequest` as SGLang's sampling parameters and request fields.

SGLang takes sampling parameters as a dict (`sglang/srt/sampling/sampling_params.py`) and the
logprob options as fields of the request itself (`return_logprob`, `top_logprobs_num`). Only
what the request sets is passed, so SGLang's own defaults apply to the rest. The worker runs
SGLang with `skip_tokenizer_init` (token ids in and out; the gateway detokenizes once, for every
engine alike), so stop strings never reach it (the gateway applies them to text) and SGLang
refuses `min_new_tokens` (it needs the tokenizer's EOS): such a request is refused here with a
clear message rather than deep inside SGLang.
"""

from __future__ import annotations

from typing import Any

from dynamo_core.protocols.engine import GuidedDecoding, PreprocessedRequest

# SamplingOptions field -> SGLang sampling-parameter key.
_SAMPLING_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "sampling_seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
}


class UnsupportedRequestError(ValueError):
    """A request asks for something this engine adapter cannot express."""


def sampling_params(request: PreprocessedRequest) -> dict[str, Any]:
    """SGLang's `sampling_params` dict for this request."""
    sampling, stop = request.sampling, request.stop
    if stop.min_tokens:
        raise UnsupportedRequestError(
            f"min_tokens={stop.min_tokens} is not supported by the sglang engine "
            "(SGLang needs its own tokenizer for it, and dynamo feeds it token ids)")
    params: dict[str, Any] = {"max_new_tokens": stop.max_tokens, "ignore_eos": stop.ignore_eos}
    if stop.stop_token_ids:
        params["stop_token_ids"] = list(stop.stop_token_ids)
    for ours, theirs in _SAMPLING_FIELDS.items():
        value = getattr(sampling, ours)
        if value is not None:
            params[theirs] = value
    if sampling.top_k == -1 or sampling.top_k == 0:
        params.pop("top_k")  # "no limit": SGLang's default is the whole vocabulary
    params.update(_guided_params(request.guided))
    return params


def logprob_fields(request: PreprocessedRequest) -> dict[str, Any]:
    """`async_generate` keyword arguments for logprobs: none unless the request asks for them."""
    top = request.output.logprobs
    if top is None:
        return {}
    # logprob_start_len=-1: logprobs of the output only, not of the prompt.
    return {"return_logprob": True, "top_logprobs_num": top, "logprob_start_len": -1}


def _guided_params(guided: GuidedDecoding | None) -> dict[str, Any]:
    """SGLang's grammar constraint: `json_schema` (a JSON string), `regex` or `ebnf`."""
    import json

    if guided is None:
        return {}
    if guided.json_schema is not None:
        return {"json_schema": json.dumps(guided.json_schema)}
    if guided.json_object:
        return {"json_schema": json.dumps({"type": "object"})}
    if guided.regex is not None:
        return {"regex": guided.regex}
    if guided.choice is not None:
        # One of the strings, exactly: an EBNF alternation of quoted literals.
        return {"ebnf": "root ::= " + " | ".join(json.dumps(c) for c in guided.choice)}
    if guided.grammar is not None:
        return {"ebnf": guided.grammar}
    return {}
