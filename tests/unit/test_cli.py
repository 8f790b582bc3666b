"""The `dynamo` command's parsing and plugin errors (run as real subprocesses where it matters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from dynamo_core.cli import main as cli
from dynamo_core.cli import options
from dynamo_core.cli.serve import frontend_argv, worker_argv

DYNAMO = [sys.executable, "-m", "dynamo_core.cli.main"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(DYNAMO + list(args), capture_output=True, text=True, timeout=60)


def test_missing_engine_names_the_package_to_install():
    # Every engine the project knows is installed in this workspace, so the CLI is run with one
    # more well-known name whose plugin is not.
    code = ("import sys; from dynamo_core import plugins; plugins.KNOWN_PROVIDERS[('engine', 'tgi')] = 'dynamo-tgi'; "
            "from dynamo_core.cli.main import main; sys.exit(main(['serve', '--engine', 'tgi']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "engine 'tgi' is not installed; pip install dynamo-tgi" in result.stderr


def test_plugins_lists_builtins_with_their_distribution_as_json():
    result = _run("plugins", "--json")
    rows = {(r["kind"], r["name"]): r["distribution"] for r in json.loads(result.stdout)}
    for key in [("engine", "mocker"), ("engine", "echo"), ("router", "round-robin"), ("router", "random"),
                ("router", "least-loaded"), ("discovery", "file"), ("discovery", "mem"), ("discovery", "etcd")]:
        assert rows[key] == "dynamo-core"
    table = _run("plugins").stdout
    assert table.splitlines()[0].split() == ["KIND", "NAME", "DISTRIBUTION", "DESCRIPTION"]


def test_serve_help_lists_the_engines_own_options():
    out = _run("serve", "--engine", "mocker", "--help").stdout
    for flag in ("--speedup-ratio", "--num-gpu-blocks", "--block-size", "--no-prefix-caching", "--max-num-seqs"):
        assert flag in out


def test_serve_passes_engine_options_to_workers_and_router_options_to_the_frontend():
    parser = cli.build_serve_parser("mocker", "round-robin")
    ns = parser.parse_args(["--speedup-ratio", "10", "--no-prefix-caching", "--workers", "3", "--namespace", "x"])
    argv = worker_argv(ns, parser)
    assert argv[:3] == ["worker", "--engine", "mocker"]
    assert "--speedup-ratio" in argv and argv[argv.index("--speedup-ratio") + 1] == "10.0"
    assert "--no-prefix-caching" in argv
    assert argv[argv.index("--namespace") + 1] == "x"
    assert "--workers" not in argv
    fe = frontend_argv(ns, parser)
    assert fe[:3] == ["frontend", "--router", "round-robin"] and "--speedup-ratio" not in fe
    engine_ns = options.group_namespace(parser, options.ENGINE_GROUP_TITLE, ns)
    assert engine_ns.speedup_ratio == 10.0 and not hasattr(engine_ns, "workers")


def test_check_fails_with_exit_1_when_etcd_is_unreachable():
    result = _run("check", "--discovery", "etcd", "--etcd-endpoints", "http://127.0.0.1:1", "--http-port", "0")
    assert result.returncode == 1
    assert "FAIL  etcd" in result.stdout
    ok = _run("check", "--http-port", "0")
    assert ok.returncode == 0, ok.stdout


def test_chat_template_that_is_no_readable_file_fails_before_starting():
    result = _run("serve", "--chat-template", "/nonexistent/template.jinja")
    assert result.returncode == 2
    assert "cannot read chat template '/nonexistent/template.jinja'" in result.stderr


def test_serve_disagg_starts_prefill_and_decode_workers_with_the_transfer_backend():
    from dynamo_core.cli.serve import worker_roles

    parser = cli.build_serve_parser("mocker", "round-robin")
    ns = parser.parse_args(["--disagg", "--prefill-workers", "2", "--decode-workers", "3", "--transfer", "tcp",
                            "--disagg-min-prompt-tokens", "64", "--kv-bytes-per-token", "4096"])
    assert worker_roles(ns) == ["prefill", "prefill", "decode", "decode", "decode"]
    argv = worker_argv(ns, parser, "prefill")
    assert argv[argv.index("--mode") + 1] == "prefill" and argv[argv.index("--transfer") + 1] == "tcp"
    assert argv[argv.index("--kv-bytes-per-token") + 1] == "4096"
    assert "--mode" not in worker_argv(ns, parser)  # aggregated workers keep the default
    front = frontend_argv(ns, parser)
    assert front[front.index("--disagg-min-prompt-tokens") + 1] == "64"


def test_disagg_flags_without_disagg_and_roles_the_engine_cannot_take_fail_clearly():
    for flag in (["--prefill-workers", "2"], ["--decode-workers=1"]):
        result = _run("serve", *flag)
        assert result.returncode == 2 and "--prefill-workers and --decode-workers need --disagg" in result.stderr
    result = _run("serve", "--disagg", "--transfer", "rdma")
    assert result.returncode == 2 and "transfer 'rdma' is not installed" in result.stderr
    result = _run("worker", "--engine", "echo", "--mode", "prefill", "--discovery", "mem")
    assert result.returncode == 2
    assert "engine 'echo' cannot run as a prefill worker" in result.stderr


def test_check_moves_bytes_with_the_transfer_backend_it_is_asked_about():
    result = _run("check", "--transfer", "tcp", "--json", "--http-port", "0")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["transfer tcp"]["status"] == "ok" and "moved 64 KiB" in checks["transfer tcp"]["detail"]
    result = _run("check", "--transfer", "rdma", "--json", "--http-port", "0")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert result.returncode == 1 and checks["transfer rdma"]["status"] == "fail"
    assert "transfer 'rdma' is not installed" in checks["transfer rdma"]["detail"]


def test_an_aggregated_worker_does_not_need_the_transfer_backend_it_would_not_use(tmp_path):
    """`DYN_TRANSFER=nixl` exported across a cluster must not stop its aggregated workers on
    hosts without the plugin; a prefill worker there is refused, naming the package."""
    result = _run("worker", "--engine", "echo", "--mode", "prefill", "--transfer", "rdma", "--discovery", "mem")
    assert result.returncode == 2 and "transfer 'rdma' is not installed" in result.stderr
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(DYNAMO + ["worker", "--engine", "echo", "--transfer", "rdma",
                                            "--discovery", "file", "--file-discovery-dir", str(tmp_path / "d")],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "worker ready" not in log.read_text():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(30)


def test_serve_children_get_the_configuration_serve_itself_would_build(tmp_path):
    """A worker and a frontend started from `serve`'s argv configure themselves exactly as
    `serve` would configure them in one process: each shared option reaches the child."""
    from dynamo_core.cli.configs import frontend_config_from, worker_config_from

    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    parser = cli.build_serve_parser("mocker", "least-loaded")
    ns = parser.parse_args([
        "--engine", "mocker", "--router", "least-loaded", "--namespace", "n1", "--discovery", "file",
        "--file-discovery-dir", str(tmp_path / "d"), "--lease-ttl", "7", "--request-plane", "nats",
        "--event-plane", "nats", "--nats-url", "nats://127.0.0.1:4999", "--model", str(tmp_path),
        "--model-name", "m", "--chat-template", str(template), "--reasoning-parser", "deepseek_r1",
        "--http-port", "9123", "--preprocess-workers", "0", "--disagg-min-prompt-tokens", "99",
        "--speedup-ratio", "5", "--no-prefix-caching",
    ])
    worker_parser = cli.build_worker_parser("mocker")
    worker_ns = worker_parser.parse_args(worker_argv(ns, parser)[1:])
    assert worker_config_from(worker_ns, worker_parser) == worker_config_from(ns, parser)
    frontend_parser = cli.build_frontend_parser("least-loaded")
    frontend_ns = frontend_parser.parse_args(frontend_argv(ns, parser)[1:])
    assert frontend_config_from(frontend_ns, frontend_parser) == frontend_config_from(ns, parser)


def test_an_api_key_file_that_is_missing_or_keyless_fails_at_start(tmp_path):
    missing = tmp_path / "no-such-keys"
    for command in ("serve", "frontend"):
        result = _run(command, "--api-key-file", str(missing), "--http-port", "26101")
        assert result.returncode == 2, result.stderr
        assert f"--api-key-file {missing}: cannot read it (No such file or directory)" in result.stderr
        assert "Traceback" not in result.stderr
    keyless = tmp_path / "keys"
    keyless.write_text("# rotated out\n\n")
    result = _run("serve", "--api-key-file", str(keyless), "--http-port", "26102")
    assert result.returncode == 2 and f"--api-key-file {keyless}: holds no key" in result.stderr, result.stderr


def test_a_health_port_from_the_environment_is_an_int_default_that_child_args_leaves_out(monkeypatch):
    from dynamo_core.cli.parsers import build_worker_parser

    monkeypatch.setenv("DYN_WORKER_HEALTH_PORT", "26103")
    parser = build_worker_parser("mocker")
    assert parser.get_default("health_port") == 26103
    ns = parser.parse_args([])
    assert ns.health_port == 26103
    # The child computes the same default from the same environment: nothing to pass.
    assert "--health-port" not in options.child_args(parser, ns, parser)
    changed = parser.parse_args(["--health-port", "26104"])
    assert options.child_args(parser, changed, parser)[-2:] == ["--health-port", "26104"]


def test_a_health_port_from_the_environment_that_is_no_integer_is_a_usage_error():
    result = subprocess.run(DYNAMO + ["worker"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DYN_WORKER_HEALTH_PORT": "ninety"})
    assert result.returncode == 2 and "--health-port: invalid int value: 'ninety'" in result.stderr, result.stderr
