"""The `dynamo` CLI with dynamo-trtllm installed and TensorRT-LLM missing (CI's case, and every
machine of this project's so far: see the README)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_llm") is not None,
                                reason="TensorRT-LLM is installed here")

MESSAGE = ("dynamo: error: engine 'trtllm' needs TensorRT-LLM, which is not installed: pip install tensorrt-llm "
           "--extra-index-url https://pypi.nvidia.com (NVIDIA's package index; the wheel pins its own torch and CUDA)")


def _dynamo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DYN_FILE_DISCOVERY_DIR=str(tmp_path / "discovery"))
    return subprocess.run([sys.executable, "-m", "dynamo_core.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_plugins_lists_the_trtllm_engine_from_dynamo_trtllm(tmp_path):
    result = _dynamo(tmp_path, "plugins")
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.split()[:2] == ["engine", "trtllm"])
    assert line.split()[2] == "dynamo-trtllm"


def test_serve_help_lists_the_engine_options_without_tensorrt_llm(tmp_path):
    result = _dynamo(tmp_path, "serve", "--engine", "trtllm", "--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--tensor-parallel-size", "--max-batch-size", "--max-num-tokens", "--max-seq-len",
                 "--kv-cache-free-gpu-memory-fraction", "--enable-block-reuse", "--extra-engine-args",
                 "--cache-transceiver-backend"):
        assert flag in result.stdout
    assert "--trtllm-runtime-check" not in result.stdout


@pytest.mark.parametrize("command", [["worker"], ["serve", "--workers", "1"], ["serve", "--disagg"]])
def test_engine_trtllm_without_tensorrt_llm_names_what_to_install_and_from_where(tmp_path, command):
    result = _dynamo(tmp_path, *command, "--engine", "trtllm", "--model", str(tmp_path), "--max-batch-size", "8")
    assert result.returncode == 2
    assert result.stderr.strip() == MESSAGE
