"""The package's folders are layers: a module imports only from its own folder or a lower layer.

The import graph is read with ``ast`` (every import, module-level or inside a function), so the
rule holds for lazy imports too. See README "Layout".
"""
from __future__ import annotations

from pathlib import Path

import pytest

from _layering import LAYERS, check_layering, find_cycles, import_graph, violation_message

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"


def test_every_folder_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS), f"folders without a layer or layers without a folder: {folders ^ set(LAYERS)}"


def test_no_upward_imports():
    violations = check_layering(import_graph(PACKAGE))
    assert not violations, "\n".join(violation_message(v) for v in violations)


def test_no_import_cycles():
    cycles = find_cycles(import_graph(PACKAGE, module_level_only=True))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_an_upward_import_is_reported_with_file_line_and_rule(tmp_path: Path):
    # A copy of the real tree with one upward import added: evaluation must not import inference.
    import shutil

    copy = tmp_path / "workbench"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "evaluation" / "clinical.py"
    target.write_text(target.read_text() + "\nfrom workbench.inference.predict import predict  # upward\n")
    violations = check_layering(import_graph(copy))
    assert len(violations) == 1
    message = violation_message(violations[0])
    assert "evaluation/clinical.py:" in message
    assert "workbench.inference.predict" in message
    assert "evaluation" in message and "inference" in message
    assert "may import only" in message


def test_a_cycle_is_found(tmp_path: Path):
    pkg = tmp_path / "workbench"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from workbench.core import b\n")
    (pkg / "core" / "b.py").write_text("import workbench.core.a\n")
    cycles = find_cycles(import_graph(pkg, module_level_only=True))
    assert cycles == [["workbench.core.a", "workbench.core.b"]]


@pytest.mark.parametrize("importer, imported, ok", [
    ("workbench.studies.micronuclei", "workbench.inference.tiled_inference", True),
    ("workbench.report.plots", "workbench.core.atomic", True),
    ("workbench.report.plots", "workbench.data.canonical", False),
    ("workbench.data.canonical", "workbench.models.runs", False),
    ("workbench.evaluation.clinical", "workbench.analysis.stats", False),
    ("workbench.cli.main", "workbench.studies.demo", True),
])
def test_rule_table(importer: str, imported: str, ok: bool):
    from _layering import allowed

    assert allowed(importer, imported) is ok
