"""The internal request/response boundary: frontend -> worker -> engine and back.

A `PreprocessedRequest` is what the gateway sends after tokenization and templating; the
engine answers with a stream of `EngineOutput` deltas. Stop *strings* never reach the engine:
the gateway's postprocessor applies them to detokenized text. Stop *token ids* (EOS and
friends) do reach it, since only the engine sees a token before it is sampled again.
"""

from __future__ import annotations

import enum

import msgspec

from dynamo_core.transfer.base import RemoteRegion


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS or a stop token id (the gateway also uses it for stop strings)
    LENGTH = "length"  # max_tokens or the context length was reached
    CANCELLED = "cancelled"
    ERROR = "error"


class SamplingOptions(msgspec.Struct, omit_defaults=True, kw_only=True):
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None


class StopConditions(msgspec.Struct, omit_defaults=True, kw_only=True):
    max_tokens: int
    stop_token_ids: list[int] = []
    min_tokens: int = 0
    ignore_eos: bool = False


class OutputOptions(msgspec.Struct, omit_defaults=True, kw_only=True):
    logprobs: int | None = None  # number of top logprobs wanted; None = none at all
    # Logprobs of the prompt's own tokens (completions `echo` with `logprobs`), with this many
    # alternatives each; asked only of engines that can (`Engine.supports_prompt_logprobs`).
    prompt_logprobs: int | None = None


class GuidedDecoding(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Constrain the output (structured output); exactly one field is set."""

    json_schema: dict | None = None
    json_object: bool = False  # any JSON object
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None  # EBNF / GBNF grammar text


class KvTransferParams(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Where a prefill worker holds a prompt's KV, so that a decode worker can pull it.

    The prefill worker keeps the blocks until the frontend releases them (`kv_release` on the
    prefill worker) or its hold timeout passes, whichever comes first.
    """

    worker_id: str  # the prefill worker
    hold_id: str  # its key for the held blocks (what `kv_release` names)
    num_tokens: int  # leading prompt tokens whose KV is held
    block_size: int
    bytes_per_token: int = 0
    region: RemoteRegion | None = None  # the registered memory the blocks live in
    block_ids: list[int] = []  # the blocks, in prompt order; block i is at i * block_size * bytes_per_token
    # An engine's own transfer parameters: vLLM's connector's (from the prefill answer), or
    # in a rendezvous handoff the prefill worker's `disagg_bootstrap` plus "bootstrap_room".
    engine_params: dict | None = None
    # False: the prefill worker's token is the request's first (the client sees it at once)
    # and the decode worker continues after it. True: the decode worker recomputes the last
    # prompt token and samples the first token itself (vLLM's NIXL connector works so): it
    # gets the prompt alone, and the prefill worker's token is dropped.
    decode_samples_first_token: bool = False


class DisaggParams(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Disaggregated serving: which phase a worker runs, and for decode where the KV is."""

    phase: str  # "prefill": compute the prompt, sample one token, hold the KV | "decode"
    kv: KvTransferParams | None = None  # decode: what the prefill worker answered


class KvPullReport(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What a decode worker did to get a prompt's KV (on its first delta)."""

    bytes: int = 0
    blocks: int = 0
    seconds: float | None = None  # None: the engine does not know (vLLM's connector does not say)
    local_blocks: int = 0  # blocks it already had in its own prefix cache and did not pull
    # Why it computed the prompt itself instead ("transfer_failed: ..."); None: it pulled.
    recomputed: str | None = None
    # Why it could not get the KV and served nothing (sent with an error before any token,
    # e.g. the rendezvous timed out): the frontend serves the request aggregated instead.
    failed: str | None = None


class PreprocessedRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    request_id: str
    model: str
    token_ids: list[int]
    stop: StopConditions
    sampling: SamplingOptions = msgspec.field(default_factory=SamplingOptions)
    output: OutputOptions = msgspec.field(default_factory=OutputOptions)
    guided: GuidedDecoding | None = None
    # Filled only for models whose card asks for it (`wants_last_message_tokens`): the
    # `echo` engine replays exactly the text of the last message.
    last_message_token_ids: list[int] | None = None
    disagg: DisaggParams | None = None  # None: aggregated (prefill and decode here)
    # A migrated request (frontend/migration.py): the last `resumed_tokens` of `token_ids` are
    # its own output, streamed by a worker that failed; the engine continues after them.
    resumed_tokens: int = 0


class TokenLogprob(msgspec.Struct, array_like=True):
    token_id: int
    logprob: float


class EngineOutput(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One streamed delta. `token_ids` are the tokens new since the previous delta."""

    token_ids: list[int] = []
    finish_reason: FinishReason | None = None
    # Per new token: its logprob and the top alternatives, when logprobs were asked for.
    logprobs: list[float] | None = None
    top_logprobs: list[list[TokenLogprob]] | None = None
    # Sent once, on the first delta: how many prompt tokens the engine saw and how many of
    # them it found in its prefix cache.
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    # Sent once, on the first delta, when `output.prompt_logprobs` was asked: per prompt token
    # its logprob (None for the first, which nothing predicts) and its top alternatives.
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[TokenLogprob]] | None = None
    error: str | None = None
    # The worker did not take the request (it is shutting down): the frontend routes it to
    # another worker instead of failing it. After output (the last delta of a worker whose
    # drain timed out): the frontend moves the request to another worker (migration).
    retry_elsewhere: bool = False
    # Disaggregated serving: a prefill worker's last delta says where the KV is held; a decode
    # worker's first delta reports how it got it.
    kv_transfer: KvTransferParams | None = None
    kv_pull: KvPullReport | None = None


class EngineInfo(msgspec.Struct, kw_only=True):
    """What an engine reports about itself once started; it goes into the model card."""

    block_size: int
    kv_capacity_blocks: int
    context_length: int
    # Prefill role, rendezvous handoff (SGLang): where decode workers meet this worker for a
    # request's KV, e.g. {"bootstrap_host": ..., "bootstrap_port": ...}. Set, the frontend sends
    # a long prompt to this prefill worker and to a decode worker at once, both carrying it
    # with a "bootstrap_room"; None: prefill answers first, then decode pulls (vLLM, mocker).
    disagg_bootstrap: dict | None = None


def merge_outputs(outputs: list[EngineOutput]) -> EngineOutput:
    """Consecutive deltas of one stream as one delta (tokens, logprobs and ends combined)."""
    if len(outputs) == 1:
        return outputs[0]
    first, last = outputs[0], outputs[-1]
    merged = EngineOutput(
        token_ids=[t for o in outputs for t in o.token_ids],
        finish_reason=last.finish_reason,
        prompt_tokens=first.prompt_tokens,
        cached_tokens=first.cached_tokens,
        prompt_logprobs=first.prompt_logprobs,
        prompt_top_logprobs=first.prompt_top_logprobs,
        error=last.error,
        retry_elsewhere=first.retry_elsewhere or last.retry_elsewhere,  # declined, or handed off
        kv_transfer=last.kv_transfer,
        kv_pull=first.kv_pull,
    )
    if any(o.logprobs is not None for o in outputs):
        merged.logprobs = [lp for o in outputs for lp in (o.logprobs or [])]
    if any(o.top_logprobs is not None for o in outputs):
        merged.top_logprobs = [tl for o in outputs for tl in (o.top_logprobs or [])]
    return merged
