"""The types the frontend's stages hand to each other, owned by none of them.

    preprocessor ──PreparedChoice──▶ engine client ──EngineOutput──▶ postprocessor ──ChoiceDelta──▶ chat/completions output
                                                                         └──UsageCounter (per response)

Every stage imports these and none imports another stage for them (as vLLM keeps
`EngineCoreRequest`/`EngineCoreOutput` in `vllm/v1/engine/__init__.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dynamo_core.protocols.engine import PreprocessedRequest, TokenLogprob


@dataclass
class PreparedChoice:
    """One choice of a request, ready for a worker: a chat request with ``n=3`` is three."""

    index: int
    request: PreprocessedRequest
    prompt_token_ids: list[int]
    prompt_text: str | None = None  # completions `echo`


@dataclass
class ChoiceDelta:
    """New text of one choice, as the postprocessor made it from an engine delta."""

    index: int
    text: str
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None  # per token in `token_ids`, when asked for
    top_logprobs: list[list[TokenLogprob]] | None = None


@dataclass
class UsageCounter:
    """Token counts of one response, summed over its choices."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
