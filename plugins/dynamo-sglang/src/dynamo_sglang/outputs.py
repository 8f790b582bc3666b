"""SGLang's streamed outputs as dynamo `EngineOutput` deltas.

With `incremental_streaming_output`, each dict `async_generate(stream=True)` yields holds only
what is new since the previous one: `output_ids` (the new tokens) and `meta_info`, whose
`output_token_logprobs` / `output_top_logprobs` are sliced to the same tokens
(`tokenizer_manager.py:_slice_streaming_output_meta_info`). `meta_info` also carries
`finish_reason` (None, or `{"type": "stop"|"length"|"abort", ...}`), `prompt_tokens` and
`cached_tokens`. Logprob entries are tuples `(logprob, token_id, text)`; text is None here
(the tokenizer is skipped). Plain dicts, so this is tested against recorded SGLang outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dynamo_core.protocols.engine import EngineOutput, FinishReason, TokenLogprob

_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


def finish(meta_info: Mapping[str, Any]) -> tuple[FinishReason | None, str | None]:
    """The finish reason of a chunk, and an error message for an abort."""
    reason = meta_info.get("finish_reason")
    if reason is None:
        return None, None
    kind = reason.get("type") if isinstance(reason, Mapping) else str(reason)
    if kind == "abort":
        # SGLang aborts what it cannot serve (a prompt over the context, a full queue) and what
        # we asked it to abort; the latter's stream has no reader any more, so this is an error.
        message = reason.get("message") if isinstance(reason, Mapping) else None
        return FinishReason.ERROR, f"SGLang aborted the request: {message or 'no reason given'}"
    # A reason added by a later SGLang is still an end: report it as a normal stop.
    return _FINISH_REASONS.get(kind, FinishReason.STOP), None


def token_logprobs(
    entries: Sequence[Sequence[Any]], top_entries: Sequence[Sequence[Sequence[Any]] | None] | None, top: int
) -> tuple[list[float], list[list[TokenLogprob]]]:
    """Each sampled token's logprob and the `top` most likely alternatives at its position."""
    chosen = [float(entry[0]) if entry[0] is not None else float("-inf") for entry in entries]
    alternatives: list[list[TokenLogprob]] = []
    for i in range(len(entries)):
        position = (top_entries[i] if top_entries is not None and i < len(top_entries) else None) or []
        best = sorted(position, key=lambda e: e[0], reverse=True)[:top]
        alternatives.append([TokenLogprob(int(e[1]), float(e[0])) for e in best])
    return chosen, alternatives


def engine_output(chunk: Mapping[str, Any], *, first: bool, top_logprobs: int | None) -> EngineOutput:
    """One dynamo delta from one SGLang chunk. `first`: the request's first delta carries the
    prompt and prefix-cache token counts. `top_logprobs`: None when logprobs were not asked."""
    meta = chunk.get("meta_info") or {}
    token_ids = [int(t) for t in chunk.get("output_ids") or ()]
    reason, error = finish(meta)
    output = EngineOutput(token_ids=token_ids, finish_reason=reason, error=error)
    if first:
        # The first chunk comes after the prefill, so SGLang's cached-token count is final.
        output.prompt_tokens = int(meta.get("prompt_tokens") or 0)
        output.cached_tokens = int(meta.get("cached_tokens") or 0)
    if top_logprobs is not None and token_ids:
        entries = list(meta.get("output_token_logprobs") or ())[-len(token_ids):]
        if entries:
            tops = meta.get("output_top_logprobs")
            tops = list(tops)[-len(token_ids):] if tops else None
            output.logprobs, output.top_logprobs = token_logprobs(entries, tops, top_logprobs)
    return output
