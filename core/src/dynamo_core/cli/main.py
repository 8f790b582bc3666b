"""`dynamo`: serve, frontend, worker, plugins."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys

from dynamo_core import __version__
from dynamo_core.cli import guard_options, options
from dynamo_core.cli.configs import frontend_config_from, worker_config_from
from dynamo_core.cli.parsers import build_frontend_parser, build_serve_parser, build_worker_parser, preparse
from dynamo_core.plugins import PluginHookError, PluginNotInstalledError, get_registry

log = logging.getLogger("dynamo_core.cli")


def setup_logging(role: str) -> None:
    level_name = os.environ.get("DYN_LOG", "info").upper()
    level = getattr(logging, level_name, None)
    if not isinstance(level, int):
        level = logging.INFO
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)-7s {role}[%(process)d] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,  # libraries imported earlier may have configured logging already
    )


def run_async(coro) -> None:
    """Run on uvloop when it is installed (a faster event loop for the serving path)."""
    if os.environ.get("DYN_UVLOOP", "1") != "0":
        try:
            import uvloop

            uvloop.run(coro)
            return
        except ImportError:
            pass
    asyncio.run(coro)


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


def cmd_worker(argv: list[str]) -> int:
    pre = preparse(argv, "engine")
    parser = build_worker_parser(pre.engine)
    ns = parser.parse_args(argv)
    setup_logging("worker")
    from dynamo_core.errors import WorkerConfigError
    from dynamo_core.worker.worker import Worker

    if ns.model and not os.path.isdir(ns.model):
        parser.error(f"--model {ns.model}: not a directory (an HF-format model directory is expected)")
    if ns.mode != "agg":  # only prefill and decode workers move KV
        get_registry().get("transfer", ns.transfer)  # fail early, naming the package to install
    try:
        worker = Worker(worker_config_from(ns, parser))
        run_async(worker.run_until_signalled())
    except WorkerConfigError as exc:
        print(f"dynamo worker: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_frontend(argv: list[str]) -> int:
    pre = preparse(argv, "router")
    parser = build_frontend_parser(pre.router)
    ns = parser.parse_args(argv)
    guard_options.check_tls(parser, ns)
    guard_options.check_api_key_file(parser, ns)
    setup_logging("frontend")
    from dynamo_core.frontend.http_processes import claim_ready_pipe, register_http_process

    claim_ready_pipe()
    register_http_process()
    if ns.http_workers > 1:
        from dynamo_core.cli.frontend_processes import run_http_processes

        return run_http_processes(ns, parser)
    from dynamo_core.frontend.app import run_frontend

    run_async(run_frontend(frontend_config_from(ns, parser)))
    return 0


def cmd_serve(argv: list[str]) -> int:
    pre = preparse(argv, "engine", "router")
    parser = build_serve_parser(pre.engine, pre.router)
    ns = parser.parse_args(argv)
    if ns.workers < 1:
        parser.error("--workers must be at least 1")
    if ns.disagg:
        ns.prefill_workers = 1 if ns.prefill_workers is None else ns.prefill_workers
        ns.decode_workers = 1 if ns.decode_workers is None else ns.decode_workers
        if ns.prefill_workers < 1 or ns.decode_workers < 1:
            parser.error("--disagg needs at least one prefill and one decode worker")
        if ns.discovery == "mem":
            parser.error("--disagg runs each worker as its own process: use --discovery file (the default) or etcd")
        get_registry().get("transfer", ns.transfer)
    elif ns.prefill_workers is not None or ns.decode_workers is not None:
        parser.error("--prefill-workers and --decode-workers need --disagg")
    if ns.model and not os.path.isdir(ns.model):
        parser.error(f"--model {ns.model}: not a directory (an HF-format model directory is expected)")
    if ns.http_workers > 1 and ns.discovery == "mem":
        parser.error("--http-workers runs each HTTP frontend as its own process: use --discovery file (the default) or etcd")
    guard_options.check_tls(parser, ns)
    guard_options.check_api_key_file(parser, ns)
    setup_logging("serve")
    from dynamo_core.cli.serve import serve

    return serve(ns, parser)


def cmd_plugins(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dynamo plugins", description="List installed engines, routers and backends.")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ns = parser.parse_args(argv)
    rows = sorted(
        (
            {"kind": r.kind, "name": r.name, "distribution": r.distribution,
             "description": getattr(r.spec, "description", "")}
            for r in get_registry().registrations()
        ),
        key=lambda r: (r["kind"], r["name"]),
    )
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    widths = [max(len(r[k]) for r in rows + [{"kind": "KIND", "name": "NAME", "distribution": "DISTRIBUTION"}])
              for k in ("kind", "name", "distribution")]
    print(f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  {'DISTRIBUTION':<{widths[2]}}  DESCRIPTION")
    for r in rows:
        print(f"{r['kind']:<{widths[0]}}  {r['name']:<{widths[1]}}  {r['distribution']:<{widths[2]}}  {r['description']}")
    return 0


def cmd_check(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dynamo check",
        description="Preflight report: Python, plugins, GPU, KV transfer, etcd/NATS reachability, free ports. "
                    "Exits 1 on a problem.",
    )
    options.add_engine_option(parser)
    options.add_router_option(parser)
    options.add_http_options(parser, serving=False)
    options.add_discovery_options(parser, serving=False)
    parser.add_argument(
        "--transfer", default=os.environ.get("DYN_TRANSFER"),
        help="also check that this KV-transfer backend moves bytes between two agents here (prefill/decode workers)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ns = parser.parse_args(argv)
    from dynamo_core.cli.check import print_report, run_checks

    return print_report(run_checks(ns), ns.json)


def cmd_chat(argv: list[str]) -> int:
    from dynamo_core.cli.chat import cmd_chat as chat

    return chat(argv)


COMMANDS = {
    "serve": (cmd_serve, "run a frontend and workers on this machine"),
    "frontend": (cmd_frontend, "run the HTTP frontend and router"),
    "worker": (cmd_worker, "run one worker hosting an engine"),
    "plugins": (cmd_plugins, "list installed plugins"),
    "check": (cmd_check, "preflight report: plugins, GPU, etcd/NATS, ports"),
    "chat": (cmd_chat, "chat in the terminal with a served model (or any OpenAI-compatible URL)"),
}


def _usage() -> str:
    lines = [f"usage: dynamo COMMAND [options]   (dynamo-core {__version__})", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`dynamo COMMAND --help` lists a command's options; with --engine/--router it adds theirs."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"dynamo-core {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"dynamo: unknown command '{argv[0]}'\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        return command[0](argv[1:])
    except (PluginNotInstalledError, PluginHookError) as exc:
        print(f"dynamo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left (`dynamo plugins --json | head`): stop quietly, as Unix tools do;
        # stdout goes to /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
