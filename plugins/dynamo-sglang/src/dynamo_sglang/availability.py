"""Whether SGLang can be used here, and the error that says what to do when it cannot."""

from __future__ import annotations

import importlib.util

from dynamo_core.plugins import EngineUnavailableError

INSTALL_HINT = "pip install 'dynamo-sglang[sglang]' (or pip install 'sglang>=0.5.15'; Python 3.12, CUDA)"


class SglangUnavailableError(EngineUnavailableError):
    """`--engine sglang` was asked for, but SGLang is missing or cannot load (one line from the CLI, status 2)."""

    def __init__(self, reason: str):
        super().__init__("sglang", reason)


def sglang_installed() -> bool:
    return importlib.util.find_spec("sglang") is not None


def require_sglang() -> None:
    if not sglang_installed():
        raise SglangUnavailableError(f"needs SGLang, which is not installed: {INSTALL_HINT}")
