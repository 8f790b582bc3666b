"""The plugin manager: loads every ``dynamo`` entry point and indexes what each provides."""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass
from typing import Any

import pluggy

from dynamo_core import hookspecs
from dynamo_core.hookspecs import hookimpl  # noqa: F401  (kept for plugins written before dynamo_core.hookimpl)

# Well-known plugin names and the distribution that provides them, so that a missing plugin
# produces an error telling the user what to install.
KNOWN_PROVIDERS: dict[tuple[str, str], str] = {
    ("engine", "vllm"): "dynamo-vllm",
    ("engine", "sglang"): "dynamo-sglang",
    ("engine", "trtllm"): "dynamo-trtllm",
    ("router", "kv"): "dynamo-router-kv",
    ("transfer", "nixl"): "dynamo-nixl",
}


class PluginNotInstalledError(LookupError):
    """A name was asked for (``--engine vllm``) that no installed plugin provides."""

    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, available
        provider = KNOWN_PROVIDERS.get((kind, name))
        hint = f"; pip install {provider}" if provider else ""
        have = ", ".join(sorted(available)) or "none"
        super().__init__(f"{kind} '{name}' is not installed{hint} (installed: {have})")


@dataclass(frozen=True)
class Registration:
    kind: str  # engine | router | discovery | transfer
    name: str
    distribution: str
    spec: Any


def _distribution_of(plugin: object, dist_by_plugin: dict[int, str]) -> str:
    return dist_by_plugin.get(id(plugin), "unknown")


class PluginRegistry:
    """All registered implementations, by kind and name."""

    _HOOKS = {
        "engine": "dynamo_engines",
        "router": "dynamo_routers",
        "discovery": "dynamo_discovery_backends",
        "transfer": "dynamo_transfer_backends",
    }

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        dist_by_plugin = {id(p): d.project_name for p, d in pm.list_plugin_distinfo()}
        self._by_kind: dict[str, dict[str, Registration]] = {k: {} for k in self._HOOKS}
        for kind, hook_name in self._HOOKS.items():
            hook = getattr(pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                for spec in impl.function() or []:
                    existing = self._by_kind[kind].get(spec.name)
                    dist = _distribution_of(impl.plugin, dist_by_plugin)
                    if existing is not None:
                        raise RuntimeError(
                            f"{kind} '{spec.name}' is provided twice: by {existing.distribution} and {dist}"
                        )
                    self._by_kind[kind][spec.name] = Registration(kind, spec.name, dist, spec)

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def get(self, kind: str, name: str) -> Any:
        try:
            return self._by_kind[kind][name].spec
        except KeyError:
            raise PluginNotInstalledError(kind, name, self.names(kind)) from None

    def registrations(self) -> list[Registration]:
        return [r for kind in self._by_kind.values() for r in kind.values()]


def create_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("dynamo")
    pm.add_hookspecs(hookspecs)
    if load_entrypoints:
        pm.load_setuptools_entrypoints("dynamo")
    # The core's built-ins come in through the `dynamo` entry point in its own pyproject;
    # register them directly too when running from a tree without installed metadata.
    from dynamo_core import builtins

    if not pm.is_registered(builtins) and pm.get_plugin("core") is None:
        pm.register(builtins, name="core")
    return pm


@functools.lru_cache(maxsize=1)
def get_registry() -> PluginRegistry:
    return PluginRegistry(create_plugin_manager())


def installed_distributions() -> dict[str, str]:
    return {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()}
