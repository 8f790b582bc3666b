"""`dynamo serve`: a frontend and N workers on this machine, stopped together.

Each piece runs as its own process, started as `dynamo frontend ...` / `dynamo worker ...`,
so `ps` shows what each one is and each can be restarted or replaced by hand; they are
supervised as one `ChildGroup` (`runtime/children.py`), which restarts a worker that exits.
With `--discovery mem` (one process by definition) they run as tasks of this process instead.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import shutil
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request

from dynamo_core.cli import guard_options, options
from dynamo_core.cli.parsers import build_frontend_parser, build_worker_parser
from dynamo_core.runtime.children import ChildExit, ChildGroup, die_with_parent
from dynamo_core.runtime.tasks import cancel_and_wait

log = logging.getLogger("dynamo_core.serve")
READY_TIMEOUT_S = 300.0


def dynamo_command() -> list[str]:
    """How to start `dynamo` again: the console script when there is one, so `ps` reads well."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "dynamo" and os.path.exists(argv0):
        return [sys.executable, os.path.abspath(argv0)]
    found = shutil.which("dynamo", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if found:
        return [sys.executable, found]
    return [sys.executable, "-m", "dynamo_core.cli.main"]


@functools.lru_cache(maxsize=8)
def _child_parser(command: str, plugin: str) -> argparse.ArgumentParser:
    """A child's own parser (built once: an engine's options may take a while to mirror)."""
    return build_worker_parser(plugin) if command == "worker" else build_frontend_parser(plugin)


def worker_argv(ns: argparse.Namespace, parser: argparse.ArgumentParser, mode: str = "agg") -> list[str]:
    """`dynamo worker` with the serve options a worker declares; prefill and decode workers
    get their mode and the transfer backend, aggregated ones neither."""
    target = _child_parser("worker", ns.engine)
    if mode == "agg":
        return ["worker", *options.child_args(parser, ns, target, always={"engine"}, skip={"transfer"})]
    return ["worker", *options.child_args(parser, ns, target, always={"engine", "transfer"}), "--mode", mode]


def frontend_argv(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """`dynamo frontend` with the serve options a frontend declares."""
    # API keys go in the frontend's environment (`Supervisor._spawn`), not on its command line.
    return ["frontend", *options.child_args(parser, ns, _child_parser("frontend", ns.router), always={"router"},
                                            skip=guard_options.API_KEY_DESTS)]


def worker_roles(ns: argparse.Namespace) -> list[str]:
    """The mode of each worker process to start."""
    if ns.disagg:
        return ["prefill"] * ns.prefill_workers + ["decode"] * ns.decode_workers
    return ["agg"] * ns.workers


def describe_workers(ns: argparse.Namespace) -> str:
    http = f", http processes={ns.http_workers}" if ns.http_workers > 1 else ""
    if ns.disagg:
        return f"prefill workers={ns.prefill_workers}, decode workers={ns.decode_workers}, transfer={ns.transfer}{http}"
    return f"workers={ns.workers}{http}"


class Supervisor:
    """The frontend and the workers of `dynamo serve`, as one `ChildGroup`: a worker that exits
    is restarted (or given up on); the frontend's exit, or no worker left, stops everything."""

    def __init__(self, ns: argparse.Namespace, parser: argparse.ArgumentParser):
        self.ns, self.parser = ns, parser
        self.roles = worker_roles(ns)
        self.children = ChildGroup(log, giving_up="giving up on it")
        self.given_up: set[str] = set()
        self._stopping = False
        self._helpers: set[asyncio.Task] = set()  # the supervisor's own tasks, cancelled when it ends
        self._scheme = "https" if ns.tls_cert else "http"
        self._api_keys = guard_options.api_keys_from(ns)  # read once: only the frontend gets them

    async def _spawn(self, name: str, argv: list[str]) -> asyncio.subprocess.Process:
        command = dynamo_command() + argv
        log.debug("starting %s: %s", name, " ".join(command))
        env = None
        if name == "frontend" and self._api_keys:  # not on its command line, where `ps` would show them
            env = {**os.environ, "DYN_API_KEYS": ",".join(self._api_keys)}
        return await asyncio.create_subprocess_exec(*command, preexec_fn=die_with_parent, env=env)

    async def _wait_ready(self) -> bool:
        url = f"{self._scheme}://{self.ns.http_host}:{self.ns.http_port}/health"
        deadline = time.monotonic() + READY_TIMEOUT_S
        frontend = self.children.procs["frontend"]
        while time.monotonic() < deadline and not self._stopping:
            if frontend.returncode is not None:
                return False
            try:
                body = await asyncio.to_thread(_fetch, url)
                if body is not None and body.count('"instance_id"') >= len(self.roles):
                    return True
            except OSError:
                pass
            await asyncio.sleep(0.25)
        return False

    async def _announce_ready(self, stop: asyncio.Event) -> None:
        if await self._wait_ready():
            print(
                f"dynamo serving on {self._scheme}://{self.ns.http_host}:{self.ns.http_port}/v1 "
                f"(engine={self.ns.engine}, router={self.ns.router}, {describe_workers(self.ns)}); Ctrl-C to stop",
                flush=True,
            )
        elif not stop.is_set():
            log.warning("the workers did not all register within %.0f s; still serving what did", READY_TIMEOUT_S)

    async def run(self) -> int:
        """Supervise until stopped; however that ends (an error in the supervisor itself, such as
        a worker that cannot be spawned again, included), every child started is stopped."""
        try:
            return await self._supervise()
        except Exception:
            log.exception("dynamo serve failed; stopping every process it started")
            return 1
        finally:
            self._stopping = True
            await cancel_and_wait(self._helpers)
            # Workers first (they drain and leave discovery), then the frontend.
            procs = self.children.procs
            await self.children.stop_all([n for n in procs if n != "frontend"] + [n for n in procs if n == "frontend"])
            log.info("stopped")

    async def _supervise(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        frontend = frontend_argv(self.ns, self.parser)
        await self.children.start("frontend", functools.partial(self._spawn, "frontend", frontend), restart=False)
        for i, mode in enumerate(self.roles):
            name = f"worker-{i}" if mode == "agg" else f"{mode}-worker-{i}"
            argv = worker_argv(self.ns, self.parser, mode)
            await self.children.start(name, functools.partial(self._spawn, name, argv))
        self._helpers.add(asyncio.create_task(self._announce_ready(stop), name="serve-ready"))
        return await self.children.supervise(stop, self._on_exit)

    def _on_exit(self, exit: ChildExit) -> int | None:
        """The command's exit code when this exit ends it; None: the others keep serving."""
        if exit.name == "frontend":
            log.error("the frontend exited with code %s; stopping", exit.returncode)
            return exit.returncode or 1
        if not exit.restarting:
            self.given_up.add(exit.name)
            if len(self.given_up) == len(self.roles):
                log.error("no worker is left; stopping")
                return 1
        return None


def _fetch(url: str) -> str | None:
    # Our own frontend on loopback: its certificate need not be one this host trusts.
    context = ssl._create_unverified_context() if url.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return response.read().decode()
    except urllib.error.HTTPError:
        return None


async def _serve_in_process(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`--discovery mem`: frontend and workers share this process and its in-memory store."""
    from dynamo_core.cli.configs import frontend_config_from, worker_config_from
    from dynamo_core.frontend.app import run_frontend
    from dynamo_core.worker.worker import Worker

    workers = [Worker(worker_config_from(ns, parser)) for _ in range(ns.workers)]
    for worker in workers:
        await worker.start()
    frontend = asyncio.create_task(run_frontend(frontend_config_from(ns, parser)))
    scheme = "https" if ns.tls_cert else "http"
    print(
        f"dynamo serving on {scheme}://{ns.http_host}:{ns.http_port}/v1 (engine={ns.engine}, router={ns.router}, "
        f"workers={ns.workers}, in one process); Ctrl-C to stop",
        flush=True,
    )
    try:
        await frontend
    finally:
        for worker in workers:
            await worker.stop()
    return 0


def serve(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # Before any process starts: with the port taken, the readiness probe would reach whoever
    # holds it and report "serving" for a frontend that is about to fail.
    from dynamo_core.cli.check import check_port

    port = check_port(ns.http_host, ns.http_port)
    if port.status != "ok":
        print(f"dynamo serve: error: port {ns.http_port} on {ns.http_host}: {port.detail} "
              "(another server holds it?); choose another with --http-port", file=sys.stderr)
        return 1
    if ns.discovery == "mem":
        return asyncio.run(_serve_in_process(ns, parser))
    return asyncio.run(Supervisor(ns, parser).run())
