"""SGLang's own server arguments as options of `dynamo worker` / `dynamo serve --engine sglang`.

SGLang describes its `ServerArgs` with an argparse parser (`ServerArgs.add_cli_args`, the one
`python -m sglang.launch_server` uses); `dynamo_core.engines.flag_mirror` mirrors each of its
options into the engine's option group, and the worker hands the flags back to SGLang's own
parser, so `--mem-fraction-static 0.3` means what it means to SGLang's server.
"""

from __future__ import annotations

import argparse

from dynamo_core.engines.flag_mirror import engine_argv, given_flags as _given_flags, mirror_options

DEST_PREFIX = "sglang:"

# Flags that dynamo owns and fills itself: the model comes from `--model` (the directory the
# frontend reads the tokenizer from) and is tokenized by the gateway (token ids in and out);
# clients use `--model-name`; streaming is always incremental; the KV event publisher is wired
# to this worker's event plane; `--mode` sets the disaggregation mode; SGLang's HTTP server
# does not run, its port only seeds the ports SGLang derives (the worker picks a free one); and
# one worker hosts one engine (data parallelism is more workers, each with its own events).
OWNED_FLAGS = frozenset({
    "--model-path", "--model", "--tokenizer-path", "--served-model-name", "--skip-tokenizer-init",
    "--kv-events-config", "--incremental-streaming-output", "--stream-output", "--disaggregation-mode",
    "--host", "--port", "--dp-size", "--dp", "--data-parallel-size",
})


def _is_owned(action: argparse.Action) -> bool:
    return any(flag in OWNED_FLAGS for flag in action.option_strings)


def mirror_sglang_options(source: argparse.ArgumentParser, group: argparse._ArgumentGroup) -> list[str]:
    """Add every option of SGLang's server-argument parser `source` to `group` but those dynamo
    owns (`OWNED_FLAGS`); return the flags added."""
    return mirror_options(source, group, DEST_PREFIX, _is_owned)


def sglang_argv(options: argparse.Namespace) -> list[str]:
    """The SGLang command-line flags the user gave, rebuilt from a worker's engine options."""
    return engine_argv(options, DEST_PREFIX)


def given_flags(options: argparse.Namespace) -> set[str]:
    """The SGLang flags set on the command line (switches and valued options alike)."""
    return _given_flags(options, DEST_PREFIX)
