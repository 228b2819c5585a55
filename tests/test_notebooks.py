"""Every study notebook executes end to end with papermill on the vendored real data (smoke profile)."""
from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest

from workbench.studies.notebooks import error_names, run_notebook
from workbench.core.paths import NOTEBOOKS_DIR


def test_every_notebook_has_a_parameters_cell_and_no_stored_outputs():
    for path in sorted(NOTEBOOKS_DIR.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
        assert "profile" in tagged[0].source, f"{path.name}: needs a 'profile' parameter (smoke/full)"
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name}: strip outputs"
        raw = json.loads(path.read_text(encoding="utf-8"))  # nbformat.read adds missing ids silently
        missing = [k for k, c in enumerate(raw["cells"]) if "id" not in c]
        assert not missing, f"{path.name}: cells {missing} lack an id (nbformat 4.5 makes it an error)"


@pytest.mark.parametrize("dataset, classes", [("bccd", {"Platelets": 292, "RBC": 3350, "WBC": 301}),
                                              ("monuseg", {"nucleus": 1010}),
                                              ("mnfinder", {"mn": 341, "nucleus": 399})])
def test_dataset_audit_notebook(tmp_path, dataset, classes):
    executed = run_notebook("01_dataset_audit", {"dataset": dataset, "profile": "smoke", "examples": 4},
                            out_dir=tmp_path)
    assert not error_names(executed)
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["classes"] == classes  # equal to the counts in the raw files (see the importer tests)
    assert (tmp_path / "audit" / "figures" / "class_counts.png").exists()


def test_pretrain_vs_scratch_notebook_smoke(tmp_path):
    executed = run_notebook("03_pretrain_vs_scratch", {"target": "bccd", "profile": "smoke"}, out_dir=tmp_path)
    assert not error_names(executed)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert set(runs["arm"]) == {"pretrain (source)", "scratch", "fine-tune", "scratch, equal compute"}
    assert runs["map50"].notna().all() and (runs["duration_s"] > 0).all()
    eq = runs[runs["arm"] == "scratch, equal compute"]["epochs"].iloc[0]
    assert eq > runs[runs["arm"] == "scratch"]["epochs"].max()
    for fig in ("map50_vs_epoch", "label_efficiency"):
        assert (tmp_path / f"{fig}.png").exists() and (tmp_path / f"{fig}.pdf").exists()
    assert "runs" in (tmp_path / "map50_vs_epoch.caption.txt").read_text()


def test_model_size_notebook_smoke(tmp_path):
    executed = run_notebook("04_model_size", {"dataset": "bccd", "profile": "smoke"}, out_dir=tmp_path)
    assert not error_names(executed)
    table = pd.read_csv(tmp_path / "results" / "model_size.csv")
    assert table["model"].tolist() == ["yolov8n", "yolov8s"]
    assert table["params"].is_monotonic_increasing and (table["latency_ms"] > 0).all()


def test_large_images_notebook_smoke(tmp_path):
    executed = run_notebook("07_large_images", {"profile": "smoke", "work_dir": str(tmp_path / "work")},
                            out_dir=tmp_path / "out")
    assert not error_names(executed)
    out = tmp_path / "out"
    for prefix, n_true in (("", None), ("micronuclei_", 420)):  # part 2: the 3 held-out MNFinder images
        table = pd.read_csv(out / f"{prefix}large_images.csv")
        assert table["method"].tolist()[0] == "one-stage tiled" and set(table["method"]) == {
            "one-stage tiled", "two-stage", "whole image"}
        assert (table["total_s"] > 0).all() and table["speedup"].iloc[0] == 1.0
        assert (out / f"{prefix}time_vs_map50.png").exists() and (out / f"{prefix}time_vs_map50.pdf").exists()
        if n_true:
            assert (table["n_true"] == n_true).all() and (table["n_true_mn"] == 183).all()
            assert table["mn_recall"].between(0, 1).all() and table["cells_in_regions"].iloc[1:2].between(0, 1).all()


@pytest.mark.parametrize("dataset, group_by, n_test, positive", [("bccd", "density", 6, ["WBC", "Platelets"]),
                                                                  ("mnfinder", "set", 2, ["mn"])])
def test_independent_test_notebook_smoke(tmp_path, dataset, group_by, n_test, positive):
    executed = run_notebook("05_independent_test", {"dataset": dataset, "group_by": group_by, "profile": "smoke",
                                                    "work_dir": str(tmp_path / "work")}, out_dir=tmp_path / "out")
    assert not error_names(executed)
    out = tmp_path / "out"
    rates = pd.read_csv(out / "rates.csv")
    assert set(rates["system"]) == {"detector-only", "cascade"}
    assert set(rates["metric"]) == {"detection_rate", "classification_rate", "fp_rate", "fn_rate"}
    assert "all" in set(rates["group"]) and len(set(rates["group"])) > 1  # overall and per group
    settings = json.loads((out / "settings.json").read_text())
    assert settings["split"] == "test" and settings["test_images"] == n_test and settings["positive"] == positive
    cascade = pd.read_csv(out / "predictions_cascade.csv")
    assert {"det_class", "det_score", "cls_class", "cls_prob", "final_class", "changed"} <= set(cascade.columns)
    pf = pd.read_csv(out / "pass_fail.csv")
    assert {"target", "passed", "passed_ci"} <= set(pf.columns)
    for fig in ("class_share", "cell_size", "neighbourhood", "worst_overlays"):
        assert (out / f"{fig}.png").exists() and (out / f"{fig}.pdf").exists()


def test_error_names_reports_the_exceptions_of_executed_cells(tmp_path):
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from workbench.studies.notebooks import error_names

    nb = new_notebook(cells=[new_code_cell("1", outputs=[new_output("execute_result", data={"text/plain": "1"})]),
                             new_code_cell("1/0", outputs=[new_output("error", ename="ZeroDivisionError",
                                                                      evalue="division by zero", traceback=[])])])
    path = tmp_path / "executed.ipynb"
    nbformat.write(nb, path)
    assert error_names(path) == ["ZeroDivisionError"]
    nb.cells.pop()
    nbformat.write(nb, path)
    assert error_names(path) == []
