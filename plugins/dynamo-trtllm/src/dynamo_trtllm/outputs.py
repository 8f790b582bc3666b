"""TensorRT-LLM's streamed results as dynamo `EngineOutput` deltas.

`generate_async(..., streaming=True)` returns one `RequestOutput` (a `GenerationResult`,
`tensorrt_llm/executor/result.py`) that `async for` hands back, updated in place, after each
step. Its `outputs[0]` is a `CompletionOutput` whose `token_ids` and `logprobs` are cumulative
(`token_ids_diff` is relative to the previous *response*, not to what this adapter emitted, so
it is not used); `finished` says the request is over and `finish_reason` why. A delta here is
whatever `token_ids` gained since the last delta emitted, so a step that adds nothing emits
nothing and a final trim of the output (stop words without `include_stop_str_in_output`) cannot
yield negative deltas.

Works on anything shaped like those classes (duck typing), so it is tested without TensorRT-LLM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from dynamo_core.protocols.engine import EngineOutput, FinishReason, TokenLogprob

# CompletionOutput.finish_reason -> ours. 'not_finished' is a context-only (prefill) request
# that has sampled its one token and keeps its KV for the decode worker.
_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "cancelled": FinishReason.CANCELLED,
    "timeout": FinishReason.ERROR,
    "not_finished": FinishReason.LENGTH,
}
TIMEOUT_ERROR = "TensorRT-LLM timed the request out"


class _Completion(Protocol):
    token_ids: Sequence[int]
    finish_reason: str | None
    logprobs: Sequence[Any] | None  # dict[token id, Logprob] per position, or a float per token


class _Result(Protocol):
    outputs: Sequence[_Completion]
    finished: bool
    prompt_token_ids: Sequence[int] | None


def finish_reason(reason: str | None) -> FinishReason:
    """Our reason for a finished request; one a later TensorRT-LLM adds is still an end (stop)."""
    return _FINISH_REASONS.get(reason or "stop", FinishReason.STOP)


def cached_tokens(result: Any, block_size: int) -> int:
    """Prompt tokens TensorRT-LLM found in its KV cache (reused blocks), at most the prompt.

    `GenerationResultBase.cached_tokens`: an int on every result since TensorRT-LLM added it
    for trtllm-serve's usage (PR #7637, 2025; 0 until a response sets it), which the PyTorch
    executor copies from the request (`request.cached_tokens`, the prompt length the KV cache
    manager prepopulated) onto each response it emits, the first included. Older releases lack
    the attribute; there `request_perf_metrics.kv_cache_metrics.num_reused_blocks` blocks are
    used, present only with `return_perf_metrics` (which this adapter does not set), else 0.
    A generation-only request counts its whole transferred prompt here: a decode worker takes
    the context worker's count instead (`OutputStream(cached_tokens=...)`).
    """
    prompt = len(getattr(result, "prompt_token_ids", None) or ())
    value = getattr(result, "cached_tokens", None)
    if not isinstance(value, int):
        metrics = getattr(result.outputs[0], "request_perf_metrics", None) if result.outputs else None
        reused = getattr(getattr(metrics, "kv_cache_metrics", None), "num_reused_blocks", None)
        value = int(reused) * block_size if isinstance(reused, int) else 0
    return max(0, min(value, prompt)) if prompt else max(0, value)


def token_logprobs(token_ids: Sequence[int], positions: Sequence[Any], top: int) -> tuple[list[float], list[list[TokenLogprob]]]:
    """Each token's logprob and the `top` most likely alternatives at its position.

    The PyTorch backend gives a `dict[int, Logprob]` per position (`TokenLogprobs`): the top
    tokens and the sampled one. Some paths give a bare float per token (the sampled token's
    logprob, no alternatives).
    """
    chosen: list[float] = []
    alternatives: list[list[TokenLogprob]] = []
    for token, position in zip(token_ids, positions):
        if isinstance(position, Mapping):
            entry = position.get(token)
            chosen.append(float(entry.logprob) if entry is not None else float("-inf"))
            best = sorted(position.items(), key=lambda item: item[1].logprob, reverse=True)[:top]
            alternatives.append([TokenLogprob(int(t), float(lp.logprob)) for t, lp in best])
        else:
            chosen.append(float(position))
            alternatives.append([TokenLogprob(int(token), float(position))] if top else [])
    return chosen, alternatives


class OutputStream:
    """Turns one request's cumulative results into deltas.

    Invariant: `emitted` is how many of `outputs[0].token_ids` have gone out (or were skipped);
    each delta carries `token_ids[emitted:]` and moves it to the end.
    """

    def __init__(self, *, top_logprobs: int | None, block_size: int, skip_tokens: int = 0,
                 cached_tokens: int | None = None):
        self.top_logprobs = top_logprobs
        self.block_size = block_size
        # Set: the count to report instead of the result's (a decode worker's: the prefill's).
        self.cached_tokens = cached_tokens
        # A decode worker's output starts with the prefill worker's first token, which the
        # client already has.
        self.emitted = skip_tokens
        self._first = True

    def delta(self, result: _Result) -> EngineOutput | None:
        """The delta for this update of `result`; None when it brought nothing to report."""
        completion = result.outputs[0]
        tokens = completion.token_ids
        start = min(self.emitted, len(tokens))
        new = list(tokens[start:])
        self.emitted = max(self.emitted, len(tokens))
        finished = bool(result.finished)
        if not new and not finished:
            return None  # the first delta's counts wait for its first token
        output = EngineOutput(token_ids=new)
        if finished:
            output.finish_reason = finish_reason(completion.finish_reason)
            if completion.finish_reason == "timeout":
                output.error = TIMEOUT_ERROR
        if self._first:
            self._first = False
            output.prompt_tokens = len(result.prompt_token_ids or ())
            output.cached_tokens = (self.cached_tokens if self.cached_tokens is not None
                                    else cached_tokens(result, self.block_size))
        if self.top_logprobs is not None and new and completion.logprobs:
            positions = list(completion.logprobs[start:start + len(new)])
            if len(positions) == len(new):
                output.logprobs, output.top_logprobs = token_logprobs(new, positions, self.top_logprobs)
        return output
