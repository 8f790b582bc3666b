"""The plugin manager: registers the built-ins, loads every ``dynamo`` entry point, checks
that each hook a plugin implements exists, and indexes what each provides."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any

import pluggy

from dynamo_core import hookspecs
from dynamo_core.builtins import DEFAULT_PLUGINS
from dynamo_core.errors import ConfigError

CORE_DISTRIBUTION = "dynamo-core"  # what `dynamo plugins` names as the built-ins' provider

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


class EngineUnavailableError(PluginNotInstalledError):
    """An engine plugin is installed but its engine library is missing or cannot load
    (`--engine vllm` without vLLM). Reported by the CLI like a missing plugin: one line."""

    def __init__(self, engine: str, reason: str):
        LookupError.__init__(self, f"engine '{engine}' {reason}")
        self.kind, self.name, self.available = "engine", engine, []


class PluginHookError(ConfigError):
    """A plugin implements a hook that does not exist (a misspelt name, or a hook of a newer core)."""


@dataclass(frozen=True)
class Registration:
    kind: str  # engine | router | discovery | transfer
    name: str
    distribution: str
    spec: Any


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
        dist_by_plugin.update({id(pm.get_plugin(name)): CORE_DISTRIBUTION for name in DEFAULT_PLUGINS})
        self._by_kind: dict[str, dict[str, Registration]] = {k: {} for k in self._HOOKS}
        for kind, hook_name in self._HOOKS.items():
            hook = getattr(pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                for spec in impl.function() or []:
                    existing = self._by_kind[kind].get(spec.name)
                    dist = dist_by_plugin.get(id(impl.plugin), "unknown")
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
    """The built-ins of ``DEFAULT_PLUGINS``, then (unless told not to) every ``dynamo`` entry
    point. A plugin implementing a hook that no spec declares is a ``PluginHookError`` here,
    at start-up, rather than an implementation that is never called."""
    pm = pluggy.PluginManager("dynamo")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if load_entrypoints:
        pm.load_setuptools_entrypoints("dynamo")
    check_hooks(pm)
    return pm


def check_hooks(pm: pluggy.PluginManager) -> None:
    """Raise ``PluginHookError`` naming each plugin hook that matches no spec (pluggy's
    ``check_pending``, with the plugin's distribution and the hooks that do exist)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        dist = {id(p): f"{d.project_name} {d.version}" for p, d in pm.list_plugin_distinfo()}.get(id(exc.plugin))
        where = pm.get_name(exc.plugin) or repr(exc.plugin)
        known = ", ".join(sorted(n for n, caller in vars(pm.hook).items() if caller.spec is not None))
        raise PluginHookError(
            f"plugin {where}{f' ({dist})' if dist else ''}: {exc}; the hooks are: {known}"
        ) from None


@functools.lru_cache(maxsize=1)
def get_registry() -> PluginRegistry:
    return PluginRegistry(create_plugin_manager())
