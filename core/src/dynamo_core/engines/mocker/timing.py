"""How long one engine step (one forward pass over the scheduled batch) takes.

    step = decode_base_ms                                      (any forward pass reads all weights)
         + decode_ms_per_seq × decoding sequences
         + decode_ms_per_1k_kv_tokens × context tokens those sequences attend to / 1000
         + Σ over prefill chunks: n / prefill_tokens_per_s × (1 + mid-chunk position / prefill_doubling_context)

The last factor is attention: a prompt token at context position p attends to p earlier
tokens, so its cost grows linearly with p and a whole prompt's cost mildly super-linearly.
Cached prefix tokens are not recomputed, but the new tokens after them still attend to them.

The default profile, `H100_LLAMA_8B`, is Llama-3.1-8B in bf16 on one H100 SXM under vLLM;
docs/mocker.md gives the published figures it is fitted to.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec


class TimingProfile(msgspec.Struct, frozen=True, kw_only=True):
    prefill_tokens_per_s: float  # uncached prompt tokens per second, at the start of a context
    prefill_doubling_context: float  # context position where a token costs twice as much; 0: flat
    decode_base_ms: float
    decode_ms_per_seq: float
    decode_ms_per_1k_kv_tokens: float

    def prefill_seconds(self, start: int, tokens: int) -> float:
        """Prefill of `tokens` prompt tokens at context positions `start`..`start + tokens - 1`."""
        seconds = tokens / self.prefill_tokens_per_s
        if self.prefill_doubling_context > 0:
            seconds *= 1.0 + (start + tokens / 2) / self.prefill_doubling_context
        return seconds

    def step_seconds(self, prefill_chunks: Iterable[tuple[int, int]], decode_seqs: int, decode_kv_tokens: int) -> float:
        """One step: `prefill_chunks` are (start, tokens) pairs; `decode_seqs` sequences decode
        one token each while attending to `decode_kv_tokens` context tokens in all."""
        ms = (self.decode_base_ms
              + self.decode_ms_per_seq * decode_seqs
              + self.decode_ms_per_1k_kv_tokens * decode_kv_tokens / 1000.0)
        return ms / 1000.0 + sum(self.prefill_seconds(start, tokens) for start, tokens in prefill_chunks)


# Fitted in docs/mocker.md ("Where the default profile comes from"): ≈7 ms a step at batch 1,
# ≈12.5 ms at batch 64 with 64k context tokens, ≈18 ms at batch 128 with 128k, ≈24 ms at
# batch 256 with 150k; 12k prompt tokens/s at the start of a context, ×1.25 at 8k tokens deep.
H100_LLAMA_8B = TimingProfile(
    prefill_tokens_per_s=12_000.0,
    prefill_doubling_context=32_768.0,
    decode_base_ms=7.0,
    decode_ms_per_seq=0.04,
    decode_ms_per_1k_kv_tokens=0.045,
)
