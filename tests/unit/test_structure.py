"""The package structure: no import loop in core/ or plugins/ (imports inside functions count,
since they are how loops hide), and no module imports another module's private names."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).parents[2]
SOURCE_ROOTS = [ROOT / "core/src", *sorted(p / "src" for p in (ROOT / "plugins").iterdir() if (p / "src").is_dir())]


def _modules() -> dict[str, Path]:
    modules = {}
    for root in SOURCE_ROOTS:
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import statement in the module,
    at any depth; relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                yield base, alias.name, node.lineno


def _project_module(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, imported, _ in _imports(name, path):
            # `from pkg import mod` imports the module pkg.mod; `from mod import func` imports mod.
            target = _project_module(f"{module}.{imported}" if imported else module)
            if target is not None and target != name:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_sees_function_level_imports():
    # the built-in etcd backend imports its client inside the factory, to keep grpc off start-up
    assert "dynamo_core.runtime.etcd_discovery" in _graph()["dynamo_core.builtins.etcd_discovery"]


def test_a_loop_is_found_where_there_is_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_loop_in_core_or_plugins():
    cycles = _cycles(_graph())
    assert not cycles, "import loops: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_module_imports_a_private_name_of_another():
    offences = [
        f"{path.relative_to(ROOT)}:{line}: {module}.{imported}"
        for name, path in MODULES.items()
        for module, imported, line in _imports(name, path)
        if imported is not None and imported.startswith("_") and not imported.startswith("__")
        and _project_module(module) not in (None, name)
    ]
    assert not offences, offences
