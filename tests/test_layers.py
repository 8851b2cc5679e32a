"""The package imports one way: every import (module level or inside a function) goes to a lower
layer or stays inside its own subpackage, and the import graph has no cycle.

Layers, bottom to top (docs/architecture.md):
_core <- reference <- ops <- data, diagnostics <- models <- training, estimators <- cli <- cina_ext
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "cina_ext"

LAYERS = {
    "cina_ext._core": 0,
    "cina_ext._build_info": 0,
    "cina_ext._C": 0,
    "cina_ext.reference": 1,
    "cina_ext.ops": 2,
    "cina_ext.data": 3,
    "cina_ext.diagnostics": 3,
    "cina_ext.models": 4,
    "cina_ext.training": 5,
    "cina_ext.estimators": 5,
    "cina_ext.cli": 6,
}
FACADE = "cina_ext"  # the package's own __init__: imports anything, imported by nothing inside


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def group(mod: str) -> str:
    """The layer entry a module belongs to (its subpackage or top-level module)."""
    if mod == FACADE:
        return FACADE
    parts = mod.split(".")
    return ".".join(parts[:2])


def layer(mod: str) -> int:
    g = group(mod)
    if g == FACADE:
        return max(LAYERS.values()) + 1
    if g not in LAYERS:
        raise AssertionError(f"module {mod} is in no layer: add {g} to LAYERS (and to docs/architecture.md)")
    return LAYERS[g]


def imports_of(mod: str, path: Path, known: dict) -> set:
    """Modules of cina_ext that ``mod`` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = set()

    def resolve(base: str, names) -> None:
        hit = False
        for n in names:
            cand = f"{base}.{n}" if base else n
            if cand in known:
                out.add(cand)
                hit = True
        if not hit and base in known:
            out.add(base)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "cina_ext" or a.name.startswith("cina_ext."):
                    name = a.name
                    while name not in known and "." in name:
                        name = name.rsplit(".", 1)[0]
                    out.add(name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = mod if is_pkg else mod.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rsplit(".", 1)[0]
                base = f"{pkg}.{node.module}" if node.module else pkg
            elif node.module and (node.module == "cina_ext" or node.module.startswith("cina_ext.")):
                base = node.module
            else:
                continue
            resolve(base, [a.name for a in node.names])
    out.discard(mod)
    return {m for m in out if m.startswith("cina_ext")}


def graph() -> dict:
    known = all_modules()
    known_names = set(known) | {"cina_ext._build_info", "cina_ext._C"}
    return {m: imports_of(m, p, known_names) for m, p in known.items()}


def test_every_module_has_a_layer():
    for mod in all_modules():
        layer(mod)


def test_no_upward_or_sideways_import():
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            if dep == FACADE:
                bad.append(f"{mod} imports the package facade cina_ext (import the module it needs)")
            elif group(dep) != group(mod) and layer(dep) >= layer(mod):
                bad.append(f"{mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)})")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    g = graph()
    state: dict = {}
    stack: list = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d in g and not state.get(d):
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if not state.get(m):
            visit(m)


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The rules above can fail: a module of a low layer importing a higher one is reported."""
    known = {"cina_ext._core.checks", "cina_ext.estimators.base"}
    src = tmp_path / "checks.py"
    src.write_text("def f():\n    from ..estimators.base import X\n")
    monkeypatch.setattr(Path, "relative_to", lambda self, other: Path("cina_ext/_core/checks.py"))
    deps = imports_of("cina_ext._core.checks", src, known)
    assert deps == {"cina_ext.estimators.base"}
    assert layer("cina_ext.estimators.base") > layer("cina_ext._core.checks")
