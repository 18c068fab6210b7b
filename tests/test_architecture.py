"""The package's import graph respects its layers (docs/architecture.md).

Every import inside ``marl_two_tower`` (module level or inside a function, absolute
or relative) is an edge importer -> imported. The test fails on an import that
points upward in the layer order, on any import cycle between modules, and on
``eval`` or ``serving`` importing ``train``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

PKG = "marl_two_tower"
ROOT = Path(__file__).resolve().parent.parent / PKG

# Bottom to top; a module may import from its own layer or any lower one.
LAYERS: list[set[str]] = [
    {"", "errors", "config", "checkpoint", "utils"},
    {"data"},
    {"metrics"},
    {"fairness"},
    {"model", "baselines"},
    {"eval"},
    {"train"},
    {"study"},
    {"serving"},
    {"cli"},
]
FORBIDDEN = {("eval", "train"), ("serving", "train")}


def layer_of(module: str) -> int:
    """Index in LAYERS of a dotted module name relative to the package ('' = __init__)."""
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"module {module!r} is in no layer: add its package to LAYERS")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """Package modules imported anywhere in ``path`` (``from pkg.a import b`` counts
    as an import of ``a.b`` when that is a module, else of ``a``)."""
    name = module_name(path, root)
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if name else []
    base_parts = here if is_pkg else here[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] == PKG]
            out |= {t[len(PKG) + 1:] if t != PKG else "" for t in targets}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base_parts[: len(base_parts) - node.level + 1]
                src = ".".join([*parts, *([node.module] if node.module else [])])
            elif node.module and node.module.split(".")[0] == PKG:
                src = node.module[len(PKG) + 1:] if node.module != PKG else ""
            else:
                continue
            for alias in node.names:
                sub = f"{src}.{alias.name}" if src else alias.name
                out.add(sub if sub in modules else src)
    out.discard(name)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """importer -> set of imported package modules, over every .py file under ``root``."""
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    return {module_name(p, root): imports_of(p, modules, root) & modules for p in paths}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Edges that point to a higher layer, or that FORBIDDEN names."""
    bad = []
    for src, dsts in graph.items():
        for dst in sorted(dsts):
            if layer_of(dst) > layer_of(src):
                bad.append(f"{src} -> {dst} (layer {layer_of(src)} imports layer {layer_of(dst)})")
            elif (src.split(".")[0], dst.split(".")[0]) in FORBIDDEN:
                bad.append(f"{src} -> {dst} (forbidden)")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _lines(items: Iterable[str]) -> str:
    return "\n".join(items)


def test_every_module_is_in_a_layer():
    for mod in import_graph():
        layer_of(mod)


def test_no_import_points_upward():
    bad = upward_imports(import_graph())
    assert not bad, "imports that point upward:\n" + _lines(bad)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + _lines(" <-> ".join(c) for c in found)


def test_the_checks_catch_violations(tmp_path):
    """The checker itself: a planted upward import, a forbidden edge and a cycle are found."""
    pkg = tmp_path / PKG
    for rel, text in {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/a.py": "from marl_two_tower.cli import main\n",  # upward
        "cli/__init__.py": "",
        "cli/main.py": "",
        "eval/__init__.py": "",
        "eval/x.py": "def f():\n    from marl_two_tower.train import t\n",  # forbidden, lazily
        "train/__init__.py": "",
        "train/t.py": "",
        "model/__init__.py": "",
        "model/p.py": "from . import q\n",  # cycle p <-> q (relative imports)
        "model/q.py": "from marl_two_tower.model import p\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph = import_graph(pkg)
    bad = upward_imports(graph)
    assert any(b.startswith("data.a -> cli.main") for b in bad)
    assert any(b.startswith("eval.x -> train.t") for b in bad)
    assert cycles(graph) == [["model.p", "model.q"]]


def test_eval_and_serving_never_import_train():
    graph = import_graph()
    leaks = [f"{src} -> {dst}" for src, dsts in graph.items() if src.split(".")[0] in ("eval", "serving")
             for dst in dsts if dst.split(".")[0] == "train"]
    assert not leaks, _lines(leaks)
