"""Errors any component or plugin may raise for a setting a user must change.

They carry a message written for the user; the CLI prints it without a traceback and exits
non-zero. Errors tied to one boundary stay there (``OpenAIError`` in the frontend, ``TransferError``
in transfer, ``RequestPlaneError`` in the runtime).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work; the message says what to change."""


class WorkerConfigError(ConfigError):
    """A worker or engine setting that cannot work (unknown mode, unsupported role, bad engine flag)."""
