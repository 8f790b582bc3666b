"""vLLM's engine-argument parser and the `AsyncEngineArgs` a worker starts vLLM with.

Imports vLLM: used by the option hook (to mirror the flags) and by the engine (to parse them
back with vLLM's own parser, exactly as `vllm serve` would).
"""

from __future__ import annotations

import argparse
import functools
from typing import TYPE_CHECKING

from dynamo_vllm.availability import VllmUnavailableError, require_vllm

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.engine.arg_utils import AsyncEngineArgs


@functools.lru_cache(maxsize=1)
def engine_arg_parser() -> argparse.ArgumentParser:
    """vLLM's parser of its engine arguments (`vllm serve`'s minus the HTTP server's)."""
    require_vllm()
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError as exc:
        raise VllmUnavailableError(f"could not import vLLM ({exc})") from exc
    parser = FlexibleArgumentParser(prog="vllm engine arguments")
    try:
        AsyncEngineArgs.add_cli_args(parser)
    except RuntimeError as exc:  # e.g. "Failed to infer device type" on a machine without a GPU
        raise VllmUnavailableError(f"could not load vLLM's engine arguments: {exc}") from exc
    return parser


def engine_args(model_path: str, argv: list[str]) -> AsyncEngineArgs:
    """`AsyncEngineArgs` from the user's vLLM flags, for the model in `model_path`."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    namespace = engine_arg_parser().parse_args(["--model", model_path, *argv])
    return AsyncEngineArgs.from_cli_args(namespace)


def serving_config(args: AsyncEngineArgs) -> VllmConfig:
    """vLLM's configuration for these arguments as `vllm serve` makes it.

    vLLM picks scheduler defaults by usage context: an OpenAI server on an H100/H200-class GPU
    gets up to 1,024 sequences and 8,192 tokens per step, while the `AsyncLLM` default (engine
    context) gets 128 and 2,048. A worker is an OpenAI server's engine, so it asks for the
    former; flags the user gives (`--max-num-seqs`, `--max-num-batched-tokens`) still win.
    """
    from vllm.usage.usage_lib import UsageContext

    return args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
