"""SGLang's server-argument parser and the `ServerArgs` a worker starts its engine with.

Imports SGLang: used by the option hook (to mirror the flags) and by the engine (to parse them
back with SGLang's own parser, as `python -m sglang.launch_server` would).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from typing import TYPE_CHECKING, Any

from dynamo_sglang.availability import SglangUnavailableError, require_sglang

if TYPE_CHECKING:
    from sglang.srt.server_args import ServerArgs


@functools.lru_cache(maxsize=1)
def server_arg_parser() -> argparse.ArgumentParser:
    """SGLang's parser of its server arguments."""
    require_sglang()
    try:
        from sglang.srt.server_args import ServerArgs
    except ImportError as exc:
        raise SglangUnavailableError(f"could not import SGLang ({exc})") from exc
    parser = argparse.ArgumentParser(prog="sglang server arguments")
    try:
        ServerArgs.add_cli_args(parser)
    except RuntimeError as exc:  # e.g. no usable device platform
        raise SglangUnavailableError(f"could not load SGLang's server arguments: {exc}") from exc
    return parser


def server_args(model_path: str, argv: list[str], overrides: dict[str, Any]) -> ServerArgs:
    """`ServerArgs` from the user's SGLang flags for the model in `model_path`, with the fields
    dynamo owns (`overrides`) set. `ServerArgs.__post_init__` then resolves SGLang's defaults."""
    from sglang.srt.server_args import ServerArgs

    namespace = server_arg_parser().parse_args(["--model-path", model_path, *argv])
    fields = {f.name for f in dataclasses.fields(ServerArgs)}
    values = {name: getattr(namespace, name) for name in fields if hasattr(namespace, name)}
    values.update(overrides)
    return ServerArgs(**values)
