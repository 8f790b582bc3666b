"""Whether TensorRT-LLM can be used here, the classes the adapter takes from it, and the error
that says what to do when it cannot."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from dynamo_core.plugins import PluginNotInstalledError

# PyPI's tensorrt-llm is a stub whose build backend fetches the real wheel from NVIDIA's index;
# pip needs that index named to find it.
INSTALL_HINT = (
    "pip install tensorrt-llm --extra-index-url https://pypi.nvidia.com "
    "(NVIDIA's package index; the wheel pins its own torch and CUDA)"
)


class TrtllmUnavailableError(PluginNotInstalledError):
    """`--engine trtllm` was asked for, but TensorRT-LLM is missing or cannot load.

    A `PluginNotInstalledError`, so the CLI reports it as one line and exits with status 2.
    """

    def __init__(self, reason: str):
        LookupError.__init__(self, f"engine 'trtllm' {reason}")
        self.kind, self.name, self.available = "engine", "trtllm", []


def trtllm_installed() -> bool:
    return importlib.util.find_spec("tensorrt_llm") is not None


def require_trtllm() -> None:
    if not trtllm_installed():
        raise TrtllmUnavailableError(f"needs TensorRT-LLM, which is not installed: {INSTALL_HINT}")


@dataclass(frozen=True)
class TrtllmApi:
    """The TensorRT-LLM classes the engine uses, from the import paths every release read exports.

    `DisaggregatedParams` comes from `tensorrt_llm.llmapi`: its defining module moved
    (`tensorrt_llm/disaggregated_params.py` in 1.x, `tensorrt_llm/executor/params/disaggregation.py`
    in the newest source) while `llmapi` re-exports it throughout, and NVIDIA's Dynamo imports it
    from there for 1.3.0rc22 and rc29 alike. `Logprob` rebuilds a prefill's first-token logprobs
    on a decode worker (`disagg.py`).
    """

    llm: Any
    sampling_params: Any
    disaggregated_params: Any
    logprob: Any


def import_trtllm() -> TrtllmApi:
    try:
        from tensorrt_llm import LLM, SamplingParams
        from tensorrt_llm.llmapi import DisaggregatedParams
    except ImportError as exc:
        raise TrtllmUnavailableError(f"could not import TensorRT-LLM ({exc})") from exc
    try:  # an internal module: only the prefill logprobs carried to decode need it
        from tensorrt_llm.executor.result import Logprob
    except ImportError:
        Logprob = None
    return TrtllmApi(LLM, SamplingParams, DisaggregatedParams, Logprob)
