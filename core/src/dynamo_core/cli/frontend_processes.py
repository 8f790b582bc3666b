"""`dynamo frontend --http-workers N` on the command line: the children's arguments, and the
start of the supervisor (`frontend/http_processes.py` says what it keeps)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from dynamo_core.cli import guard_options, options
from dynamo_core.cli.check import check_port
from dynamo_core.cli.serve import dynamo_command
from dynamo_core.frontend.http_processes import HttpProcessGroup

log = logging.getLogger("dynamo_core.cli.frontend_processes")


def preprocess_workers_per_process(total_default: int, processes: int) -> int:
    """The host-sized default pool split among ``processes``; 0 (a thread) once it is
    thinner than one process each, since the HTTP processes already use the cores."""
    return total_default // processes


def child_argv(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """One child's `dynamo frontend` arguments: the supervisor's own, one HTTP process each."""
    args = options.child_args(parser, ns, parser, always={"router"},
                              skip={"http_workers", "preprocess_workers", *guard_options.API_KEY_DESTS})
    preprocess = ns.preprocess_workers
    if preprocess is None:  # not given: the host's default, divided among the processes
        preprocess = preprocess_workers_per_process(options.default_preprocess_workers(), ns.http_workers)
    return ["frontend", *args, "--http-workers", "1", "--preprocess-workers", str(preprocess)]


def run_http_processes(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`dynamo frontend --http-workers N` (N > 1): check the port, then supervise N children."""
    port = check_port(ns.http_host, ns.http_port)
    if port.status != "ok":
        print(f"dynamo frontend: error: cannot listen on {ns.http_host}:{ns.http_port}: {port.detail}; "
              "choose another port with --http-port", file=sys.stderr)
        return 1
    env = dict(os.environ)
    keys = guard_options.api_keys_from(ns)
    if keys:  # not on the children's command lines, where `ps` would show them
        env["DYN_API_KEYS"] = ",".join(keys)
    log.info("starting %d HTTP processes on %s:%d", ns.http_workers, ns.http_host, ns.http_port)
    group = HttpProcessGroup(dynamo_command(), child_argv(ns, parser), ns.http_workers, env)
    return asyncio.run(group.run())
