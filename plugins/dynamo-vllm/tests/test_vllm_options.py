"""vLLM's engine arguments mirrored into dynamo's CLI, through `dynamo serve` and back to vLLM.

A stand-in parser declares options the way vLLM 0.26's `AsyncEngineArgs.add_cli_args` does
(BooleanOptionalAction switches, integer choices, human-readable sizes, JSON, lists, a bare
`nargs="?"` flag), so this runs without vLLM.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest

from dynamo_core.cli import options as core_options
from dynamo_vllm.options import given_flags, mirror_vllm_options, vllm_argv


def human_readable_int(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    if not match:
        raise ValueError(f"not a size: {value}")
    number, unit = match.groups()
    return int(number) * {"": 1, "k": 10**3, "K": 2**10, "m": 10**6, "M": 2**20, "g": 10**9, "G": 2**30}[unit]


def fake_vllm_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=str, default="facebook/opt-125m")
    parser.add_argument("--served-model-name", nargs="+", type=str, default=None)
    parser.add_argument("--max-model-len", type=human_readable_int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--max-lora-rank", type=int, choices=[1, 8, 16, 32], default=16)
    parser.add_argument("--dtype", type=str, choices=["auto", "bfloat16", "float16"], default="auto")
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--kv-cache-memory-bytes", type=human_readable_int, default=None)
    parser.add_argument("--hf-overrides", type=json.loads, default=None)
    parser.add_argument("--cudagraph-capture-sizes", nargs="+", type=int, default=None)
    parser.add_argument("--hf-token", type=str, nargs="?", const=True, default=None)
    parser.add_argument("--disable-log-stats", action="store_true")
    parser.add_argument("--kv-events-config", type=json.loads, default=None)
    parser.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    parser.add_argument("--port", type=int, default=8000)  # collides with a core worker option
    return parser


def worker_like_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    """A parser shaped like `dynamo worker`'s: core options first, then the engine group."""
    parser = argparse.ArgumentParser(prog="dynamo worker")
    parser.add_argument("--model")
    parser.add_argument("--port", type=int, default=0)
    group = parser.add_argument_group(core_options.ENGINE_GROUP_TITLE)
    added = mirror_vllm_options(fake_vllm_parser(), group)
    return parser, added


def test_every_vllm_option_is_mirrored_except_the_ones_dynamo_owns_or_already_has():
    _, added = worker_like_parser()
    assert "--max-model-len" in added and "--enforce-eager" in added and "--no-enforce-eager" in added
    assert "--tensor-parallel-size" in added and "--hf-overrides" in added
    for owned in ("--model", "--served-model-name", "--kv-events-config", "--data-parallel-size", "--port"):
        assert owned not in added


def test_values_keep_the_text_the_user_typed():
    parser, _ = worker_like_parser()
    ns = parser.parse_args(["--max-model-len", "4k", "--kv-cache-memory-bytes", "2G", "--enforce-eager",
                            "--hf-overrides", '{"rope_theta": 5e5}', "-tp", "2", "--max-lora-rank", "8",
                            "--cudagraph-capture-sizes", "1", "2", "4"])
    assert getattr(ns, "vllm:--max-model-len") == "4k"
    assert getattr(ns, "vllm:--tensor-parallel-size") == "2"
    assert vllm_argv(ns) == [
        "--cudagraph-capture-sizes", "1", "2", "4",
        "--enforce-eager",
        "--hf-overrides", '{"rope_theta": 5e5}',
        "--kv-cache-memory-bytes", "2G",
        "--max-lora-rank", "8",
        "--max-model-len", "4k",
        "--tensor-parallel-size", "2",
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-model-len", "lots"], "--max-model-len"),
        (["--gpu-memory-utilization", "high"], "--gpu-memory-utilization"),
        (["--max-lora-rank", "7"], "invalid choice '7'"),
        (["--dtype", "int3"], "invalid choice 'int3'"),
        (["--hf-overrides", "{not json"], "--hf-overrides"),
    ],
)
def test_a_bad_value_fails_at_parse_time_with_vllms_own_check(argv, message, capsys):
    parser, _ = worker_like_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert message in capsys.readouterr().err


def test_dynamo_serve_passes_the_options_to_its_workers_unchanged():
    """`dynamo serve` turns the engine group back into flags (core's `child_args`); a worker
    parses them again and must rebuild the same vLLM command line."""
    serve_parser, _ = worker_like_parser()
    given = ["--gpu-memory-utilization", "0.3", "--no-enable-prefix-caching", "--block-size", "32",
             "--max-model-len", "2k", "--hf-token", "hf_abc", "--disable-log-stats",
             "--hf-overrides", '{"a": {"b": 1}}', "--cudagraph-capture-sizes", "8", "16"]
    ns = serve_parser.parse_args(given)
    worker_parser, _ = worker_like_parser()
    passed = core_options.child_args(serve_parser, ns, worker_parser)

    worker_ns = worker_parser.parse_args(passed)
    engine_options = core_options.group_namespace(worker_parser, core_options.ENGINE_GROUP_TITLE, worker_ns)
    assert vllm_argv(engine_options) == vllm_argv(ns)
    assert given_flags(engine_options) == {
        "--gpu-memory-utilization", "--no-enable-prefix-caching", "--block-size", "--max-model-len",
        "--hf-token", "--disable-log-stats", "--hf-overrides", "--cudagraph-capture-sizes",
    }
    # ...and vLLM's own parser accepts that command line with the values the user meant.
    vllm_ns = fake_vllm_parser().parse_args(vllm_argv(engine_options))
    assert vllm_ns.gpu_memory_utilization == 0.3 and vllm_ns.enable_prefix_caching is False
    assert vllm_ns.block_size == 32 and vllm_ns.max_model_len == 2000 and vllm_ns.hf_token == "hf_abc"
    assert vllm_ns.hf_overrides == {"a": {"b": 1}} and vllm_ns.cudagraph_capture_sizes == [8, 16]
    assert vllm_ns.disable_log_stats is True


def test_nothing_given_means_vllms_defaults():
    parser, _ = worker_like_parser()
    ns = parser.parse_args([])
    assert vllm_argv(ns) == [] and given_flags(ns) == set()
    assert core_options.child_args(parser, ns, parser) == []


def test_help_lists_vllms_options(capsys):
    parser, _ = worker_like_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--gpu-memory-utilization" in out and "--enforce-eager" in out
