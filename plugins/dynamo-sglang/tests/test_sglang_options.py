"""SGLang's server arguments mirrored into dynamo's CLI, through `dynamo serve` and back.

A stand-in parser declares options the way SGLang 0.5.15's `ServerArgs.add_cli_args` does
(dataclass-derived store_true switches, BooleanOptionalAction, choices, aliases, Optional[int]),
so this runs without SGLang.
"""

from __future__ import annotations

import argparse

from dynamo_core.cli import options as core_options
from dynamo_sglang.options import OWNED_FLAGS, given_flags, mirror_sglang_options, sglang_argv


def fake_sglang_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-path", "--model", type=str, required=True)
    parser.add_argument("--tokenizer-path", type=str, default=None)
    parser.add_argument("--skip-tokenizer-init", action="store_true")
    parser.add_argument("--mem-fraction-static", type=float, default=None)
    parser.add_argument("--context-length", type=int, default=None)
    parser.add_argument("--page-size", type=int, default=None)
    parser.add_argument("--attention-backend", type=str, choices=["triton", "fa3", "flashinfer"], default=None)
    parser.add_argument("--grammar-backend", type=str, choices=["xgrammar", "outlines", "llguidance", "none"], default=None)
    parser.add_argument("--tp-size", "--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--dp-size", "--data-parallel-size", type=int, default=1)
    parser.add_argument("--disable-cuda-graph", action="store_true")
    parser.add_argument("--enable-hierarchical-cache", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--kv-events-config", type=str, default=None)
    parser.add_argument("--disaggregation-mode", type=str, choices=["null", "prefill", "decode"], default="null")
    parser.add_argument("--disaggregation-transfer-backend", type=str, choices=["mooncake", "nixl", "fake"], default="mooncake")
    parser.add_argument("--host", type=str, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--served-model-name", type=str, default=None)
    return parser


def worker_like_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    """A parser shaped like `dynamo worker`'s: core options first, then the engine group."""
    parser = argparse.ArgumentParser(prog="dynamo worker")
    parser.add_argument("--model")
    group = parser.add_argument_group(core_options.ENGINE_GROUP_TITLE)
    return parser, mirror_sglang_options(fake_sglang_parser(), group)


def test_sglangs_options_are_mirrored_but_those_dynamo_owns():
    _, added = worker_like_parser()
    assert {"--mem-fraction-static", "--context-length", "--page-size", "--attention-backend", "--grammar-backend",
            "--tp-size", "--disable-cuda-graph", "--enable-hierarchical-cache", "--no-enable-hierarchical-cache",
            "--disaggregation-transfer-backend"} <= set(added)
    assert not set(added) & OWNED_FLAGS
    assert "--tensor-parallel-size" not in added  # an alias: the long flag names the option


def test_flags_round_trip_to_sglangs_parser():
    parser, _ = worker_like_parser()
    ns = parser.parse_args(["--model", "/m", "--mem-fraction-static", "0.3", "--page-size", "32",
                            "--attention-backend", "triton", "--disable-cuda-graph", "--tensor-parallel-size", "2",
                            "--no-enable-hierarchical-cache"])
    argv = sglang_argv(ns)
    assert argv == ["--attention-backend", "triton", "--disable-cuda-graph", "--mem-fraction-static", "0.3",
                    "--no-enable-hierarchical-cache", "--page-size", "32", "--tp-size", "2"]
    back = fake_sglang_parser().parse_args(["--model-path", "/m", *argv])
    assert (back.mem_fraction_static, back.page_size, back.tp_size, back.disable_cuda_graph) == (0.3, 32, 2, True)
    assert back.enable_hierarchical_cache is False
    assert given_flags(ns) == {"--attention-backend", "--disable-cuda-graph", "--mem-fraction-static",
                               "--no-enable-hierarchical-cache", "--page-size", "--tp-size"}


def test_a_bad_value_fails_at_parse_time_with_sglangs_choices(capsys):
    parser, _ = worker_like_parser()
    try:
        parser.parse_args(["--attention-backend", "nope"])
    except SystemExit as exc:
        assert exc.code == 2
    err = capsys.readouterr().err
    assert "invalid choice 'nope' for --attention-backend (choose from triton, fa3, flashinfer)" in err
