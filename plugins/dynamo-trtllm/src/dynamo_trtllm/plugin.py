"""Hook implementations of dynamo-trtllm: the `trtllm` engine and its options."""

from __future__ import annotations

import argparse

from dynamo_core import hookimpl
from dynamo_core.engines.base import Engine, EngineContext, EngineSpec
from dynamo_trtllm.availability import require_trtllm


def _create(context: EngineContext) -> Engine:
    from dynamo_trtllm.engine import TrtllmEngine

    return TrtllmEngine.from_context(context)


@hookimpl
def dynamo_engines() -> list[EngineSpec]:
    # Listing the engine needs no TensorRT-LLM: `dynamo plugins` works on any machine.
    return [EngineSpec("trtllm", _create, "TensorRT-LLM LLM API (PyTorch backend): in-flight batching, "
                                          "KV block reuse, disaggregation through its cache transceiver")]


def _runtime_present(_: str) -> str:
    require_trtllm()  # raises TrtllmUnavailableError, which the CLI reports as one line
    return ""


@hookimpl
def dynamo_engine_options(engine: str, group: argparse._ArgumentGroup) -> None:
    if engine != "trtllm":
        return
    from dynamo_trtllm.options import add_trtllm_options

    add_trtllm_options(group)
    # Fail `dynamo serve` / `dynamo worker` before anything starts when TensorRT-LLM is missing,
    # yet let `--help` list the options: argparse converts a string default with the option's
    # `type` only once parsing has finished, which `--help` never reaches.
    group.add_argument("--trtllm-runtime-check", dest="trtllm_runtime_check", default="",
                       type=_runtime_present, help=argparse.SUPPRESS)
