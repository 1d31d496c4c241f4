"""The package layout is layered: each package of emojax/ imports only packages of lower layers, and
no module-level import cycle exists. The layers are those of the README's "Where things are" map."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "emojax"
# Lowest first; a unit may import units of strictly lower layers only.
LAYERS = (
    {"console", "data", "model"},
    {"runs", "parallel", "weights", "method", "circuit"},
    {"loading", "generation", "scan", "evaluation"},
    {"judge"},
    {"stages"},
    {"launch"},
    {"__init__"},   # the public API re-exports the model core, generation and loading
)
LAYER_OF = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The package (or loose top-level module) of emojax a dotted module name belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, modules: set[str], top_level_only: bool) -> set[str]:
    """The emojax modules `path` imports (a `from pkg import name` of a submodule counts as that module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("emojax"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("emojax"))
    return found & modules


def all_modules() -> dict[str, Path]:
    found = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    assert len(found) > 80, "the emojax package was not found"
    return found


def test_every_unit_has_a_layer():
    units = {unit_of(name) for name in all_modules()}
    assert units == set(LAYER_OF), f"units without a layer: {units - set(LAYER_OF)}; stale: {set(LAYER_OF) - units}"


def test_no_package_imports_from_its_own_or_a_higher_layer():
    modules = all_modules()
    upward = []
    for name, path in modules.items():
        for target in imports(path, set(modules), top_level_only=False):
            source, dest = unit_of(name), unit_of(target)
            if source != dest and LAYER_OF[dest] >= LAYER_OF[source]:
                upward.append(f"{name} imports {target} ({source}, layer {LAYER_OF[source]} -> "
                              f"{dest}, layer {LAYER_OF[dest]})")
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    modules = all_modules()
    graph = {name: imports(path, set(modules), top_level_only=True) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_model_core_imports_nothing_else_of_emojax():
    modules = all_modules()
    outside = {f"{name} imports {target}" for name, path in modules.items() if unit_of(name) == "model"
               for target in imports(path, set(modules), top_level_only=False) if unit_of(target) != "model"}
    assert not outside, sorted(outside)
