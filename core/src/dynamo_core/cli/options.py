"""Command-line flags shared by `serve`, `frontend` and `worker`, with `DYN_*` env defaults.

Engine and router plugins add their own flags through the `dynamo_engine_options` and
`dynamo_router_options` hooks once `--engine`/`--router` are known, so the parser is built in
two passes: a first one reads just those two names.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Collection

from dynamo_core.frontend.reasoning import REASONING_PARSERS
from dynamo_core.frontend.tool_parsers import TOOL_PARSERS

from dynamo_core.plugins import get_registry

ENGINE_GROUP_TITLE = "engine options"
ROUTER_GROUP_TITLE = "router options"


def env_default(name: str, default):
    value = os.environ.get(name)
    if value is None:
        return default
    return type(default)(value) if default is not None and not isinstance(default, str) else value


def add_discovery_options(parser: argparse.ArgumentParser, serving: bool = True) -> None:
    """`serving=False` (`dynamo check`): without --namespace and --lease-ttl, which only
    matter to running processes."""
    group = parser.add_argument_group("runtime")
    if serving:
        group.add_argument(
            "--namespace", default=env_default("DYN_NAMESPACE", "dynamo"),
            help="namespace shared by the frontend and its workers (env DYN_NAMESPACE; default: %(default)s)",
        )
    group.add_argument(
        "--discovery", default=env_default("DYN_DISCOVERY", "file"),
        help="discovery backend: mem (one process), file (one host), etcd (many hosts; --etcd-endpoints), "
             "or a plugin's (env DYN_DISCOVERY; default: %(default)s)",
    )
    group.add_argument(
        "--file-discovery-dir", default=os.environ.get("DYN_FILE_DISCOVERY_DIR", ""),
        help="directory of the file discovery store (env DYN_FILE_DISCOVERY_DIR; default: a per-user temp dir)",
    )
    group.add_argument(
        "--etcd-endpoints", default=os.environ.get("ETCD_ENDPOINTS", ""),
        help="etcd discovery: comma-separated endpoints (env ETCD_ENDPOINTS; default: http://127.0.0.1:2379)",
    )
    group.add_argument(
        "--request-plane", choices=["tcp", "nats"], default=env_default("DYN_REQUEST_PLANE", "tcp"),
        help="how requests reach workers (env DYN_REQUEST_PLANE; default: %(default)s)",
    )
    group.add_argument(
        "--event-plane", choices=["tcp", "nats"], default=env_default("DYN_EVENT_PLANE", "tcp"),
        help="how workers publish KV events and load (env DYN_EVENT_PLANE; default: %(default)s)",
    )
    group.add_argument(
        "--nats-url", default=os.environ.get("NATS_SERVER", ""),
        help="NATS server(s) for the nats planes (env NATS_SERVER; default: nats://127.0.0.1:4222)",
    )
    if serving:
        group.add_argument(
            "--lease-ttl", type=float, default=env_default("DYN_LEASE_TTL", 3.0),
            help="seconds after which a silent worker is dropped from discovery (env DYN_LEASE_TTL; default: %(default)s)",
        )


def add_http_options(parser: argparse.ArgumentParser, serving: bool = True) -> None:
    """`serving=False` (`dynamo check`): the listen address only, not the preprocessing flags."""
    group = parser.add_argument_group("http")
    group.add_argument("--http-host", default=env_default("DYN_HTTP_HOST", "127.0.0.1"), help="listen address (default: %(default)s)")
    group.add_argument("--http-port", type=int, default=env_default("DYN_HTTP_PORT", 8000), help="listen port (default: %(default)s)")
    if not serving:
        return
    group.add_argument(
        "--http-workers", type=http_workers_option, default=env_default("DYN_HTTP_WORKERS", "1"),
        help="frontend processes serving the port together (SO_REUSEPORT), each with its own event loop, "
             "tokenizer and router, sharing their in-flight requests; 'auto': one per usable CPU "
             "(env DYN_HTTP_WORKERS; default: %(default)s)",
    )
    group.add_argument(
        "--preprocess-workers", type=non_negative_int,
        # None: neither the flag nor the environment gave a count, so it is sized to the host
        # (`preprocess_workers_of`), and `--http-workers N` divides that default among its N.
        # argparse converts the environment's string as it would the flag's.
        default=env_default("DYN_PREPROCESS_WORKERS", None),
        help="processes that template and tokenize prompts (over --preprocess-min-chars) off the event loop; "
             "0: prompts over 8192 characters go to a thread of the frontend instead, which still stalls "
             f"other streams while it encodes (env DYN_PREPROCESS_WORKERS; default: {default_preprocess_workers()}, "
             f"the usable CPUs less one, at least 1 and at most {MAX_DEFAULT_PREPROCESS_WORKERS}; a value given "
             "is not capped)",
    )
    group.add_argument(
        "--preprocess-min-chars", type=non_negative_int,
        default=env_default("DYN_PREPROCESS_MIN_CHARS", default_preprocess_min_chars()),
        help="prompts longer than this many characters (a chat request: its body, tools and documents "
             "included) go to the preprocessing processes "
             "(env DYN_PREPROCESS_MIN_CHARS; default: %(default)s: 1024 with 8 or more CPUs, else 8192)",
    )


def default_preprocess_min_chars() -> int:
    """With cores to spare (8 or more), any prompt but a short one is cheaper to send to the
    pool (about 0.1 ms of the loop) than to encode on the loop (about 0.6 µs a character).
    On fewer cores the pool competes with the loop itself: only long prompts go."""
    return 1024 if usable_cpus() >= 8 else 8192


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# The default pool's ceiling: a frontend's event loop feeds only so many processes, and each
# idle one still holds an interpreter and a tokenizer per model (63 of them on a 64-CPU host).
MAX_DEFAULT_PREPROCESS_WORKERS = 16


def default_preprocess_workers() -> int:
    """The usable CPUs less one (the event loop's), at least one and at most
    MAX_DEFAULT_PREPROCESS_WORKERS: each process tokenizes about seven 16k-token prompts a
    second, so long prompts scale with the host's cores up to that. An explicit
    `--preprocess-workers` is not capped."""
    return min(MAX_DEFAULT_PREPROCESS_WORKERS, max(1, usable_cpus() - 1))


def preprocess_workers_of(ns: argparse.Namespace) -> int:
    """The prompt pool's size: the one given (flag or DYN_PREPROCESS_WORKERS), else the host's default."""
    return default_preprocess_workers() if ns.preprocess_workers is None else ns.preprocess_workers


def http_workers_option(text: str) -> int:
    """`--http-workers`: a count of at least 1, or 'auto' for the usable CPUs."""
    if text == "auto":
        return usable_cpus()
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_router_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--router", default=env_default("DYN_ROUTER", "round-robin"),
        help="routing policy: %s, or a plugin's (env DYN_ROUTER; default: %%(default)s)"
        % ", ".join(get_registry().names("router")),
    )


def add_engine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine", default=env_default("DYN_ENGINE", "mocker"),
        help="inference engine: %s, or a plugin's (env DYN_ENGINE; default: %%(default)s)"
        % ", ".join(get_registry().names("engine")),
    )


def _looks_like_template(value: str) -> bool:
    return "{{" in value or "{%" in value


def chat_template_option(value: str) -> str:
    """`--chat-template`: a readable file (kept as its absolute path, which children get), or
    a template given inline (as vLLM accepts it)."""
    if _looks_like_template(value):
        return value
    path = os.path.abspath(value)
    try:
        with open(path, encoding="utf-8") as f:
            f.read(1)
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read chat template {value!r}: {exc}") from None
    return path


def read_chat_template(value: str | None) -> str | None:
    """The template text a `--chat-template` value stands for."""
    if value is None or _looks_like_template(value):
        return value
    with open(value, encoding="utf-8") as f:
        return f.read()


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", default=os.environ.get("DYN_MODEL"),
        help="HF-format model directory (tokenizer and config); omit for the built-in tokenizer (mocker/echo)",
    )
    group.add_argument("--model-name", default=None, help="name clients use in requests (default: the directory's name, or the engine's)")
    group.add_argument(
        "--chat-template", type=chat_template_option, default=None, metavar="FILE",
        help="a Jinja chat template file (or the template itself) replacing the model's own",
    )
    group.add_argument(
        "--reasoning-parser", choices=sorted(REASONING_PARSERS), default=None,
        help="split the model's <think> output into reasoning_content and content (published in the model card)",
    )
    group.add_argument(
        "--tool-call-parser", choices=sorted(TOOL_PARSERS), default=None,
        help="read tool calls out of the model's chat replies in this format (published in the model card)",
    )


def add_transfer_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transfer", default=env_default("DYN_TRANSFER", "tcp"),
        help="KV-transfer backend of prefill and decode workers: %s, or a plugin's "
             "(env DYN_TRANSFER; default: %%(default)s)" % ", ".join(get_registry().names("transfer")),
    )


def add_disagg_frontend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--disagg-min-prompt-tokens", type=non_negative_int, default=env_default("DYN_DISAGG_MIN_PROMPT_TOKENS", 512),
        help="with prefill workers present, prompts shorter than this are served whole by a decode worker, "
             "since moving their KV costs more than computing it there (env DYN_DISAGG_MIN_PROMPT_TOKENS; "
             "default: %(default)s)",
    )


def add_plugin_options(parser: argparse.ArgumentParser, *, engine: str | None, router: str | None) -> None:
    """Let the selected engine's and router's plugins add their flags."""
    hooks = get_registry().pm.hook
    if engine is not None:
        get_registry().get("engine", engine)  # fail early, naming the package to install
        group = parser.add_argument_group(ENGINE_GROUP_TITLE, f"options of engine '{engine}'")
        hooks.dynamo_engine_options(engine=engine, group=group)
    if router is not None:
        get_registry().get("router", router)
        group = parser.add_argument_group(ROUTER_GROUP_TITLE, f"options of router '{router}'")
        hooks.dynamo_router_options(router=router, group=group)


def child_args(
    source: argparse.ArgumentParser,
    ns: argparse.Namespace,
    target: argparse.ArgumentParser,
    always: Collection[str] = (),
    skip: Collection[str] = (),
) -> list[str]:
    """The values `source` parsed into `ns`, as flags of the options that `target` (a child's
    parser) declares too, in `source`'s order: how `dynamo serve` starts its children from the
    one declaration of each option. An option goes only when its value differs from its default
    (a child computes the same default from the same environment), except the dests in `always`
    (set ones go anyway, so `ps` shows what a child is); dests in `skip` never go. The model
    directory goes as an absolute path."""
    declared = {action.dest for action in target._actions if action.option_strings}
    args: list[str] = []
    for action in source._actions:
        dest = action.dest
        if not action.option_strings or dest not in declared or dest in skip or dest == "help":
            continue
        value = getattr(ns, dest, None)
        if dest == "model" and value:
            args += [action.option_strings[-1], os.path.abspath(value)]
            continue
        if value == action.default and not (dest in always and value not in (None, "")):
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if action.nargs == 0:  # store_true / store_false: the flag alone says it
            args.append(flag)
        elif isinstance(value, list):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def group_namespace(parser: argparse.ArgumentParser, title: str, ns: argparse.Namespace) -> argparse.Namespace:
    """The values of one option group as a namespace of their own."""
    out = argparse.Namespace()
    for group in parser._action_groups:
        if group.title == title:
            for action in group._group_actions:
                setattr(out, action.dest, getattr(ns, action.dest, action.default))
    return out
