"""Hook implementations of dynamo-sglang: the `sglang` engine and its options (SGLang's own)."""

from __future__ import annotations

from dynamo_core import hookimpl
from dynamo_core.engines.base import Engine, EngineContext, EngineSpec
from dynamo_core.hookspecs import OptionGroup


def _create(context: EngineContext) -> Engine:
    from dynamo_sglang.engine import SglangEngine

    return SglangEngine.from_context(context)


@hookimpl
def dynamo_engines() -> list[EngineSpec]:
    # Listing the engine needs no SGLang: `dynamo plugins` works on any machine.
    return [EngineSpec("sglang", _create, "SGLang Engine: RadixAttention prefix cache, continuous batching, PD disaggregation")]


@hookimpl
def dynamo_engine_options(engine: str, group: OptionGroup) -> None:
    if engine != "sglang":
        return
    from dynamo_sglang.server_args import server_arg_parser
    from dynamo_sglang.options import mirror_sglang_options

    # Raises SglangUnavailableError (reported by the CLI as one line) when SGLang is missing.
    mirror_sglang_options(server_arg_parser(), group)
