"""Whether TensorRT-LLM can be used here, and the error that says what to do when it cannot."""

from __future__ import annotations

import importlib.util

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
