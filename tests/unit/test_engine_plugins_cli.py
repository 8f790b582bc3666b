"""The `dynamo` CLI with an engine plugin installed but its engine missing (CI's case), for
each engine plugin of the workspace: `dynamo plugins` lists it, and `--engine NAME` fails with
one line naming what to install (status 2), for `worker` and `serve` alike."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class EnginePlugin:
    engine: str
    distribution: str
    module: str  # the import name of the plugin
    library: str  # the engine library it needs
    engine_flag: list[str]  # one of the engine's own options, mirrored only with the library present
    error: str

    @property
    def src(self) -> Path:
        return ROOT / "plugins" / self.distribution / "src"


PLUGINS = [
    EnginePlugin("vllm", "dynamo-vllm", "dynamo_vllm", "vllm", ["--gpu-memory-utilization", "0.5"],
                 "dynamo: error: engine 'vllm' needs vLLM, which is not installed: "
                 "pip install 'dynamo-vllm[vllm]' (or pip install vllm)"),
    EnginePlugin("sglang", "dynamo-sglang", "dynamo_sglang", "sglang", ["--mem-fraction-static", "0.3"],
                 "dynamo: error: engine 'sglang' needs SGLang, which is not installed: "
                 "pip install 'dynamo-sglang[sglang]' (or pip install 'sglang>=0.5.15'; Python 3.12, CUDA)"),
]


def _env(tmp_path: Path, plugin: EnginePlugin) -> dict[str, str]:
    """Make the plugin discoverable through its entry point even when the workspace has not
    installed it: a dist-info folder on the path, as an installed wheel leaves one."""
    env = dict(os.environ, DYN_FILE_DISCOVERY_DIR=str(tmp_path / "discovery"))
    paths = [str(plugin.src)]
    installed = any(ep.value == f"{plugin.module}.plugin" for ep in importlib.metadata.entry_points(group="dynamo"))
    if not installed:
        info = tmp_path / "site" / f"{plugin.module}-0.1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {plugin.distribution}\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(f"[dynamo]\n{plugin.engine} = {plugin.module}.plugin\n")
        paths.append(str(tmp_path / "site"))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return env


def _dynamo(tmp_path: Path, plugin: EnginePlugin, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynamo_core.cli.main", *args], env=_env(tmp_path, plugin),
                          capture_output=True, text=True, timeout=60)


def _without_library(plugin: EnginePlugin) -> EnginePlugin:
    if importlib.util.find_spec(plugin.library) is not None:
        pytest.skip(f"{plugin.library} is installed here")
    return plugin


@pytest.mark.parametrize("plugin", PLUGINS, ids=[p.engine for p in PLUGINS])
def test_plugins_lists_the_engine_without_its_library(tmp_path, plugin):
    result = _dynamo(tmp_path, _without_library(plugin), "plugins")
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.split()[:2] == ["engine", plugin.engine])
    assert plugin.distribution in line


@pytest.mark.parametrize("command", [["worker"], ["serve", "--workers", "1"]], ids=["worker", "serve"])
@pytest.mark.parametrize("plugin", PLUGINS, ids=[p.engine for p in PLUGINS])
def test_the_engine_without_its_library_names_what_to_install(tmp_path, plugin, command):
    result = _dynamo(tmp_path, _without_library(plugin), *command, "--engine", plugin.engine,
                     "--model", str(tmp_path), *plugin.engine_flag)
    assert result.returncode == 2
    assert result.stderr.strip() == plugin.error
