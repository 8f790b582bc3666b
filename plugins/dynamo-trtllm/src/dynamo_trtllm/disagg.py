"""Disaggregated prefill/decode with TensorRT-LLM's `DisaggregatedParams`, in dynamo's terms.

TensorRT-LLM moves the KV itself, with the cache transceiver of both workers
(`cache_transceiver_config`, backend NIXL by default here; `options.py`):

1. A prefill worker's request runs with `DisaggregatedParams(request_type="context_only")`
   (the PyTorch backend forces `max_tokens` 1). Its `outputs[0].disaggregated_params` come back
   filled from the C++ `ContextPhaseParams`: `first_gen_tokens`, `ctx_request_id`,
   `opaque_state` (bytes: where the transceiver holds the KV), `draft_tokens`, and in later
   releases `disagg_request_id`, `ctx_dp_rank`, `ctx_info_endpoint`, and `first_gen_log_probs`
   when the request asked for logprobs. They travel as a `ContextState` in
   `KvTransferParams.engine_params`, `opaque_state` as bytes in the msgpack frames of the
   request plane, the logprobs as `[token_id, logprob, rank]` triples, with the prefill
   worker's cached-token count beside them.
2. The frontend sends the first token to the client and the decode worker the prompt plus that
   token (`max_tokens` one less). TensorRT-LLM's generation-only request wants the *prompt*
   with `DisaggregatedParams(request_type="generation_only", ...)` carrying the first token, and
   its output starts with that token: so the decode side strips the token from the prompt,
   asks for one token more and skips the first output token (`DecodePlan`).
3. The transceiver frees the prefill side's KV once sent (or after its
   `kv_transfer_timeout_ms`), so `release_kv` has nothing to do.

Pure functions over plain data: unit-tested without TensorRT-LLM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from dynamo_core.protocols.engine import KvPullReport, KvTransferParams, PreprocessedRequest

CONTEXT_ONLY = "context_only"
GENERATION_ONLY = "generation_only"


class FirstGenCandidate(msgspec.Struct, array_like=True):
    """One alternative at a first-token position, as `first_gen_log_probs` holds it
    (`{token_id: Logprob(logprob, rank)}`), in a shape msgpack carries (no int-keyed maps)."""

    token_id: int
    logprob: float
    rank: int | None = None


class ContextState(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What a context-only request answered, carried to decode: `DisaggregatedParams` fields,
    plus the prefill worker's own count of cached prompt tokens (`cached_tokens`, ours)."""

    first_gen_tokens: list[int]
    ctx_request_id: int | None = None
    opaque_state: bytes | None = None
    draft_tokens: list[int] | None = None
    disagg_request_id: int | None = None
    ctx_dp_rank: int | None = None
    ctx_info_endpoint: Any = None  # a str in the releases read; kept as given
    # Per first token: its alternatives (the verbose format) or its logprob (the simple one).
    # The decode worker's output repeats the first token, and TensorRT-LLM takes that token's
    # logprob from here; without it a request that asks for logprobs has one logprob too few.
    first_gen_log_probs: list[list[FirstGenCandidate] | float] | None = None
    # The generation-only request reports its whole transferred prompt as cached; the context
    # worker's count is the one that says how much of the prompt a cache held.
    cached_tokens: int = 0


# The fields a generation-only `DisaggregatedParams` is built from (all but our own).
_TRTLLM_FIELDS = tuple(f for f in ContextState.__struct_fields__ if f != "cached_tokens")


def _first_gen_log_probs(positions: Any) -> list[list[FirstGenCandidate] | float] | None:
    if not positions:
        return None
    out: list[list[FirstGenCandidate] | float] = []
    for position in positions:
        if isinstance(position, Mapping):
            out.append([FirstGenCandidate(int(token), float(lp.logprob), getattr(lp, "rank", None))
                        for token, lp in position.items()])
        else:
            out.append(float(position))
    return out


def context_state(params: Any, cached_tokens: int = 0) -> ContextState | None:
    """The state in a prefill's `outputs[0].disaggregated_params`; None when it has none."""
    if params is None or not getattr(params, "first_gen_tokens", None):
        return None
    values = {name: getattr(params, name, None) for name in _TRTLLM_FIELDS}
    values["first_gen_tokens"] = [int(t) for t in values["first_gen_tokens"]]
    if values["draft_tokens"] is not None:
        values["draft_tokens"] = [int(t) for t in values["draft_tokens"]]
    if values["opaque_state"] is not None:
        values["opaque_state"] = bytes(values["opaque_state"])
    values["first_gen_log_probs"] = _first_gen_log_probs(values["first_gen_log_probs"])
    return ContextState(**values, cached_tokens=cached_tokens)


def generation_params_kwargs(state: ContextState, logprob: Any = None) -> dict[str, Any]:
    """`DisaggregatedParams(**kwargs)` for the generation-only request. Only the fields set are
    passed, so that a release without the later fields still accepts them. `logprob`: the
    class the first-token alternatives are rebuilt as (`tensorrt_llm.executor.result.Logprob`);
    without it they are left out."""
    kwargs: dict[str, Any] = {"request_type": GENERATION_ONLY}
    for name in _TRTLLM_FIELDS:
        value = getattr(state, name)
        if value is not None:
            kwargs[name] = value
    positions = kwargs.pop("first_gen_log_probs", None)
    if positions is not None and (logprob is not None or not any(isinstance(p, list) for p in positions)):
        kwargs["first_gen_log_probs"] = [
            {c.token_id: logprob(logprob=c.logprob, rank=c.rank) for c in p} if isinstance(p, list) else p
            for p in positions
        ]
    return kwargs


def prefill_result(
    params: Any, *, worker_id: str, request_id: str, prompt_tokens: int, block_size: int, cached_tokens: int = 0
) -> KvTransferParams | None:
    """dynamo's transfer parameters from what a context-only request answered."""
    state = context_state(params, cached_tokens)
    if state is None:
        return None
    return KvTransferParams(
        worker_id=worker_id,
        hold_id=request_id,
        num_tokens=prompt_tokens,
        block_size=block_size,
        engine_params=msgspec.to_builtins(state, builtin_types=(bytes,)),
        decode_samples_first_token=False,
    )


@dataclass(frozen=True)
class DecodePlan:
    """How a decode request runs in TensorRT-LLM: `prompt` with `state` (None: no usable state,
    so the prompt is computed here), skipping the first `skip_tokens` output tokens."""

    prompt: list[int]
    skip_tokens: int
    state: ContextState | None
    reason: str | None = None  # why the prompt is computed here, when it is


def decode_plan(request: PreprocessedRequest) -> DecodePlan:
    disagg = request.disagg
    kv = disagg.kv if disagg is not None else None
    if kv is None or not kv.engine_params:
        return DecodePlan(list(request.token_ids), 0, None, "no TensorRT-LLM context state from the prefill worker")
    try:
        state = msgspec.convert(kv.engine_params, ContextState)
    except msgspec.ValidationError as exc:
        return DecodePlan(list(request.token_ids), 0, None, f"unusable TensorRT-LLM context state: {exc}")
    prompt, shown = request.token_ids[: kv.num_tokens], request.token_ids[kv.num_tokens:]
    if list(shown) != state.first_gen_tokens:
        # The frontend appended something else than the prefill's tokens: TensorRT-LLM would
        # continue from its own first token, not from the text the client has.
        return DecodePlan(list(request.token_ids), 0, None,
                          "the request does not continue the prefill worker's first token")
    return DecodePlan(list(prompt), len(shown), state)


def pull_report(plan: DecodePlan, block_size: int, bytes_per_block: int = 0) -> KvPullReport:
    """What a decode request pulled, as far as the adapter knows: the transceiver reads the
    prompt's blocks (their bytes as the model's shape implies) and does not say how long."""
    if plan.state is None:
        return KvPullReport(recomputed=plan.reason)
    blocks = math.ceil(len(plan.prompt) / block_size) if block_size else 0
    return KvPullReport(blocks=blocks, bytes=blocks * bytes_per_block, seconds=None)


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1, "float8_e4m3fn": 1, "nvfp4": 1}


def kv_bytes_per_block(config: dict[str, Any], block_size: int, kv_dtype: str = "auto") -> int:
    """K and V of one block across all layers, from the model's HF `config.json` and the KV
    cache dtype (`kv_cache_config.dtype`; "auto": the model's); 0 when the config does not say."""
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "") if kv_dtype == "auto" else kv_dtype
    itemsize = _DTYPE_BYTES.get(dtype.removeprefix("torch."), 0)
    return 2 * layers * kv_heads * head_dim * itemsize * block_size
