"""Whether vLLM can be used here, and the error that says what to do when it cannot."""

from __future__ import annotations

import importlib.util

from dynamo_core.plugins import EngineUnavailableError

INSTALL_HINT = "pip install 'dynamo-vllm[vllm]' (or pip install vllm)"


class VllmUnavailableError(EngineUnavailableError):
    """`--engine vllm` was asked for, but vLLM is missing or cannot load (one line from the CLI, status 2)."""

    def __init__(self, reason: str):
        super().__init__("vllm", reason)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    if not vllm_installed():
        raise VllmUnavailableError(f"needs vLLM, which is not installed: {INSTALL_HINT}")
