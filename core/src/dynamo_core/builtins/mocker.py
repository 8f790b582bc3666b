"""Built-in engine `mocker`: a simulated engine with a real scheduler, paged KV cache and timing model."""

from __future__ import annotations

from dynamo_core import hookimpl
from dynamo_core.engines.base import Engine, EngineContext, EngineSpec
from dynamo_core.hookspecs import OptionGroup


def _create(context: EngineContext) -> Engine:
    from dynamo_core.engines.mocker.engine import MockerEngine

    return MockerEngine.from_context(context)


@hookimpl
def dynamo_engines() -> list[EngineSpec]:
    return [EngineSpec("mocker", _create, "simulated engine: real scheduler, paged KV cache, timing model")]


@hookimpl
def dynamo_engine_options(engine: str, group: OptionGroup) -> None:
    if engine == "mocker":
        from dynamo_core.engines.mocker.options import add_mocker_options

        add_mocker_options(group)
