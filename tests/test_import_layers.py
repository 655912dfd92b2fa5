"""The package's import graph: layered, no cycles.

Every import statement in ``progrpo_fast`` (module level and inside functions alike, read from the
source with ``ast``) is mapped to the subpackage it names. A subpackage may import only its own
layer or the ones below it, so the graph between subpackages can hold no cycle either. The package
root (``progrpo_fast/__init__.py``) only exports names lazily and sits outside the layers.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "progrpo_fast"

# bottom to top; modules of one layer may import each other
LAYERS = [
    {"third_party", "kernels", "_C"},
    {"ops"},
    {"sampling"},
    {"integrations"},  # glue for foreign loops: StepPruner, keyed noise, RankLocalGroupSampler (ops + sampling only)
    {"rewards"},
    {"tasks"},  # the built-in task (captions, renderer, scorer, tokenizer) its model is built on
    {"models"},
    {"train"},
    {"bench"},
    {"cli", "__main__"},
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def unit_of(module_file: Path) -> str:
    """The top-level subpackage or module of ``progrpo_fast`` a source file belongs to."""
    parts = module_file.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_units(module_file: Path) -> set[str]:
    """Subpackages/modules of progrpo_fast that ``module_file`` imports (absolute or relative)."""
    tree = ast.parse(module_file.read_text(), filename=str(module_file))
    package_parts = module_file.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    if module_file.name == "__init__.py":
        package_parts = module_file.relative_to(PACKAGE.parent).parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package_parts[: len(package_parts) - node.level + 1])
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "progrpo_fast" and len(parts) > 1:
                found.add(parts[1])
    return found


def source_files():
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_unit_has_a_layer():
    units = {unit_of(p) for p in source_files()}
    assert units <= set(LAYER_OF), f"place these in LAYERS: {sorted(units - set(LAYER_OF))}"


@pytest.mark.parametrize("module_file", source_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_reaches_a_higher_layer(module_file):
    unit = unit_of(module_file)
    above = {u for u in imported_units(module_file) if u in LAYER_OF and LAYER_OF[u] > LAYER_OF[unit]}
    assert not above, f"{module_file.relative_to(PACKAGE)} (layer {unit}) imports {sorted(above)} from a higher layer"


def test_the_unit_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for path in source_files():
        graph.setdefault(unit_of(path), set()).update(u for u in imported_units(path) if u != unit_of(path))
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(trail + [node])}")
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])


def test_the_package_root_imports_nothing_eagerly():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    eager = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) and not (
        isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    assert all("progrpo_fast" not in line and not line.startswith("from .") for line in eager), eager
