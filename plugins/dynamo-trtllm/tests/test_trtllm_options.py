"""The `trtllm` engine options and the LLM arguments built from them (`TorchLlmArgs` names of
`tensorrt_llm/llmapi/llm_args.py`: `kv_cache_config.{enable_block_reuse, event_buffer_max_size,
free_gpu_memory_fraction, tokens_per_block}`, `cache_transceiver_config.{backend,
max_tokens_in_buffer}`, `enable_iter_perf_stats`, ...)."""

from __future__ import annotations

import argparse

import pytest

from dynamo_core.cli import options as core_options
from dynamo_core.errors import WorkerConfigError
from dynamo_trtllm.options import add_trtllm_options, llm_arguments


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_trtllm_options(p.add_argument_group(core_options.ENGINE_GROUP_TITLE))
    return p


def worker_options(argv: list[str]) -> argparse.Namespace:
    """Parse as `dynamo serve`, pass the flags on as serve does, parse again as the worker."""
    p = parser()
    passed = core_options.child_args(p, p.parse_args(argv), p)
    return core_options.group_namespace(p, core_options.ENGINE_GROUP_TITLE, p.parse_args(passed))


def test_flags_become_llm_arguments_through_dynamo_serve():
    args = llm_arguments(worker_options([
        "--tp-size", "2", "--max-batch-size", "64", "--max-num-tokens", "8192", "--max-seq-len", "4096",
        "--kv-cache-free-gpu-memory-fraction", "0.5", "--tokens-per-block", "64", "--enable-block-reuse",
    ]), "/models/m", "agg")
    assert args.kwargs == {
        "tensor_parallel_size": 2, "max_batch_size": 64, "max_num_tokens": 8192, "max_seq_len": 4096,
        "kv_cache_config": {"free_gpu_memory_fraction": 0.5, "tokens_per_block": 64, "enable_block_reuse": True,
                            "event_buffer_max_size": 1024},
        "enable_iter_perf_stats": True, "model": "/models/m", "backend": "pytorch", "skip_tokenizer_init": True,
    }
    assert args.kv_events and args.block_size == 64


def test_defaults_leave_tensorrt_llm_its_own_and_turn_kv_events_on():
    args = llm_arguments(worker_options([]), "/m", "agg")
    assert args.kwargs["kv_cache_config"] == {"event_buffer_max_size": 1024}
    assert args.kv_events and args.block_size is None and "cache_transceiver_config" not in args.kwargs


@pytest.mark.parametrize("argv", [["--no-enable-block-reuse"], ["--kv-event-buffer-max-size", "0"]])
def test_kv_events_are_off_without_block_reuse_or_a_buffer(argv):
    args = llm_arguments(worker_options(argv), "/m", "agg")
    assert not args.kv_events and args.kwargs["kv_cache_config"]["event_buffer_max_size"] == 0


def test_contradicting_block_reuse_switches_are_refused():
    with pytest.raises(WorkerConfigError, match="contradict"):
        llm_arguments(worker_options(["--enable-block-reuse", "--no-enable-block-reuse"]), "/m", "agg")


def test_prefill_and_decode_workers_get_a_cache_transceiver():
    args = llm_arguments(worker_options(["--cache-transceiver-max-tokens-in-buffer", "4096"]), "/m", "prefill")
    assert args.kwargs["cache_transceiver_config"] == {"backend": "NIXL", "max_tokens_in_buffer": 4096}
    args = llm_arguments(worker_options(["--cache-transceiver-backend", "UCX"]), "/m", "decode")
    assert args.kwargs["cache_transceiver_config"] == {"backend": "UCX"}


def test_the_yaml_wins_over_the_flags_section_by_section(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("max_batch_size: 8\nkv_cache_config:\n  free_gpu_memory_fraction: 0.3\n  enable_block_reuse: false\n"
                     "cache_transceiver_config:\n  backend: UCX\ncuda_graph_config:\n  max_batch_size: 8\n"
                     "enable_iter_perf_stats: false\n")
    args = llm_arguments(worker_options(["--max-batch-size", "64", "--max-seq-len", "2048",
                                         "--kv-cache-free-gpu-memory-fraction", "0.8", "--tokens-per-block", "16",
                                         "--extra-engine-args", str(extra)]), "/m", "decode")
    kw = args.kwargs
    assert (kw["max_batch_size"], kw["max_seq_len"], kw["cuda_graph_config"]) == (8, 2048, {"max_batch_size": 8})
    assert kw["kv_cache_config"] == {"free_gpu_memory_fraction": 0.3, "tokens_per_block": 16,
                                     "enable_block_reuse": False, "event_buffer_max_size": 0}
    assert kw["cache_transceiver_config"] == {"backend": "UCX"} and kw["enable_iter_perf_stats"] is False
    assert not args.kv_events and args.block_size == 16


@pytest.mark.parametrize("text, message", [
    ("model: /elsewhere\n", "dynamo sets model"),
    ("backend: _autodeploy\n", "dynamo sets backend"),
    ("- a\n- b\n", "expected a mapping"),
    ("a: [1\n", "not valid YAML"),
])
def test_a_bad_extra_engine_args_file_fails_when_the_command_is_parsed(tmp_path, text, message, capsys):
    extra = tmp_path / "extra.yaml"
    extra.write_text(text)
    with pytest.raises(SystemExit):
        parser().parse_args(["--extra-engine-args", str(extra)])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--tp-size", "0"], ["--kv-cache-free-gpu-memory-fraction", "1.5"],
                                  ["--kv-event-buffer-max-size", "-1"], ["--cache-transceiver-backend", "TCP"]])
def test_out_of_range_values_are_refused(argv):
    with pytest.raises(SystemExit):
        parser().parse_args(argv)


def test_the_transceiver_is_configured_as_the_installed_release_accepts():
    from typing import Literal, Optional

    from dynamo_trtllm.options import adapted_to_release

    # CacheTransceiverConfig fields (llm_args.py): earlier releases spell the backends in lower
    # case and have no transfer timeout; later ones upper case, with MOONCAKE and the timeout.
    older = {"backend": Optional[Literal["default", "ucx", "nixl", "mpi"]], "max_tokens_in_buffer": Optional[int]}
    newer = {"backend": Optional[Literal["DEFAULT", "UCX", "NIXL", "MOONCAKE", "MPI"]],
             "max_tokens_in_buffer": Optional[int], "kv_transfer_timeout_ms": Optional[int]}
    kwargs = llm_arguments(worker_options([]), "/m", "prefill").kwargs
    assert adapted_to_release(kwargs, older)["cache_transceiver_config"] == {"backend": "nixl"}
    assert adapted_to_release(kwargs, newer)["cache_transceiver_config"] == {"backend": "NIXL",
                                                                            "kv_transfer_timeout_ms": 60000}
    assert kwargs["cache_transceiver_config"] == {"backend": "NIXL"}  # the worker's own copy is kept
    given = llm_arguments(worker_options(["--cache-transceiver-backend", "UCX"]), "/m", "decode").kwargs
    given["cache_transceiver_config"]["kv_transfer_timeout_ms"] = 5000
    assert adapted_to_release(given, newer)["cache_transceiver_config"] == {"backend": "UCX",
                                                                           "kv_transfer_timeout_ms": 5000}
    agg = llm_arguments(worker_options([]), "/m", "agg").kwargs
    assert adapted_to_release(agg, newer) == agg
