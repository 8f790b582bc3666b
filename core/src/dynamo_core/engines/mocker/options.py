"""The mocker's command-line options and their typed, validated form."""

from __future__ import annotations

import argparse

import msgspec

from dynamo_core.engines.mocker.timing import H100_LLAMA_8B, TimingProfile
from dynamo_core.hookspecs import OptionGroup


class MockerConfigError(ValueError):
    """An option value the mocker cannot run with; the message names the flag."""


class MockerConfig(msgspec.Struct, kw_only=True, frozen=True):
    block_size: int = 16
    num_gpu_blocks: int = 8192
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    speedup_ratio: float = 1.0
    context_length: int | None = None  # None: the model's config.json, else 32768
    timing: TimingProfile = H100_LLAMA_8B
    # Disaggregated roles only: KV bytes each token's cache holds (moved between workers), how
    # long a prefill worker holds a prompt's KV for its decode worker, and a fault injection.
    kv_bytes_per_token: int = 1024
    kv_hold_timeout_s: float = 60.0
    inject_kv_corruption: bool = False
    decode_samples_first_token: bool = False  # vLLM's protocol (see KvTransferParams)
    # SGLang's protocol: the prefill worker serves a bootstrap server (mocker/bootstrap.py), a
    # decode worker takes only requests with a room, and how long a room is waited for before
    # the decode worker gives up on it.
    disagg_bootstrap: bool = False
    bootstrap_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("block_size", "num_gpu_blocks", "max_num_seqs", "max_num_batched_tokens", "kv_bytes_per_token"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise MockerConfigError(f"--{_flag(name)} must be a positive integer, got {value!r}")
        if not self.speedup_ratio > 0:
            raise MockerConfigError(f"--speedup-ratio must be positive, got {self.speedup_ratio!r}")
        if not self.kv_hold_timeout_s > 0:
            raise MockerConfigError(f"--kv-hold-timeout must be positive, got {self.kv_hold_timeout_s!r}")
        if not self.bootstrap_timeout_s > 0:
            raise MockerConfigError(f"--bootstrap-timeout must be positive, got {self.bootstrap_timeout_s!r}")
        if self.context_length is not None and self.context_length < 1:
            raise MockerConfigError(f"--context-length must be a positive integer, got {self.context_length!r}")
        if not self.timing.prefill_tokens_per_s > 0:
            raise MockerConfigError(f"--prefill-tokens-per-s must be positive, got {self.timing.prefill_tokens_per_s!r}")
        for name in ("prefill_doubling_context", "decode_base_ms", "decode_ms_per_seq", "decode_ms_per_1k_kv_tokens"):
            value = getattr(self.timing, name)
            if not value >= 0:
                raise MockerConfigError(f"--{_flag(name)} must be zero or positive, got {value!r}")

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> MockerConfig:
        """Build from parsed flags; flags absent from `ns` keep their defaults."""
        base, profile = cls(), H100_LLAMA_8B

        def get(name: str, default):
            value = getattr(ns, name, None)
            return default if value is None else value

        timing = TimingProfile(**{name: get(name, getattr(profile, name)) for name in profile.__struct_fields__})
        return cls(
            block_size=get("block_size", base.block_size),
            num_gpu_blocks=get("num_gpu_blocks", base.num_gpu_blocks),
            max_num_seqs=get("max_num_seqs", base.max_num_seqs),
            max_num_batched_tokens=get("max_num_batched_tokens", base.max_num_batched_tokens),
            enable_prefix_caching=not getattr(ns, "no_prefix_caching", False),
            speedup_ratio=get("speedup_ratio", base.speedup_ratio),
            context_length=getattr(ns, "context_length", None),
            timing=timing,
            kv_bytes_per_token=get("kv_bytes_per_token", base.kv_bytes_per_token),
            kv_hold_timeout_s=get("kv_hold_timeout", base.kv_hold_timeout_s),
            inject_kv_corruption=getattr(ns, "inject_kv_corruption", False),
            decode_samples_first_token=getattr(ns, "decode_samples_first_token", False),
            disagg_bootstrap=getattr(ns, "disagg_bootstrap", False),
            bootstrap_timeout_s=get("bootstrap_timeout", base.bootstrap_timeout_s),
        )


def _flag(field_name: str) -> str:
    return field_name.replace("_", "-")


def add_mocker_options(group: OptionGroup) -> None:
    d, t = MockerConfig(), H100_LLAMA_8B
    add = group.add_argument
    add("--block-size", type=int, default=d.block_size, help="tokens per KV block (default: %(default)s)")
    add("--num-gpu-blocks", type=int, default=d.num_gpu_blocks, help="KV cache capacity in blocks (default: %(default)s)")
    add("--max-num-seqs", type=int, default=d.max_num_seqs, help="most sequences running at once (default: %(default)s)")
    add("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens,
        help="token budget of one step, shared by decodes and prefill chunks (default: %(default)s)")
    add("--no-prefix-caching", action="store_true",
        help="never reuse cached prompt blocks, and publish no KV events (default: prefix caching on)")
    add("--speedup-ratio", type=float, default=d.speedup_ratio,
        help="divide all simulated time by this (default: %(default)s)")
    add("--context-length", type=int, default=None,
        help="longest prompt + output (default: the model's config.json max_position_embeddings, else 32768)")
    add("--kv-bytes-per-token", type=int, default=d.kv_bytes_per_token,
        help="prefill/decode workers: bytes of KV per token, really written by prefill, moved by the "
             "transfer backend and verified by decode (default: %(default)s; Llama-3.1-8B in bf16 has 131072)")
    add("--kv-hold-timeout", type=float, default=d.kv_hold_timeout_s,
        help="prefill workers: seconds a prompt's KV is held for a decode worker that has not pulled it "
             "(default: %(default)s)")
    add("--inject-kv-corruption", action="store_true",
        help="prefill workers, for testing: damage one byte of every prompt's KV, which decode must detect")
    add("--decode-samples-first-token", action="store_true",
        help="prefill workers: let the decode worker recompute the last prompt token and sample the first "
             "token itself, as vLLM's NIXL connector does (default: the prefill worker's token is the first)")
    add("--disagg-bootstrap", action="store_true",
        help="prefill workers: hand KV over as SGLang does, through a bootstrap server on a port of its own "
             "where the decode worker, sent the request at the same time, meets it (default: the prefill "
             "worker answers first, then the decode worker pulls); decode workers: serve only requests "
             "split that way, declining the others as an SGLang decode engine does")
    add("--bootstrap-timeout", type=float, default=d.bootstrap_timeout_s,
        help="with --disagg-bootstrap: seconds a decode worker waits for the prefill's KV of its room "
             "(default: %(default)s)")
    add("--prefill-tokens-per-s", type=float, default=t.prefill_tokens_per_s,
        help="uncached prompt tokens prefilled per second at the start of a context "
             "(default: %(default)s, Llama-3.1-8B bf16 on one H100 with vLLM)")
    add("--prefill-doubling-context", type=float, default=t.prefill_doubling_context,
        help="context position at which a prompt token's prefill costs twice as much as at the start, "
             "since attention grows with context; 0 makes prefill cost flat (default: %(default)s)")
    add("--decode-base-ms", type=float, default=t.decode_base_ms,
        help="time of any step's forward pass before per-sequence costs (default: %(default)s)")
    add("--decode-ms-per-seq", type=float, default=t.decode_ms_per_seq,
        help="step time added per decoding sequence (default: %(default)s)")
    add("--decode-ms-per-1k-kv-tokens", type=float, default=t.decode_ms_per_1k_kv_tokens,
        help="step time added per 1000 context tokens the decoding sequences attend to (default: %(default)s)")
