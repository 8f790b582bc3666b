"""vLLM's `RequestOutput` deltas as dynamo `EngineOutput` deltas.

Works on anything shaped like vLLM's outputs (duck typing), so it is tested without vLLM:
`out.outputs[0]` has `token_ids`, `finish_reason`, `logprobs`; `out` has `prompt_token_ids`
and `num_cached_tokens`. With `RequestOutputKind.DELTA` each output carries only the tokens
(and logprob positions) new since the previous one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from dynamo_core.protocols.engine import EngineOutput, FinishReason, TokenLogprob

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.CANCELLED,
    "error": FinishReason.ERROR,
}


class _Logprob(Protocol):
    logprob: float


class _Completion(Protocol):
    token_ids: Sequence[int]
    finish_reason: str | None
    logprobs: Sequence[Mapping[int, _Logprob]] | None


class _RequestOutput(Protocol):
    outputs: Sequence[_Completion]
    prompt_token_ids: Sequence[int] | None
    num_cached_tokens: int | None
    # One mapping per prompt token (None for the first), when prompt logprobs were asked.
    prompt_logprobs: Sequence[Mapping[int, _Logprob] | None] | None


def finish_reason(reason: str | None) -> FinishReason | None:
    if reason is None:
        return None
    # A reason added by a later vLLM is still an end: report it as a normal stop.
    return _FINISH_REASONS.get(reason, FinishReason.STOP)


def _positions(logprobs: Iterable[Mapping[int, Any]], count: int) -> list[Mapping[int, Any]]:
    positions = list(logprobs)  # FlatLogprobs iterates as one mapping per position
    return positions[-count:] if count else []


def token_logprobs(
    token_ids: Sequence[int], positions: Sequence[Mapping[int, Any]], top: int
) -> tuple[list[float], list[list[TokenLogprob]]]:
    """Each sampled token's logprob and the `top` most likely alternatives at its position.

    vLLM's mapping at a position holds the sampled token (with its rank) and the top-k tokens;
    the sampled token is only among the alternatives when its rank is within the top-k.
    """
    chosen: list[float] = []
    alternatives: list[list[TokenLogprob]] = []
    for token, position in zip(token_ids, positions):
        entry = position.get(token)
        chosen.append(float(entry.logprob) if entry is not None else float("-inf"))
        best = sorted(position.items(), key=lambda item: item[1].logprob, reverse=True)[:top]
        alternatives.append([TokenLogprob(int(t), float(lp.logprob)) for t, lp in best])
    return chosen, alternatives


def prompt_token_logprobs(
    prompt: Sequence[int], positions: Sequence[Mapping[int, Any] | None], top: int
) -> tuple[list[float | None], list[list[TokenLogprob]]]:
    """vLLM's `prompt_logprobs` as ours: the first token has none (nothing predicts it)."""
    chosen: list[float | None] = [None]
    alternatives: list[list[TokenLogprob]] = [[]]
    if len(prompt) > 1:
        more_chosen, more_alternatives = token_logprobs(prompt[1:], [p or {} for p in positions[1:]], top)
        chosen += more_chosen
        alternatives += more_alternatives
    return chosen, alternatives


def engine_output(
    out: _RequestOutput, *, first: bool, top_logprobs: int | None, top_prompt_logprobs: int | None = None
) -> EngineOutput:
    """One dynamo delta from one vLLM delta. `first`: the request's first delta carries the
    prompt and prefix-cache token counts (and the prompt's logprobs, when asked).
    `top_logprobs` / `top_prompt_logprobs`: None when not asked."""
    completion = out.outputs[0]
    token_ids = list(completion.token_ids)
    output = EngineOutput(token_ids=token_ids, finish_reason=finish_reason(completion.finish_reason))
    if first:
        output.prompt_tokens = len(out.prompt_token_ids or ())
        output.cached_tokens = out.num_cached_tokens or 0
        prompt_positions = getattr(out, "prompt_logprobs", None)
        if top_prompt_logprobs is not None and prompt_positions is not None:
            output.prompt_logprobs, output.prompt_top_logprobs = prompt_token_logprobs(
                list(out.prompt_token_ids or ()), list(prompt_positions), top_prompt_logprobs)
    if top_logprobs is not None and token_ids and completion.logprobs is not None:
        chosen, alternatives = token_logprobs(token_ids, _positions(completion.logprobs, len(token_ids)), top_logprobs)
        output.logprobs = chosen
        output.top_logprobs = alternatives
    return output
