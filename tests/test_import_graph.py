"""The package's import graph: no cycles, and every import points down the layers (or across one).

Read from the source with ``ast`` (function-local and ``TYPE_CHECKING`` imports included, since
each is a dependency a reader must follow), not by importing anything.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "seedfast"

# The layers, lowest first: a module may import from its own layer or a lower one. This is the
# one place the order is written down (ARCHITECTURE.md describes it in words).
LAYERS: list[tuple[str, ...]] = [
    ("seedfast", "seedfast._checks", "seedfast._lazy", "seedfast.constants", "seedfast.errors", "seedfast.env",
     "seedfast.checkpoint_io", "seedfast.visual_vocab", "seedfast.kernels", "seedfast.csrc"),
    ("seedfast.ops", "seedfast.data"),
    ("seedfast.nn",),
    ("seedfast.models",),
    ("seedfast.generation", "seedfast.integrations"),
    ("seedfast.pipeline",),
    ("seedfast.train",),
    ("seedfast.benchmarks",),
    ("seedfast.demo",),
    ("seedfast.cli", "seedfast.__main__"),
]
# Same or ordered layers, but kept apart all the same: the models never read data sets, and data
# loaders never need a model.
FORBIDDEN = {("seedfast.models", "seedfast.data"), ("seedfast.data", "seedfast.models")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    for path in sorted((ROOT / "kernels").glob("*.py")):  # installed as seedfast.kernels
        found["seedfast.kernels" + ("" if path.stem == "__init__" else f".{path.stem}")] = path
    return found


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The seedfast module an imported name lives in (``a.b.c`` → the longest existing prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(_owner(a.name) for a in node.names if a.name.split(".")[0] == "seedfast")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if source.split(".")[0] != "seedfast":
                continue
            for alias in node.names:
                found.add(_owner(f"{source}.{alias.name}") if f"{source}.{alias.name}" in MODULES else _owner(source))
    found.discard(None)
    found.discard(module)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> tuple[int, str]:
    """The layer index of ``module`` and the prefix that placed it there (the longest listed one)."""
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (index, prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return best


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


def test_no_import_points_up_the_layers():
    offenders = []
    for module, targets in GRAPH.items():
        level, group = _layer(module)
        for target in sorted(targets):
            target_level, target_group = _layer(target)
            if target_level > level or (group, target_group) in FORBIDDEN:
                offenders.append(f"{module} ({group}) imports {target} ({target_group})")
    assert not offenders, "imports against the layer order:\n" + "\n".join(offenders)


def test_no_import_cycles():
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(GRAPH[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_can_fail():
    # The walker must see function-local and relative imports, or the tests above prove nothing.
    assert "seedfast.cli" in GRAPH["seedfast.__main__"]
    assert any(t.startswith("seedfast.benchmarks") for t in GRAPH["seedfast.cli"])  # imported inside functions
    assert _layer("seedfast.models.llama")[0] > _layer("seedfast.ops.vq")[0]
