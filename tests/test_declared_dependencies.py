"""Every third-party package a module of emojax/ or experiments/ imports is declared in pyproject.toml
for the install that module belongs to: the library and the launchers need the runtime dependencies
alone; benchmark and peer modules may also use the benchmark and test extras.

The imports are read from the source (every `import` and `from ... import`, at module level or inside
functions), so a lazily imported package counts too. Packages that a dependency loads lazily for a
code path emojax uses (transformers renders chat templates with jinja2) cannot be seen this way;
.ci/run runs the main job in a virtualenv with the runtime install only, which catches those.
"""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from conftest import REPO_ROOT

LOCAL_PACKAGES = {"emojax", "experiments"}
# experiments/bench/ (the benchmarks, the peers and HF baselines) belongs to the benchmark install.
BENCH_PACKAGE = "bench"
BENCH_EXTRAS = ("bench", "test")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalized(re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0))


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    runtime = {requirement_name(r) for r in project["dependencies"]}
    extras = {name: {requirement_name(r) for r in reqs}
              for name, reqs in project.get("optional-dependencies", {}).items()}
    return runtime, extras


def imported_top_level(path: Path) -> set[str]:
    """Absolute top-level module names imported anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - LOCAL_PACKAGES - set(sys.stdlib_module_names) - {"__future__"}


def distributions_of(module: str, installed: dict[str, list[str]]) -> set[str]:
    """The distributions providing `module` (its own name when it is not installed here)."""
    return {normalized(d) for d in installed.get(module, [module])}


def project_files() -> list[Path]:
    files = sorted((REPO_ROOT / "emojax").rglob("*.py")) + sorted((REPO_ROOT / "experiments").rglob("*.py"))
    assert len(files) > 50, "the source tree was not found"
    return files


def test_every_third_party_import_is_declared_for_its_install():
    runtime, extras = declared()
    bench = runtime.union(*(extras.get(name, set()) for name in BENCH_EXTRAS))
    installed = importlib.metadata.packages_distributions()
    undeclared = []
    for path in project_files():
        allowed = bench if path.parent == REPO_ROOT / "experiments" / BENCH_PACKAGE else runtime
        for module in sorted(imported_top_level(path)):
            if not distributions_of(module, installed) & allowed:
                undeclared.append(f"{path.relative_to(REPO_ROOT)} imports {module!r}")
    assert not undeclared, "imports not declared in pyproject.toml for their install:\n" + "\n".join(undeclared)


def test_torch_is_never_a_runtime_dependency():
    runtime, extras = declared()
    assert "torch" not in runtime
    assert "torch" in extras["test"]


def test_the_import_reader_sees_lazy_and_from_imports(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("import os\nimport numpy.linalg\nfrom emojax import forward\nfrom . import sibling\n"
                      "def f():\n    from scipy import sparse\n    import jinja2 as j\n")
    assert imported_top_level(source) == {"numpy", "scipy", "jinja2"}
