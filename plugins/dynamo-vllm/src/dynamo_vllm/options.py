"""vLLM's own engine arguments as options of `dynamo worker` / `dynamo serve --engine vllm`.

vLLM describes its engine arguments with an argparse parser (`AsyncEngineArgs.add_cli_args`);
`dynamo_core.engines.flag_mirror` mirrors every one of its options into the engine's option
group, and the worker later hands the flags back to vLLM's own parser, so a flag means exactly
what it means to `vllm serve`.

"""

from __future__ import annotations

import argparse

from dynamo_core.engines.flag_mirror import engine_argv, given_flags as _given_flags, mirror_options

DEST_PREFIX = "vllm:"

# Flags that dynamo owns and fills itself: the model comes from `--model` (the same directory
# the frontend reads the tokenizer from), clients use `--model-name`, the KV event publisher is
# wired to this worker's event plane, and one worker hosts one engine (data parallelism is
# more workers, each with its own events and load).
OWNED_FLAGS = frozenset({"--model", "--served-model-name", "--kv-events-config"})
OWNED_FLAG_PREFIXES = ("--data-parallel", "-dp")


def _is_owned(action: argparse.Action) -> bool:
    return any(
        flag in OWNED_FLAGS or flag.startswith(OWNED_FLAG_PREFIXES) for flag in action.option_strings
    )


def mirror_vllm_options(source: argparse.ArgumentParser, group: argparse._ArgumentGroup) -> list[str]:
    """Add every option of vLLM's engine-argument parser `source` to `group` but those dynamo
    owns (`OWNED_FLAGS`); return the flags added."""
    return mirror_options(source, group, DEST_PREFIX, _is_owned)


def vllm_argv(options: argparse.Namespace) -> list[str]:
    """The vLLM command-line flags the user gave, rebuilt from a worker's engine options."""
    return engine_argv(options, DEST_PREFIX)


def given_flags(options: argparse.Namespace) -> set[str]:
    """The vLLM flags set on the command line (switches and valued options alike)."""
    return _given_flags(options, DEST_PREFIX)
