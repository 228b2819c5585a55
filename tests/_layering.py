"""The layering rule of the ``workbench`` package and a reader of its import graph (ast only).

Layers, lowest first; a module may import from its own folder or from a lower layer:

    core  <-  report  <-  data  <-  evaluation | analysis  <-  models  <-  inference
          <-  studies | inspection  <-  cli

``report`` (figures) sits just above ``core`` so that every layer can draw. Folders on the same
layer (evaluation and analysis; studies and inspection) stay independent of each other.
"""
from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

LAYERS: dict[str, int] = {
    "core": 0,
    "report": 1,
    "data": 2,
    "evaluation": 3, "analysis": 3,
    "models": 4,
    "inference": 5,
    "studies": 6, "inspection": 6,
    "cli": 7,
}
ROOT = "workbench"


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted module name (or package)
    file: Path
    line: int


def _folder(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != ROOT or len(parts) < 2:
        return None
    # workbench.__init__ / __main__ are the top level; anything else below workbench is a folder
    return parts[1] if parts[1] in LAYERS or len(parts) > 2 else None


def allowed(importer: str, imported: str) -> bool:
    """Whether ``importer`` may import ``imported`` under the layering rule."""
    a, b = _folder(importer), _folder(imported)
    if a is None or b is None or a == b:
        return True  # the top-level package (__init__, __main__) and imports within one folder
    if a not in LAYERS or b not in LAYERS:
        return False
    return LAYERS[b] < LAYERS[a]


def _module_name(path: Path, package: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(package: Path, *, module_level_only: bool = False) -> list[Import]:
    """Every workbench-internal import in ``package`` (a ``workbench`` folder).

    ``module_level_only`` keeps the imports executed at import time (the ones that can form a
    cycle); otherwise imports inside functions are included too.
    """
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    out: list[Import] = []
    for name, path in sorted(modules.items()):
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node, top in _import_nodes(path.read_text()):
            if module_level_only and not top:
                continue
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
                targets = subs or [mod]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t == ROOT or t.startswith(ROOT + "."):
                    out.append(Import(name, t, path, node.lineno))
    return out


@functools.lru_cache(maxsize=None)
def _import_nodes(source: str) -> tuple[tuple[ast.Import | ast.ImportFrom, bool], ...]:
    """The import statements of one module's source, each with whether it runs at import time.
    Cached by source text: the tests read the same tree (and copies of it) several times."""
    tree = ast.parse(source)
    top = {id(n) for n in tree.body}
    return tuple((n, id(n) in top) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))


def check_layering(graph: list[Import]) -> list[Import]:
    """The imports that break the rule."""
    return [i for i in graph if not allowed(i.importer, i.imported)]


def violation_message(v: Import) -> str:
    a, b = _folder(v.importer), _folder(v.imported)
    lower = sorted((f for f, lv in LAYERS.items() if lv < LAYERS.get(a, -1)), key=LAYERS.get)
    rel = Path(*v.file.parts[v.file.parts.index(ROOT) + 1:]) if ROOT in v.file.parts else v.file
    return (f"{rel}:{v.line} imports {v.imported}: {a}/ (layer {LAYERS.get(a)}) may import only from "
            f"{a}/ and the layers below it ({', '.join(lower) or 'none'}), not from {b}/ "
            f"(layer {LAYERS.get(b)}). Move the shared code down a layer, or pass it in as an argument.")


def find_cycles(graph: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    edges: dict[str, set[str]] = {}
    for i in graph:
        edges.setdefault(i.importer, set()).add(i.imported)
        edges.setdefault(i.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)
