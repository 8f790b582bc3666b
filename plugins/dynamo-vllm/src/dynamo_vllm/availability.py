"""Whether vLLM can be used here, and the error that says what to do when it cannot."""

from __future__ import annotations

import importlib.util

from dynamo_core.plugins import PluginNotInstalledError

INSTALL_HINT = "pip install 'dynamo-vllm[vllm]' (or pip install vllm)"


class VllmUnavailableError(PluginNotInstalledError):
    """`--engine vllm` was asked for, but vLLM is missing or cannot load.

    A `PluginNotInstalledError`, so the CLI reports it as one line and exits with status 2.
    """

    def __init__(self, reason: str):
        LookupError.__init__(self, f"engine 'vllm' {reason}")
        self.kind, self.name, self.available = "engine", "vllm", []


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    if not vllm_installed():
        raise VllmUnavailableError(f"needs vLLM, which is not installed: {INSTALL_HINT}")
