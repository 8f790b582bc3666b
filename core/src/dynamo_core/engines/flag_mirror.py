"""An engine's own argparse options mirrored as options of `dynamo worker` / `dynamo serve`.

Engines such as vLLM and SGLang describe their arguments with an argparse parser. Rather than
keep a copy of each list, every option of the engine's parser is mirrored into the engine's
option group, and the worker later hands the flags back to the engine's own parser, so a flag
means exactly what it means to the engine's own server.

The mirror keeps values as the text the user typed, for two reasons: `dynamo serve` passes the
options to its workers as flags again (`str(value)` for each non-default value), which only
round-trips for text; and some values (JSON configs, human-readable sizes such as `4G`) are
parsed into objects that do not print back as valid flags. Each value is still checked with the
engine's own type at parse time, so a bad value fails in `dynamo serve`, not in a worker.

A mirrored option's `dest` is a prefix plus its flag (`vllm:--max-model-len`), which makes the
worker's namespace enough to rebuild the command line (`engine_argv`) with no parser at hand.
`--x/--no-x` switches (BooleanOptionalAction) become two plain switches (`--x`, `--no-x`),
since the core passes only `store_true`/`store_false` switches through as bare flags.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def _long_flag(option_strings: Sequence[str]) -> str:
    return next((s for s in option_strings if s.startswith("--")), option_strings[0])


def _checked_text(convert: Callable[[str], Any] | None, choices: Iterable[Any] | None, flag: str):
    """An argparse `type` that validates with the engine's own converter but keeps the typed text."""
    allowed = None if choices is None else [str(c) for c in choices]

    def check(text: str) -> str:
        if allowed is not None and text not in allowed:
            raise argparse.ArgumentTypeError(f"invalid choice {text!r} for {flag} (choose from {', '.join(allowed)})")
        if convert is not None:
            try:
                convert(text)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                raise argparse.ArgumentTypeError(f"invalid value {text!r} for {flag}: {exc}") from None
        return text

    check.__name__ = getattr(convert, "__name__", "value")  # argparse names it in errors
    return check


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest.upper()


def _is_switch(action: argparse.Action) -> bool:
    return action.nargs == 0


def mirror_options(
    source: argparse.ArgumentParser, group: argparse._ArgumentGroup, prefix: str,
    owned: Callable[[argparse.Action], bool] = lambda action: False,
) -> list[str]:
    """Add every option of an engine's parser `source` to `group`, each with dest
    `prefix + flag`; return the flags added.

    Skipped: help, the flags the caller owns (`owned(action)`), and any flag the group's parser
    already has (a core option of the same name wins).
    """
    taken = group._option_string_actions  # shared with the parser the group belongs to
    added: list[str] = []
    for action in source._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings or owned(action):
            continue
        help_text = action.help if action.help != argparse.SUPPRESS else argparse.SUPPRESS
        if isinstance(action, argparse.BooleanOptionalAction):
            positive = [s for s in action.option_strings if not s.startswith("--no-")]
            negative = [s for s in action.option_strings if s.startswith("--no-")]
            for flags, text in ((positive, help_text), (negative, argparse.SUPPRESS)):
                flags = [f for f in flags if f not in taken]
                if flags:
                    group.add_argument(*flags, dest=prefix + _long_flag(flags), action="store_true",
                                       default=False, help=text)
                    added.append(_long_flag(flags))
            continue
        flags = [f for f in action.option_strings if f not in taken]
        if not flags:
            continue
        dest = prefix + _long_flag(flags)
        if _is_switch(action):
            group.add_argument(*flags, dest=dest, action="store_true", default=False, help=help_text)
        else:
            # `nargs="?"` options (a bare flag meaning "on") are mirrored as taking a value:
            # the bare form has no text to carry through `dynamo serve`.
            nargs = None if action.nargs == "?" else action.nargs
            group.add_argument(
                *flags, dest=dest, nargs=nargs, default=None, metavar=_metavar(action), help=help_text,
                type=_checked_text(action.type, action.choices, _long_flag(flags)),
            )
        added.append(_long_flag(flags))
    return added


def engine_argv(options: argparse.Namespace, prefix: str) -> list[str]:
    """The engine's command-line flags the user gave, rebuilt from a worker's engine options."""
    argv: list[str] = []
    for dest, value in sorted(vars(options).items()):
        if not dest.startswith(prefix) or value is None or value is False:
            continue
        flag = dest[len(prefix):]
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def given_flags(options: argparse.Namespace, prefix: str) -> set[str]:
    """The engine flags set on the command line (switches and valued options alike)."""
    return {
        dest[len(prefix):]
        for dest, value in vars(options).items()
        if dest.startswith(prefix) and value is not None and value is not False
    }
