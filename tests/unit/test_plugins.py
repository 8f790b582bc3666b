"""The plugin manager and the hooks: each hook works for a real plugin module, each is
documented, a misspelt hook stops start-up, and the built-ins are plugins like any other."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest

from dynamo_core import hookimpl, hookspecs
from dynamo_core.builtins import DEFAULT_PLUGINS
from dynamo_core.plugins import PluginHookError, PluginRegistry, check_hooks, create_plugin_manager

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
SAMPLES = HERE / "plugin_samples"
HOOKS = sorted(name for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("dynamo_"))
TEST_SOURCES = [*ROOT.glob("tests/**/*.py"), *ROOT.glob("plugins/*/tests/**/*.py"), *ROOT.glob("examples/*/tests/**/*.py")]


def _with_sample() -> pluggy.PluginManager:
    sys.path.insert(0, str(SAMPLES))
    try:
        import sample_plugin
    finally:
        sys.path.remove(str(SAMPLES))
    pm = create_plugin_manager(load_entrypoints=False)
    pm.register(sample_plugin, name="sample")
    return pm


def _installed(tmp_path: Path, module: str) -> dict[str, str]:
    """An environment in which `module` is an installed distribution with a `dynamo` entry
    point (a .dist-info beside it on PYTHONPATH), as `pip install` would leave it."""
    info = tmp_path / f"dynamo_{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: dynamo-{module.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[dynamo]\n{module} = {module}\n")
    path = os.pathsep.join([str(tmp_path), str(SAMPLES), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_are_documented(hook):
    assert f"`{hook}(" in (ROOT / "docs/plugins.md").read_text()


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_have_tests(hook):
    pattern = re.compile(rf"def test_hook_{hook}\b")
    assert any(pattern.search(path.read_text()) for path in TEST_SOURCES), f"no test_hook_{hook}"


def test_hook_dynamo_engines():
    registry = PluginRegistry(_with_sample())
    assert registry.get("engine", "sample-engine").description == "sample"
    assert next(r for r in registry.registrations() if r.name == "sample-engine").distribution == "unknown"
    assert {"mocker", "echo"} <= set(registry.names("engine"))


def test_hook_dynamo_routers():
    assert PluginRegistry(_with_sample()).get("router", "sample-router").name == "sample-router"


def test_hook_dynamo_discovery_backends():
    assert PluginRegistry(_with_sample()).get("discovery", "sample-discovery").name == "sample-discovery"


def test_hook_dynamo_transfer_backends():
    assert PluginRegistry(_with_sample()).get("transfer", "sample-transfer").name == "sample-transfer"


def test_hook_dynamo_engine_options():
    parser = argparse.ArgumentParser()
    pm = _with_sample()
    pm.hook.dynamo_engine_options(engine="sample-engine", group=parser.add_argument_group("engine"))
    pm.hook.dynamo_engine_options(engine="mocker", group=parser.add_argument_group("other"))
    ns = parser.parse_args(["--sample-engine-level", "3", "--block-size", "32"])
    assert (ns.sample_engine_level, ns.block_size) == (3, 32)


def test_hook_dynamo_router_options():
    parser = argparse.ArgumentParser()
    _with_sample().hook.dynamo_router_options(router="sample-router", group=parser.add_argument_group("router"))
    assert parser.parse_args(["--sample-router-bias", "0.5"]).sample_router_bias == 0.5


def test_builtins_register_through_the_hooks_one_module_per_feature():
    pm = create_plugin_manager(load_entrypoints=False)
    registry = PluginRegistry(pm)
    by_name = {r.name: r.distribution for r in registry.registrations()}
    assert by_name == {n: "dynamo-core" for n in
                       ["mocker", "echo", "round-robin", "random", "least-loaded", "mem", "file", "etcd", "tcp"]}
    for name in DEFAULT_PLUGINS:
        assert pm.get_plugin(name) is not None and pm.get_hookcallers(pm.get_plugin(name))


def test_a_misspelt_hook_is_an_error_naming_the_plugin_and_the_hooks():
    class Misspelt:
        @hookimpl
        def dynamo_router(self):  # the hook is dynamo_routers
            return []

    pm = create_plugin_manager(load_entrypoints=False)
    pm.register(Misspelt(), name="misspelt")
    with pytest.raises(PluginHookError, match=r"plugin misspelt: .*dynamo_router\b.*the hooks are: dynamo_discovery"):
        check_hooks(pm)


def test_an_installed_plugin_with_a_misspelt_hook_fails_at_start_up(tmp_path):
    env = _installed(tmp_path, "misspelt_plugin")
    result = subprocess.run([sys.executable, "-m", "dynamo_core.cli.main", "plugins"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stdout
    assert "dynamo: error: plugin misspelt_plugin (dynamo-misspelt-plugin 0.1)" in result.stderr
    assert "unknown hook 'dynamo_engnes'" in result.stderr and "Traceback" not in result.stderr
    assert "the hooks are: dynamo_discovery_backends, dynamo_engine_options, dynamo_engines, dynamo_router_options" in result.stderr


def test_an_installed_plugin_is_listed_with_its_distribution(tmp_path):
    env = _installed(tmp_path, "sample_plugin")
    result = subprocess.run([sys.executable, "-m", "dynamo_core.cli.main", "plugins", "--json"], capture_output=True,
                            text=True, timeout=60, env=env)
    rows = {(r["kind"], r["name"]): r["distribution"] for r in json.loads(result.stdout)}
    assert rows[("engine", "sample-engine")] == "dynamo-sample-plugin"
    assert rows[("engine", "mocker")] == "dynamo-core"
