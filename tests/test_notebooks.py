"""Every study notebook executes end to end with papermill on the vendored real data (smoke profile)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench.studies.notebooks import error_names, missing_figures, run_notebook
from workbench.core.paths import NOTEBOOKS_DIR


def test_every_notebook_has_a_parameters_cell_and_no_stored_outputs():
    # the raw JSON, not nbformat.read: that adds missing ids silently (and the notebook stack is slow to import)
    for path in sorted(NOTEBOOKS_DIR.glob("*.ipynb")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        assert raw["nbformat"] == 4, f"{path.name}: nbformat {raw['nbformat']}, expected 4"
        tagged = [c for c in raw["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
        assert "profile" in "".join(tagged[0]["source"]), f"{path.name}: needs a 'profile' parameter (smoke/full)"
        assert not any(c.get("outputs") for c in raw["cells"] if c["cell_type"] == "code"), f"{path.name}: strip outputs"
        missing = [k for k, c in enumerate(raw["cells"]) if "id" not in c]
        assert not missing, f"{path.name}: cells {missing} lack an id (nbformat 4.5 makes it an error)"


@pytest.mark.parametrize("dataset, classes", [("bccd", {"Platelets": 292, "RBC": 3350, "WBC": 301}),
                                              ("monuseg", {"nucleus": 1010}),
                                              ("mnfinder", {"mn": 341, "nucleus": 399})])
@pytest.mark.slow
def test_dataset_audit_notebook(tmp_path, dataset, classes):
    executed = run_notebook("01_dataset_audit", {"dataset": dataset, "profile": "smoke", "examples": 4},
                            out_dir=tmp_path)
    assert not error_names(executed)
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["classes"] == classes  # equal to the counts in the raw files (see the importer tests)
    assert (tmp_path / "audit" / "figures" / "class_counts.png").exists()
    assert not missing_figures(executed, len(list((tmp_path / "audit" / "figures").glob("*.pdf"))))


@pytest.mark.slow
def test_pretrain_vs_scratch_notebook_smoke(tmp_path):
    executed = run_notebook("03_pretrain_vs_scratch", {"dataset": "bccd", "profile": "smoke"}, out_dir=tmp_path)
    assert not error_names(executed)
    out = tmp_path / "results"
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["arm"]) == {"pretrain (source)", "scratch", "fine-tune", "scratch, equal compute"}
    assert runs["map50"].notna().all() and (runs["duration_s"] > 0).all()
    eq = runs[runs["arm"] == "scratch, equal compute"]["epochs"].iloc[0]
    assert eq > runs[runs["arm"] == "scratch"]["epochs"].max()
    fine = json.loads((tmp_path / "work" / "runs" / "fine-tune_f100_s0" / "run.json").read_text())
    assert fine["model"]["pretrained"].endswith("pretrain_f100_s0/weights/best.pt")  # the pretraining cell's weights
    epochs = pd.read_csv(out / "epochs.csv")
    assert set(epochs["run_id"]) == set(runs["run_id"]) and epochs["mAP50"].between(0, 1).all()
    for table in ("headline", "summary", "by_arm"):
        assert len(pd.read_csv(out / f"{table}.csv")) > 0
    summary = pd.read_csv(out / "summary.csv")
    assert {"arm", "seed", "fraction", "split", "map50", "map50_95"} <= set(summary.columns)
    assert (summary["split"] == "test").all() and (summary["test_images"] > 0).all()  # scored on held-out test
    for fig in ("map50_vs_epoch", "label_efficiency", "test_map50"):
        assert (out / f"{fig}.png").exists() and (out / f"{fig}.pdf").exists()
    caption = (out / "map50_vs_epoch.caption.txt").read_text()
    assert "Runs: pretrain_f100_s0" in caption and "VALIDATION" in caption
    study = json.loads((out / "study.json").read_text())
    assert study["study"] == "03_pretrain_vs_scratch" and len(study["cells"]) == len(runs)
    assert not missing_figures(executed, len(list(out.glob("*.pdf"))))


@pytest.mark.slow
def test_model_size_notebook_smoke(tmp_path):
    executed = run_notebook("04_model_size", {"dataset": "bccd", "profile": "smoke"}, out_dir=tmp_path)
    assert not error_names(executed)
    out = tmp_path / "results"
    table = pd.read_csv(out / "model_size.csv")
    assert table["model"].tolist() == ["yolov8n", "yolov8s"]
    assert table["params"].is_monotonic_increasing and (table["latency_ms"] > 0).all()
    assert not missing_figures(executed, len(list((tmp_path / "results").glob("*.pdf"))))
    # scored on a test split held out of val (val chose best.pt), with intervals and per-class AP
    study = json.loads((out / "study.json").read_text())
    assert study["split"] == "test" and study["hold_out"]["source"] == "val" and study["test_images"] == 8
    assert (table["split"] == "test").all() and (table["test_images"] == study["test_images"]).all()
    assert {"map50_lo", "map50_hi", "map50_95_lo", "map50_95_hi", "val_map50"} <= set(table.columns)
    assert (table["map50_lo"] <= table["map50_hi"]).all()
    assert {"ap50_RBC", "ap50_WBC", "ap50_Platelets"} <= set(table.columns)
    assert "TEST split (8 images" in (out / "model_size.caption.txt").read_text()


@pytest.mark.slow
def test_large_images_notebook_smoke(tmp_path):
    executed = run_notebook("07_large_images", {"profile": "smoke", "work_dir": str(tmp_path / "work")},
                            out_dir=tmp_path / "out")
    assert not error_names(executed)
    out = tmp_path / "out" / "results"
    for prefix, n_true in (("", None), ("micronuclei_", 420)):  # part 2: the 3 held-out MNFinder images
        table = pd.read_csv(out / f"{prefix}large_images.csv")
        assert table["method"].tolist()[0] == "one-stage tiled" and set(table["method"]) == {
            "one-stage tiled", "two-stage", "whole image"}
        assert (table["total_s"] > 0).all() and table["speedup"].iloc[0] == 1.0
        assert (out / f"{prefix}time_vs_map50.png").exists() and (out / f"{prefix}time_vs_map50.pdf").exists()
        assert set(pd.read_csv(out / f"{prefix}per_image.csv")["method"]) == set(table["method"])
        if n_true:
            assert (table["n_true"] == n_true).all() and (table["n_true_mn"] == 183).all()
            assert table["mn_recall"].between(0, 1).all() and table["cells_in_regions"].iloc[1:2].between(0, 1).all()
    study = json.loads((out / "study.json").read_text())
    assert study["micronuclei"]["run_ids"] == {"native": "mn_native_yolov8n_x1_s0",
                                               "upsampled": "mn_upsampled_yolov8n_x2_s0"}
    assert (tmp_path / "work" / "micronuclei" / "runs" / "mn_native_yolov8n_x1_s0" / "run.json").exists()
    assert not missing_figures(executed, len(list(out.glob("*.pdf"))))


@pytest.mark.slow
# n_test: the profile's cap on test images; None: all that the hold-out of MNFinder's 3 vendored val images gives
@pytest.mark.parametrize("dataset, group_by, n_test, positive", [("bccd", "density", 6, ["WBC", "Platelets"]),
                                                                  ("mnfinder", "set", None, ["mn"])])
def test_independent_test_notebook_smoke(tmp_path, dataset, group_by, n_test, positive):
    executed = run_notebook("05_independent_test", {"dataset": dataset, "group_by": group_by, "profile": "smoke",
                                                    "work_dir": str(tmp_path / "work")}, out_dir=tmp_path / "out")
    assert not error_names(executed)
    out = tmp_path / "out" / "results"
    rates = pd.read_csv(out / "rates.csv")
    assert set(rates["system"]) == {"detector-only", "cascade"}
    assert set(rates["metric"]) == {"detection_rate", "classification_rate", "fp_rate", "fn_rate"}
    assert "all" in set(rates["group"]) and len(set(rates["group"])) > 1  # overall and per group
    settings = json.loads((out / "study.json").read_text())
    meta = pd.read_csv(f"{settings['data']}/meta.csv")
    n_test = n_test or int((meta["split"] == "test").sum())
    assert settings["split"] == "test" and settings["test_images"] == n_test > 0 and settings["positive"] == positive
    assert settings["detector_init"] is None  # smoke trains from scratch; cpu fine-tunes the source model
    assert f"TEST split: {n_test} images" in (out / "class_share.caption.txt").read_text()
    assert [c["config"]["step"] for c in settings["cells"]] == ["detector", "classifier", "evaluation"]
    cascade = pd.read_csv(out / "predictions_cascade.csv")
    assert {"det_class", "det_score", "cls_class", "cls_prob", "final_class", "changed"} <= set(cascade.columns)
    pf = pd.read_csv(out / "pass_fail.csv")
    assert {"target", "passed", "passed_ci"} <= set(pf.columns)
    assert len(pd.read_csv(out / "stats_counts_truth.csv")) == n_test  # one row per test image
    counting = pd.read_csv(out / "counting.csv")
    assert set(counting["system"]) == {"detector-only", "cascade"} and (counting["images"] == n_test).all()
    for fig in ("class_share", "count_agreement", "cell_size", "neighbourhood", "worst_overlays"):
        assert (out / f"{fig}.png").exists() and (out / f"{fig}.pdf").exists()
    assert not missing_figures(executed, len(list(out.glob("*.pdf"))))


@pytest.mark.slow  # the notebook stack (nbformat, jsonschema) takes seconds to import
def test_error_names_reports_the_exceptions_of_executed_cells(tmp_path):
    import nbformat
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
