"""How long one engine step takes: prefill work plus a decode pass over the running batch.

step = prefill_tokens / prefill_tokens_per_s
     + (decode_base_ms + decode_ms_per_seq * batch + decode_ms_per_1k_kv_tokens * kv_tokens / 1000)
       if any sequence decodes this step

The default profile, `H100_LLAMA_8B`, is a Llama-3.1-8B-class model in bf16 on one H100
under vLLM; docs/mocker.md gives the figures it is fitted to and their sources.
"""

from __future__ import annotations

import msgspec


class TimingProfile(msgspec.Struct, frozen=True, kw_only=True):
    prefill_tokens_per_s: float
    decode_base_ms: float
    decode_ms_per_seq: float
    decode_ms_per_1k_kv_tokens: float

    def step_seconds(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        seconds = prefill_tokens / self.prefill_tokens_per_s
        if decode_seqs:
            seconds += (
                self.decode_base_ms
                + self.decode_ms_per_seq * decode_seqs
                + self.decode_ms_per_1k_kv_tokens * kv_tokens / 1000.0
            ) / 1000.0
        return seconds


# ~12k uncached prompt tokens/s; ~9 ms decode step at batch 1, ~15 ms at batch 64 with 64k
# tokens of context, ~21 ms at batch 128 with 128k.
H100_LLAMA_8B = TimingProfile(
    prefill_tokens_per_s=12_000.0,
    decode_base_ms=9.0,
    decode_ms_per_seq=0.05,
    decode_ms_per_1k_kv_tokens=0.04,
)
