"""The Helm chart rendered offline (Helm v4's Go SDK through helm-python-sdk), as objects.

Both `helm template` and `helm lint` run in-process here: no `helm` binary and no cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "dynamo"
EXAMPLES = sorted((CHART_DIR / "examples").glob("*.yaml"))
RELEASE = "rel"
NAMESPACE = "serving"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, as Helm merges several `-f` files (lists are replaced)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def example_values(path: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return deep_merge(yaml.safe_load(path.read_text()), overrides or {})


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders for `values` (on top of the chart's values.yaml)."""
    import helm_python

    manifests = helm_python.Chart.load(CHART_DIR).render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def notes(values: dict[str, Any]) -> str:
    import helm_python

    manifests = helm_python.Chart.load(CHART_DIR).render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"{kind}/{name} not rendered; have {[(o['kind'], o['metadata']['name']) for o in objects]}")


def container(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][0]
