"""The `trtllm` engine's options, and the LLM arguments a worker starts TensorRT-LLM with.

The options are TensorRT-LLM's own LLM arguments (`TorchLlmArgs` in
`tensorrt_llm/llmapi/llm_args.py`) that a server user sets most, under the names `trtllm-serve`
gives them, plus `--extra-engine-args FILE`: a YAML mapping of any other LLM arguments, as
`trtllm-serve --extra_llm_api_options` takes it. As there, the YAML wins over the flags; nested
sections (`kv_cache_config`, `cache_transceiver_config`, ...) are merged key by key.

They are declared here rather than read from TensorRT-LLM (as dynamo-vllm mirrors vLLM's
parser): TensorRT-LLM has no argparse parser of its LLM arguments to mirror, and declaring them
lets `dynamo serve --engine trtllm --help` work on machines without it.

Dynamo owns a few arguments and fills them itself: the model directory (`--model`, which the
frontend also reads the tokenizer from), `backend="pytorch"`, `skip_tokenizer_init=True` (the
gateway tokenizes and detokenizes, so every request carries an explicit `end_id`), iteration
statistics (the load metrics) and, when block reuse is on, the KV event buffer (the KV events).
"""

from __future__ import annotations

import argparse
import copy
import os
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from dynamo_core.errors import WorkerConfigError

DEST = "trtllm_"
DEFAULT_EVENT_BUFFER = 1024
TRANSCEIVER_BACKENDS = ("DEFAULT", "UCX", "NIXL", "MPI")
DEFAULT_TRANSCEIVER_BACKEND = "NIXL"
KV_TRANSFER_TIMEOUT_MS = 60_000
# LLM arguments a user may not set: dynamo fills them (see the module header).
OWNED_ARGS = frozenset({"model", "tokenizer", "skip_tokenizer_init", "backend"})


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def read_extra_engine_args(path: str) -> dict[str, Any]:
    """The mapping in a `--extra-engine-args` YAML file; refuses what no LLM would accept."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise WorkerConfigError(f"--extra-engine-args {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise WorkerConfigError(f"--extra-engine-args {path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise WorkerConfigError(f"--extra-engine-args {path}: expected a mapping of LLM argument names to values")
    owned = sorted(OWNED_ARGS & data.keys() - ({"backend"} if data.get("backend") == "pytorch" else set()))
    if owned:
        raise WorkerConfigError(f"--extra-engine-args {path}: dynamo sets {', '.join(owned)} itself "
                                "(use --model; the gateway tokenizes; the PyTorch backend is the one served)")
    return data


def _extra_engine_args_file(text: str) -> str:
    """Checked when the command is parsed, so a bad file fails `dynamo serve`, not its workers;
    kept as an absolute path, which the workers get."""
    path = os.path.abspath(text)
    try:
        read_extra_engine_args(path)
    except WorkerConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--extra-engine-args {path}: ")) from None
    return path


def add_trtllm_options(group: argparse._ArgumentGroup) -> None:
    """The engine's options, added to `dynamo worker` / `dynamo serve` for `--engine trtllm`."""
    add = group.add_argument
    add("--tensor-parallel-size", "--tp-size", dest=DEST + "tensor_parallel_size", type=_positive_int, default=None, metavar="N",
        help="GPUs one worker's engine spans (TensorRT-LLM's tensor_parallel_size; default: 1)")
    add("--max-batch-size", dest=DEST + "max_batch_size", type=_positive_int, default=None, metavar="N",
        help="most requests scheduled in one iteration (max_batch_size; default: TensorRT-LLM's)")
    add("--max-num-tokens", dest=DEST + "max_num_tokens", type=_positive_int, default=None, metavar="N",
        help="most tokens scheduled in one iteration, prompts included (max_num_tokens; default: TensorRT-LLM's)")
    add("--max-seq-len", dest=DEST + "max_seq_len", type=_positive_int, default=None, metavar="N",
        help="longest prompt plus output (max_seq_len; default: the model's); the model card's context length")
    add("--kv-cache-free-gpu-memory-fraction", dest=DEST + "free_gpu_memory_fraction", type=_fraction, default=None, metavar="FRACTION",
        help="share of the GPU memory free after loading the model that the KV cache takes "
             "(kv_cache_config.free_gpu_memory_fraction; default: TensorRT-LLM's 0.9)")
    add("--tokens-per-block", dest=DEST + "tokens_per_block", type=_positive_int, default=None, metavar="N",
        help="tokens per KV cache block (kv_cache_config.tokens_per_block; default: TensorRT-LLM's); the card's block size")
    add("--enable-block-reuse", dest=DEST + "enable_block_reuse", action="store_true", default=False,
        help="reuse cached KV blocks across requests (prefix caching; TensorRT-LLM's default). "
             "It is what KV events describe, so the kv router needs it")
    add("--no-enable-block-reuse", dest=DEST + "no_enable_block_reuse", action="store_true", default=False,
        help="turn block reuse, and with it KV events, off")
    add("--kv-event-buffer-max-size", dest=DEST + "event_buffer_max_size", type=_non_negative_int,
        default=DEFAULT_EVENT_BUFFER, metavar="N",
        help="KV events TensorRT-LLM buffers between reads (kv_cache_config.event_buffer_max_size; "
             "0 turns KV events off; default: %(default)s)")
    add("--cache-transceiver-backend", dest=DEST + "transceiver_backend", choices=TRANSCEIVER_BACKENDS, default=None,
        help="prefill/decode workers: how TensorRT-LLM's cache transceiver moves the KV "
             f"(cache_transceiver_config.backend; default: {DEFAULT_TRANSCEIVER_BACKEND})")
    add("--cache-transceiver-max-tokens-in-buffer", dest=DEST + "transceiver_max_tokens", type=_positive_int,
        default=None, metavar="N", help="prefill/decode workers: tokens the transfer buffer holds "
                           "(cache_transceiver_config.max_tokens_in_buffer; default: TensorRT-LLM's)")
    add("--extra-engine-args", dest=DEST + "extra_engine_args", type=_extra_engine_args_file, default=None,
        metavar="FILE", help="YAML mapping of further TensorRT-LLM LLM arguments, as trtllm-serve's "
                             "--extra_llm_api_options takes it; it wins over the flags above")


def spelled_as_allowed(value: str, allowed: list[str]) -> str:
    """`value` in the spelling a release accepts: TensorRT-LLM's `CacheTransceiverConfig.backend`
    literals were lower case ("nixl") in earlier releases and are upper case ("NIXL") since."""
    return {a.lower(): a for a in allowed}.get(value.lower(), value)


def literals(annotation: Any) -> list[Any]:
    """The values of the `Literal`s inside a type annotation (`Optional[Literal[...]]`)."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in literals(arg)]


def adapted_to_release(kwargs: dict[str, Any], transceiver_fields: dict[str, Any] | None) -> dict[str, Any]:
    """The LLM arguments as the installed release takes them, given its `CacheTransceiverConfig`
    fields (name -> annotation; None: unknown): the backend spelt as its literal, and a
    `kv_transfer_timeout_ms` where it has one, so that KV a prefill holds for a decode that
    never comes (the client left, the first token ended the request) is freed, as dynamo's
    `--kv-hold-timeout` does for the mocker."""
    kwargs = copy.deepcopy(kwargs)
    transceiver = kwargs.get("cache_transceiver_config")
    if not isinstance(transceiver, dict) or transceiver_fields is None:
        return kwargs
    if isinstance(transceiver.get("backend"), str) and "backend" in transceiver_fields:
        allowed = [a for a in literals(transceiver_fields["backend"]) if isinstance(a, str)]
        transceiver["backend"] = spelled_as_allowed(transceiver["backend"], allowed)
    if "kv_transfer_timeout_ms" in transceiver_fields:
        transceiver.setdefault("kv_transfer_timeout_ms", KV_TRANSFER_TIMEOUT_MS)
    return kwargs


@dataclass(frozen=True)
class LlmArguments:
    """What a worker hands `tensorrt_llm.LLM(**kwargs)`, and what it implies for dynamo."""

    kwargs: dict[str, Any]
    kv_events: bool  # block reuse on and an event buffer: TensorRT-LLM publishes KV events
    block_size: int | None  # kv_cache_config.tokens_per_block when set; else TensorRT-LLM's default


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, mappings merged key by key (a YAML section refines the flags')."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _flag(options: argparse.Namespace, name: str) -> Any:
    return getattr(options, DEST + name, None)


def llm_arguments(options: argparse.Namespace, model_path: str, role: str) -> LlmArguments:
    """The LLM arguments for this worker: the flags, the YAML over them, then dynamo's own."""
    if _flag(options, "enable_block_reuse") and _flag(options, "no_enable_block_reuse"):
        raise WorkerConfigError("--enable-block-reuse and --no-enable-block-reuse contradict each other")
    flags: dict[str, Any] = {}
    for name in ("tensor_parallel_size", "max_batch_size", "max_num_tokens", "max_seq_len"):
        if _flag(options, name) is not None:
            flags[name] = _flag(options, name)
    kv: dict[str, Any] = {}
    if _flag(options, "free_gpu_memory_fraction") is not None:
        kv["free_gpu_memory_fraction"] = _flag(options, "free_gpu_memory_fraction")
    if _flag(options, "tokens_per_block") is not None:
        kv["tokens_per_block"] = _flag(options, "tokens_per_block")
    if _flag(options, "enable_block_reuse"):
        kv["enable_block_reuse"] = True
    if _flag(options, "no_enable_block_reuse"):
        kv["enable_block_reuse"] = False
    event_buffer = _flag(options, "event_buffer_max_size")
    kv["event_buffer_max_size"] = DEFAULT_EVENT_BUFFER if event_buffer is None else event_buffer
    flags["kv_cache_config"] = kv
    if role != "agg":
        transceiver: dict[str, Any] = {"backend": _flag(options, "transceiver_backend") or DEFAULT_TRANSCEIVER_BACKEND}
        if _flag(options, "transceiver_max_tokens") is not None:
            transceiver["max_tokens_in_buffer"] = _flag(options, "transceiver_max_tokens")
        flags["cache_transceiver_config"] = transceiver
    extra_path = _flag(options, "extra_engine_args")
    kwargs = _merge(flags, read_extra_engine_args(extra_path) if extra_path else {})

    kv = kwargs.setdefault("kv_cache_config", {})
    if not isinstance(kv, dict):
        raise WorkerConfigError("kv_cache_config in --extra-engine-args must be a mapping")
    reuse = kv.get("enable_block_reuse", True)  # TensorRT-LLM's default
    if not reuse:
        kv["event_buffer_max_size"] = 0  # nothing to report: no block outlives its request
    kv_events = bool(reuse) and int(kv.get("event_buffer_max_size") or 0) > 0
    if role != "agg" and not isinstance(kwargs.get("cache_transceiver_config"), dict):
        raise WorkerConfigError("cache_transceiver_config in --extra-engine-args must be a mapping")
    if role == "agg" and "cache_transceiver_config" in kwargs:
        # An aggregated worker neither sends nor receives KV; a transceiver would only hold memory.
        kwargs.pop("cache_transceiver_config")
    # Iteration statistics feed the load metrics (`get_stats_async` yields nothing without them).
    kwargs.setdefault("enable_iter_perf_stats", True)
    kwargs.update(model=model_path, backend="pytorch", skip_tokenizer_init=True)
    block_size = kv.get("tokens_per_block")
    return LlmArguments(kwargs=kwargs, kv_events=kv_events, block_size=int(block_size) if block_size else None)
