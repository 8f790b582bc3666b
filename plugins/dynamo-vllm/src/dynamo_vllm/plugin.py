"""Hook implementations of dynamo-vllm: the `vllm` engine and its options (vLLM's own)."""

from __future__ import annotations


from dynamo_core.engines.base import Engine, EngineContext, EngineSpec
from dynamo_core import hookimpl
from dynamo_core.hookspecs import OptionGroup


def _create(context: EngineContext) -> Engine:
    from dynamo_vllm.engine import VllmEngine

    return VllmEngine.from_context(context)


@hookimpl
def dynamo_engines() -> list[EngineSpec]:
    # Listing the engine needs no vLLM: `dynamo plugins` works on any machine.
    return [EngineSpec("vllm", _create, "vLLM v1 AsyncLLM: paged attention, continuous batching, prefix caching")]


@hookimpl
def dynamo_engine_options(engine: str, group: OptionGroup) -> None:
    if engine != "vllm":
        return
    from dynamo_vllm.engine_args import engine_arg_parser
    from dynamo_vllm.options import mirror_vllm_options

    # Raises VllmUnavailableError (reported by the CLI as one line) when vLLM is missing.
    mirror_vllm_options(engine_arg_parser(), group)
