"""`--preprocess-workers` defaults to the usable CPUs less one, at least one, at most 16; a value
given (flag or environment) is not capped."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dynamo_core.cli import options


def _default_in_a_process_on(cpus: set[int]) -> str:
    # A real process pinned to `cpus`: the default reads its own affinity, not the host's count.
    code = "from dynamo_core.cli.options import default_preprocess_workers as d; print(d())"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    ).stdout.strip()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_preprocess_workers_default_follows_the_process_affinity():
    cpus = sorted(os.sched_getaffinity(0))
    assert _default_in_a_process_on({cpus[0]}) == "1"  # one CPU: still one process, not none
    assert _default_in_a_process_on(set(cpus)) == str(min(16, max(1, len(cpus) - 1)))


@pytest.mark.parametrize(("cpus", "default"), [(1, 1), (2, 1), (16, 15), (17, 16), (64, 16), (256, 16)])
def test_preprocess_workers_default_is_capped_at_16(monkeypatch: pytest.MonkeyPatch, cpus: int, default: int):
    monkeypatch.setattr(options, "usable_cpus", lambda: cpus)
    assert options.default_preprocess_workers() == default
    monkeypatch.delenv("DYN_PREPROCESS_WORKERS", raising=False)
    from dynamo_core.cli.parsers import build_frontend_parser

    assert options.preprocess_workers_of(build_frontend_parser(None).parse_args([])) == default


def test_an_explicit_preprocess_workers_is_not_capped(monkeypatch: pytest.MonkeyPatch):
    from dynamo_core.cli.parsers import build_frontend_parser

    monkeypatch.setattr(options, "usable_cpus", lambda: 64)
    monkeypatch.delenv("DYN_PREPROCESS_WORKERS", raising=False)
    assert options.preprocess_workers_of(build_frontend_parser(None).parse_args(["--preprocess-workers", "40"])) == 40
    monkeypatch.setenv("DYN_PREPROCESS_WORKERS", "40")
    assert options.preprocess_workers_of(build_frontend_parser(None).parse_args([])) == 40


def _children_pool(argv: list[str]) -> str:
    from dynamo_core.cli.frontend_processes import child_argv
    from dynamo_core.cli.parsers import build_frontend_parser

    parser = build_frontend_parser(None)
    child = child_argv(parser.parse_args(argv), parser)
    return child[child.index("--preprocess-workers") + 1]


@pytest.mark.parametrize("flag", [["--preprocess-workers", "5"], ["--preprocess-workers=5"], ["--preprocess-w", "5"]])
def test_http_workers_divide_the_default_pool_but_pass_a_given_one_whole(monkeypatch: pytest.MonkeyPatch, flag):
    monkeypatch.setattr(options, "usable_cpus", lambda: 13)
    monkeypatch.delenv("DYN_PREPROCESS_WORKERS", raising=False)
    assert _children_pool(["--http-workers", "4"]) == "3"  # the default, 12, among 4 processes
    # However argparse took the flag (an abbreviation too), it is each process's own.
    assert _children_pool(["--http-workers", "4", *flag]) == "5"
    monkeypatch.setenv("DYN_PREPROCESS_WORKERS", "5")
    assert _children_pool(["--http-workers", "4"]) == "5"


def test_a_bad_preprocess_workers_in_the_environment_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys):
    from dynamo_core.cli.parsers import build_frontend_parser

    monkeypatch.setenv("DYN_PREPROCESS_WORKERS", "many")
    with pytest.raises(SystemExit) as exited:
        build_frontend_parser(None).parse_args([])
    assert exited.value.code == 2 and "--preprocess-workers" in capsys.readouterr().err


def test_http_workers_auto_is_one_process_per_usable_cpu():
    from dynamo_core.cli.options import http_workers_option, usable_cpus

    assert http_workers_option("auto") == usable_cpus()
    assert http_workers_option("3") == 3
