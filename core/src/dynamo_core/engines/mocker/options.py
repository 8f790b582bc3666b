"""The mocker's command-line options and their typed, validated form."""

from __future__ import annotations

import argparse

import msgspec

from dynamo_core.engines.mocker.timing import H100_LLAMA_8B, TimingProfile


class MockerConfig(msgspec.Struct, kw_only=True, frozen=True):
    block_size: int = 16
    num_gpu_blocks: int = 8192
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    speedup_ratio: float = 1.0
    context_length: int | None = None
    timing: TimingProfile = H100_LLAMA_8B

    def __post_init__(self) -> None:
        for name in ("block_size", "num_gpu_blocks", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.speedup_ratio <= 0:
            raise ValueError("--speedup-ratio must be positive")
        if self.context_length is not None and self.context_length < 1:
            raise ValueError("--context-length must be at least 1")
        if self.timing.prefill_tokens_per_s <= 0 or self.timing.decode_base_ms < 0:
            raise ValueError("--prefill-tokens-per-s must be positive and --decode-base-ms non-negative")

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> "MockerConfig":
        defaults = cls()
        get = lambda name, default: default if getattr(ns, name, None) is None else getattr(ns, name)  # noqa: E731
        timing = TimingProfile(
            prefill_tokens_per_s=get("prefill_tokens_per_s", H100_LLAMA_8B.prefill_tokens_per_s),
            decode_base_ms=get("decode_base_ms", H100_LLAMA_8B.decode_base_ms),
            decode_ms_per_seq=get("decode_ms_per_seq", H100_LLAMA_8B.decode_ms_per_seq),
            decode_ms_per_1k_kv_tokens=get("decode_ms_per_1k_kv_tokens", H100_LLAMA_8B.decode_ms_per_1k_kv_tokens),
        )
        return cls(
            block_size=get("block_size", defaults.block_size),
            num_gpu_blocks=get("num_gpu_blocks", defaults.num_gpu_blocks),
            max_num_seqs=get("max_num_seqs", defaults.max_num_seqs),
            max_num_batched_tokens=get("max_num_batched_tokens", defaults.max_num_batched_tokens),
            enable_prefix_caching=not getattr(ns, "no_prefix_caching", False),
            speedup_ratio=get("speedup_ratio", defaults.speedup_ratio),
            context_length=getattr(ns, "context_length", None),
            timing=timing,
        )


def add_mocker_options(group: argparse._ArgumentGroup) -> None:
    d, t = MockerConfig(), H100_LLAMA_8B
    group.add_argument("--block-size", type=int, default=d.block_size, help="tokens per KV block (default: %(default)s)")
    group.add_argument("--num-gpu-blocks", type=int, default=d.num_gpu_blocks, help="KV cache capacity in blocks (default: %(default)s)")
    group.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs, help="most requests running at once (default: %(default)s)")
    group.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens,
                       help="token budget of one step, shared by decodes and prefill chunks (default: %(default)s)")
    group.add_argument("--no-prefix-caching", action="store_true", help="do not reuse cached prompt blocks (and publish no KV events)")
    group.add_argument("--speedup-ratio", type=float, default=d.speedup_ratio,
                       help="run simulated time this many times faster than the profile (default: %(default)s)")
    group.add_argument("--context-length", type=int, default=None, help="context length (default: the model's config.json, else 32768)")
    group.add_argument("--prefill-tokens-per-s", type=float, default=t.prefill_tokens_per_s,
                       help="uncached prompt tokens prefilled per second (default: %(default)s, Llama-3.1-8B on an H100)")
    group.add_argument("--decode-base-ms", type=float, default=t.decode_base_ms, help="decode step time at batch 1 (default: %(default)s)")
    group.add_argument("--decode-ms-per-seq", type=float, default=t.decode_ms_per_seq,
                       help="decode step time added per running sequence (default: %(default)s)")
    group.add_argument("--decode-ms-per-1k-kv-tokens", type=float, default=t.decode_ms_per_1k_kv_tokens,
                       help="decode step time added per 1000 active KV tokens (default: %(default)s)")
