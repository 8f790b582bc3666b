"""The parsers of `dynamo worker`, `dynamo frontend` and `dynamo serve`, built from the option
declarations in `options.py`.

Built in two passes: `preparse` reads `--engine`/`--router` first, so that the engine's and
router's plugins can add their flags. `dynamo serve` builds its children's parsers here too,
to start each child with exactly the options that child declares (`options.child_args`).
"""

from __future__ import annotations

import argparse
import os

from dynamo_core.cli import guard_options, options
from dynamo_core.protocols.names import ROLES


def preparse(argv: list[str], *names: str) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    if "engine" in names:
        options.add_engine_option(pre)
    if "router" in names:
        options.add_router_option(pre)
    ns, _ = pre.parse_known_args(argv)
    return ns


def _env_int(name: str) -> int | str | None:
    """An integer default from the environment: an int like the parsed value, so `child_args`
    sees a default as a default; a value that is no integer stays a string, which argparse's
    `type=int` then rejects with the flag's name."""
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return value


def build_worker_parser(engine: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynamo worker", description="Run one worker: host an engine and register it in discovery."
    )
    options.add_engine_option(parser)
    options.add_model_options(parser)
    parser.add_argument(
        "--mode", choices=ROLES, default=os.environ.get("DYN_WORKER_MODE", "agg"),
        help="agg: whole requests; prefill: compute prompts and hold their KV for decode workers; decode: pull "
             "that KV and generate, or serve short prompts whole (env DYN_WORKER_MODE; default: %(default)s)",
    )
    options.add_transfer_option(parser)
    parser.add_argument("--host", default=os.environ.get("DYN_WORKER_HOST", "127.0.0.1"),
                        help="address of the worker's request-plane server (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port of the request-plane server (default: any free one)")
    parser.add_argument(
        "--health-port", type=int, default=_env_int("DYN_WORKER_HEALTH_PORT"),
        help="serve HTTP /health (200 once registered, 503 while starting or draining) and /live on this "
             "port of --host, for probes (env DYN_WORKER_HEALTH_PORT; default: no health server)",
    )
    guard_options.add_worker_drain_option(parser)
    options.add_discovery_options(parser)
    options.add_plugin_options(parser, engine=engine, router=None)
    return parser


def build_frontend_parser(router: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynamo frontend", description="Run the OpenAI-compatible HTTP frontend and router."
    )
    options.add_router_option(parser)
    options.add_http_options(parser)
    options.add_disagg_frontend_option(parser)
    guard_options.add_frontend_guard_options(parser)
    options.add_discovery_options(parser)
    options.add_plugin_options(parser, engine=None, router=router)
    return parser


def build_serve_parser(engine: str | None, router: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynamo serve",
        description="Run a frontend and N workers on this machine; Ctrl-C stops them all.",
    )
    options.add_engine_option(parser)
    options.add_router_option(parser)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("DYN_WORKERS", "1")),
                        help="number of worker processes (env DYN_WORKERS; default: %(default)s)")
    group = parser.add_argument_group("disaggregated serving")
    group.add_argument("--disagg", action="store_true",
                       help="run prefill and decode workers (--prefill-workers, --decode-workers) instead of --workers")
    # None when not given, so that serve can tell them from defaults (1 each with --disagg).
    group.add_argument("--prefill-workers", type=int, default=None, help="with --disagg: prefill workers (default: 1)")
    group.add_argument("--decode-workers", type=int, default=None, help="with --disagg: decode workers (default: 1)")
    options.add_transfer_option(group)
    options.add_disagg_frontend_option(group)
    options.add_model_options(parser)
    options.add_http_options(parser)
    guard_options.add_frontend_guard_options(parser)
    guard_options.add_worker_drain_option(parser)
    options.add_discovery_options(parser)
    options.add_plugin_options(parser, engine=engine, router=router)
    return parser
