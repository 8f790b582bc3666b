"""Built-in engine `echo`: streams back the prompt's last message (tests the postprocessing path)."""

from __future__ import annotations

from dynamo_core import hookimpl
from dynamo_core.engines.base import Engine, EngineContext, EngineSpec
from dynamo_core.hookspecs import OptionGroup


def _create(context: EngineContext) -> Engine:
    from dynamo_core.engines.echo import EchoEngine

    return EchoEngine.from_context(context)


@hookimpl
def dynamo_engines() -> list[EngineSpec]:
    return [EngineSpec("echo", _create, "streams back the tokens of the prompt's last message")]


@hookimpl
def dynamo_engine_options(engine: str, group: OptionGroup) -> None:
    if engine == "echo":
        from dynamo_core.engines.echo import add_echo_options

        add_echo_options(group)
