"""The image recipe checked without a Docker engine (none is reachable here): every flavor's
packages resolve from uv.lock exactly as the Dockerfile asks for them, and the recipe agrees
with the chart (entry point, user) and with the core (the health check's paths and env)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from deploy.chart import CHART_DIR, RELEASE, container, example_values, find, render

ROOT = Path(__file__).resolve().parents[2]
CONTAINER = ROOT / "deploy" / "container"
DOCKERFILE = (CONTAINER / "Dockerfile").read_text()


def _flavor(function: str, flavor: str) -> list[str]:
    out = subprocess.run(["bash", "-c", f'. "{CONTAINER}/flavors.sh" && {function} "$1"', "_", flavor],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.parametrize("flavor", ["cpu", "vllm", "sglang", "trtllm"])
def test_flavor_resolves_from_the_lock_file(flavor: str):
    paths = _flavor("flavor_paths", flavor)
    missing = [p for p in paths if not (ROOT / p / "pyproject.toml").exists()]
    if missing:
        pytest.skip(f"{flavor}: workspace member(s) {missing} not in this tree yet")
    args = _flavor("flavor_args", flavor)
    export = subprocess.run(["uv", "export", "--frozen", "--no-dev", "--no-emit-workspace", *args],
                            cwd=ROOT, capture_output=True, text=True)
    assert export.returncode == 0, export.stderr
    pins = {line.split("==")[0] for line in export.stdout.splitlines() if "==" in line and not line.startswith(" ")}
    assert {"litestar", "msgspec", "nats-py", "aetcd"} <= pins
    if flavor == "trtllm":  # not on PyPI: the Dockerfile installs it through ENGINE_PIP
        assert "tensorrt-llm" not in pins and "ENGINE_PIP" in DOCKERFILE
    elif flavor != "cpu":
        assert flavor in pins  # the engine itself
    for path in paths:  # each member's name is what the flavor asked for
        name = tomllib.loads((ROOT / path / "pyproject.toml").read_text())["project"]["name"]
        assert f"--package {name}" in " ".join(args)


def test_unknown_flavor_is_refused():
    result = subprocess.run(["bash", "-c", f'. "{CONTAINER}/flavors.sh" && flavor_args gpu'], capture_output=True, text=True)
    assert result.returncode != 0 and "unknown flavor 'gpu'" in result.stderr


def test_image_entry_point_and_user_match_the_chart():
    scripts = tomllib.loads((ROOT / "core" / "pyproject.toml").read_text())["project"]["scripts"]
    assert 'ENTRYPOINT ["dynamo"]' in DOCKERFILE and "dynamo" in scripts
    uid = int(re.search(r"useradd --uid (\d+)", DOCKERFILE).group(1))
    assert f"USER {uid}:{uid}" in DOCKERFILE
    objects = render(example_values(CHART_DIR / "examples" / "mocker-cpu.yaml"))
    for name in ("frontend", "worker-mocker"):
        deployment = find(objects, "Deployment", f"{RELEASE}-dynamo-{name}")
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
        assert container(deployment)["command"] == ["dynamo"]


def test_health_check_asks_what_the_servers_answer():
    # The HEALTHCHECK reads these variables and path; the CLI must still read the same names.
    source = "\n".join(p.read_text() for p in (ROOT / "core" / "src" / "dynamo_core").rglob("*.py"))
    for name in ("DYN_WORKER_HEALTH_PORT", "DYN_WORKER_HOST", "DYN_HTTP_PORT"):
        assert name in DOCKERFILE and f'"{name}"' in source
    assert "/live" in DOCKERFILE


def test_the_venv_is_built_on_the_image_it_runs_on():
    # A venv links to the interpreter that made it: built on one image and copied onto another
    # (another Python, or none), `dynamo` would not start. One base for both stages, and the
    # runtime stage runs the venv's Python, so a base without a usable one fails the build.
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", DOCKERFILE, flags=re.MULTILINE)
    assert [name for _, name in stages] == ["build", "runtime"]
    assert {image for image, _ in stages} == {"${BASE_IMAGE}"}, stages
    assert len(re.findall(r"^ARG\s+\w*IMAGE\b", DOCKERFILE, flags=re.MULTILINE)) == 1
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    check = runtime.index('/opt/venv/bin/python -c "import dynamo_core"')
    assert runtime.index("COPY --from=build /opt/venv /opt/venv") < check < runtime.index("ENTRYPOINT")
