"""Make the repository's packages discoverable as installed distributions, without building
wheels: a `NAME-VERSION.dist-info` folder with METADATA and entry_points.txt per package, in a
folder that goes on PYTHONPATH next to their `src/` folders.

dynamo finds engines and routers through entry points (group `dynamo`), so `src/` on the path
alone would not register dynamo-vllm, dynamo-sglang or dynamo-router-kv.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ["core", "plugins/router-kv", "plugins/dynamo-vllm", "plugins/dynamo-sglang", "plugins/nixl"]


def write_dist_info(package: Path, target: Path) -> str:
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    info = target / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, entries in project.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return f"{name} {version}"


if __name__ == "__main__":
    target = Path(sys.argv[1])
    print("dist-info for: " + ", ".join(write_dist_info(REPO / p, target) for p in PACKAGES))
