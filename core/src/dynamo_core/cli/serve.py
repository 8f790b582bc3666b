"""`dynamo serve`: a frontend and N workers on this machine, stopped together.

Each piece runs as its own process, started as `dynamo frontend ...` / `dynamo worker ...`,
so `ps` shows what each one is and each can be restarted or replaced by hand. With
`--discovery mem` (one process by definition) they run as tasks of this process instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from dynamo_core.runtime.children import die_with_parent
from dynamo_core.runtime.restart_policy import RestartPolicy, describe_exit
from dynamo_core.runtime.tasks import cancel_and_wait

log = logging.getLogger("dynamo_core.serve")
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 15.0


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
    def __init__(self, ns: argparse.Namespace, parser: argparse.ArgumentParser):
        self.ns, self.parser = ns, parser
        self.roles = worker_roles(ns)
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.argv: dict[str, list[str]] = {}
        self.policies: dict[str, RestartPolicy] = {}
        self.given_up: set[str] = set()
        self._stopping = False
        # The supervisor's own tasks (readiness, stop, pending restarts), cancelled when it ends.
        self._helpers: set[asyncio.Task] = set()
        self._scheme = "https" if ns.tls_cert else "http"
        self._api_keys = guard_options.api_keys_from(ns)  # read once: only the frontend gets them

    async def _spawn(self, name: str, argv: list[str]) -> None:
        command = dynamo_command() + argv
        log.debug("starting %s: %s", name, " ".join(command))
        env = None
        if name == "frontend" and self._api_keys:  # not on its command line, where `ps` would show them
            env = {**os.environ, "DYN_API_KEYS": ",".join(self._api_keys)}
        self.procs[name] = await asyncio.create_subprocess_exec(*command, preexec_fn=die_with_parent, env=env)
        self.argv[name] = argv
        self.policies.setdefault(name, RestartPolicy()).on_start()

    async def _restart(self, name: str, delay: float) -> str:
        """Start a worker again after `delay`; its name, for the caller's watcher."""
        await asyncio.sleep(delay)
        await self._spawn(name, self.argv[name])
        log.info("%s restarted (pid %d)", name, self.procs[name].pid)
        return name

    async def _wait_ready(self) -> bool:
        url = f"{self._scheme}://{self.ns.http_host}:{self.ns.http_port}/health"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not self._stopping:
            if any(p.returncode is not None for n, p in self.procs.items() if n == "frontend"):
                return False
            try:
                body = await asyncio.to_thread(_fetch, url)
                if body is not None and body.count('"instance_id"') >= len(self.roles):
                    return True
            except OSError:
                pass
            await asyncio.sleep(0.25)
        return False

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
            await cancel_and_wait(self._helpers)  # a worker a restart started is stopped below
            await self._stop_all()

    async def _supervise(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self._spawn("frontend", frontend_argv(self.ns, self.parser))
        for i, mode in enumerate(self.roles):
            name = f"worker-{i}" if mode == "agg" else f"{mode}-worker-{i}"
            await self._spawn(name, worker_argv(self.ns, self.parser, mode))
        watchers = {asyncio.create_task(p.wait(), name=n): n for n, p in self.procs.items()}
        ready = asyncio.create_task(self._wait_ready())
        stop_task = asyncio.create_task(stop.wait())
        self._helpers = {ready, stop_task}
        exit_code = 0
        pending = set(watchers) | {ready, stop_task}
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done & self._helpers - {ready, stop_task}:  # restarts that have spawned
                self._helpers.discard(task)
                name = task.result()
                watcher = asyncio.create_task(self.procs[name].wait(), name=name)
                watchers[watcher] = name
                pending.add(watcher)
            if ready in done:
                if ready.result():
                    print(
                        f"dynamo serving on {self._scheme}://{self.ns.http_host}:{self.ns.http_port}/v1 "
                        f"(engine={self.ns.engine}, router={self.ns.router}, {describe_workers(self.ns)}); Ctrl-C to stop",
                        flush=True,
                    )
                elif not stop.is_set():
                    log.warning("the workers did not all register within %.0f s; still serving what did", READY_TIMEOUT_S)
            if stop_task in done:
                break
            for task in done & set(watchers):
                name = watchers[task]
                code = task.result()
                if name == "frontend":
                    log.error("the frontend exited with code %s; stopping", code)
                    exit_code = code or 1
                    stop.set()
                elif not stop.is_set():
                    delay = self.policies[name].on_exit(code)
                    if delay is None:
                        self.given_up.add(name)
                        log.error("%s %s within %.0f s of its start %d times in a row; giving up on it (its log "
                                  "above says why)", name, describe_exit(code), self.policies[name].startup_window_s,
                                  self.policies[name].quick_deaths)
                        if len(self.given_up) == len(self.roles):
                            log.error("no worker is left; stopping")
                            exit_code = 1
                            stop.set()
                    else:
                        log.warning("%s (pid %d) %s; restarting it in %.1f s (restart %d); the others keep "
                                    "serving", name, self.procs[name].pid, describe_exit(code), delay,
                                    self.policies[name].restarts)
                        task = asyncio.create_task(self._restart(name, delay))
                        self._helpers.add(task)
                        pending.add(task)
            if stop.is_set():
                break
        return exit_code

    async def _stop_all(self) -> None:
        # Workers first (they drain and leave discovery), then the frontend.
        order = [n for n in self.procs if n != "frontend"] + [n for n in self.procs if n == "frontend"]
        for name in order:
            proc = self.procs[name]
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for name in order:
            proc = self.procs[name]
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.warning("%s did not stop in %.0f s; killing it", name, STOP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        log.info("stopped")


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
