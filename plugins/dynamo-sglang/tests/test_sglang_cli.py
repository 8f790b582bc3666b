"""The `dynamo` CLI with dynamo-sglang installed but SGLang missing (CI's case)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="SGLang is installed here")


def _env(tmp_path: Path) -> dict[str, str]:
    """Make the plugin discoverable through its entry point even when the workspace has not
    installed it: a dist-info folder on the path, as an installed wheel leaves one."""
    env = dict(os.environ, DYN_FILE_DISCOVERY_DIR=str(tmp_path / "discovery"))
    paths = [str(SRC)]
    installed = any(ep.value == "dynamo_sglang.plugin" for ep in importlib.metadata.entry_points(group="dynamo"))
    if not installed:
        info = tmp_path / "site" / "dynamo_sglang-0.1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dynamo-sglang\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text("[dynamo]\nsglang = dynamo_sglang.plugin\n")
        paths.append(str(tmp_path / "site"))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return env


def _dynamo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynamo_core.cli.main", *args], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60)


def test_plugins_lists_the_sglang_engine_without_sglang(tmp_path):
    result = _dynamo(tmp_path, "plugins")
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.split()[:2] == ["engine", "sglang"])
    assert "dynamo-sglang" in line


@pytest.mark.parametrize("command", [["worker"], ["serve", "--workers", "1"]])
def test_engine_sglang_without_sglang_names_what_to_install(tmp_path, command):
    result = _dynamo(tmp_path, *command, "--engine", "sglang", "--model", str(tmp_path), "--mem-fraction-static", "0.3")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "dynamo: error: engine 'sglang' needs SGLang, which is not installed: "
        "pip install 'dynamo-sglang[sglang]' (or pip install 'sglang>=0.5.15'; Python 3.12, CUDA)"
    )
