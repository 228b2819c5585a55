"""Notebook 08 (micronuclei study) end to end on the vendored MNFinder data, and the study's
nucleus-guided path with constructed detectors."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.inference.dense import MN_PROB_GRID
from workbench.studies import micronuclei
from workbench.studies.notebooks import error_names, missing_figures, run_notebook


@pytest.mark.slow
def test_micronuclei_notebook_smoke(tmp_path):
    executed = run_notebook("08_micronuclei", {"profile": "smoke", "work_dir": str(tmp_path / "work")},
                            out_dir=tmp_path / "out")
    assert not error_names(executed)
    out = tmp_path / "out" / "results"
    summary = pd.read_csv(out / "mn_study.csv")
    assert summary["approach"].tolist() == list(micronuclei.APPROACHES)
    rates = summary.filter(like="recall").join(summary.filter(like="precision"))
    assert ((rates >= 0) & (rates <= 1) | rates.isna()).all().all()
    assert (summary["time_per_image_s"] > 0).all()
    criteria = pd.read_csv(out / "mn_criteria.csv")
    assert set(criteria["criterion"]) == {"centre<=3px", "IoU0.5@min8px", "IoU0.5"}
    assert (criteria.loc[criteria["class"] == "mn", "n_gt"] == 183).all()  # the vendored validation MN
    freq = pd.read_csv(out / "mn_frequency.csv")
    assert len(freq) == 3 * len(micronuclei.APPROACHES) and freq["true_mn_frequency"].between(0, 1).all()
    clinical = pd.read_csv(out / "mn_clinical.csv")
    assert set(clinical["metric"]) == {"detection_rate", "classification_rate", "fp_rate", "fn_rate"}
    assert (clinical["target"] > 0).all()
    sweep = pd.read_csv(out / "mn_sweep.csv")
    for _, g in sweep.groupby("approach"):
        assert g.sort_values("score_thr")["recall"].is_monotonic_decreasing
    for fig in ("mn_frequency_scatter", "mn_criteria"):
        assert (out / f"{fig}.png").exists() and (out / f"{fig}.pdf").exists()
    assert not missing_figures(executed, len(list(out.glob("*.pdf"))))  # every figure shown as a picture
    pred = pd.read_csv(out / "mn_predictions.csv")
    assert set(pred["approach"]) <= set(micronuclei.APPROACHES) and (pred["score"] >= 0.01).all()
    study = json.loads((out / "study.json").read_text())
    assert set(study["run_ids"]) == {"native", "upsampled", "p2"} and study["n_true_mn"] == 183
    dense = study["dense"]  # tuned on training images only (the 2 vendored ones: one for validation)
    assert dense["status"] == "finished" and set(dense["val_images"]) <= set(study["train_images"])
    errors = pd.read_csv(out / "mn_errors.csv")
    assert set(errors["approach"]) == set(micronuclei.APPROACHES) and (errors["n_true_mn"].groupby(errors["approach"]).sum() == 183).all()
    assert set(pd.read_csv(out / "mn_per_nucleus.csv")["approach"]) == {"truth", *micronuclei.APPROACHES}
    assert set(pd.read_csv(out / "mn_training.csv")["detector"]) == {"native", "upsampled", "p2", "dense"}
    assert (out / "mn_dense_worst.png").exists()
    curve = pd.read_csv(out / "mn_dense_sweep.csv")  # MN re-extracted at each probability of the tuning grid
    assert curve["prob"].tolist() == list(MN_PROB_GRID) and curve["recall"].between(0, 1).all()
    assert [c["key"] for c in study["cells"]][-1] == "evaluate"


def _fake_nuclei(arrays):
    """A 'native' detector: one nucleus in the middle of every input."""
    return [pd.DataFrame({"x1": [a.shape[1] / 2 - 14], "y1": [a.shape[0] / 2 - 14], "x2": [a.shape[1] / 2 + 14],
                          "y2": [a.shape[0] / 2 + 14], "class": ["nucleus"], "score": [0.9]}) for a in arrays]


def _fake_bright_spots(arrays):
    """An 'upsampled' MN detector: a 10 px box centred on the bright pixels of each canvas, if any."""
    out = []
    for a in arrays:
        grey = a if a.ndim == 2 else a[..., 0]
        ys, xs = np.nonzero(grey > 200)
        found = int(len(xs) > 0)
        x, y = (xs.mean() + 0.5, ys.mean() + 0.5) if found else (0, 0)  # pixel centres
        out.append(pd.DataFrame({"x1": [x - 5.0] * found, "y1": [y - 5.0] * found, "x2": [x + 5.0] * found,
                                 "y2": [y + 5.0] * found, "class": ["mn"] * found, "score": [0.8] * found}))
    return out


def test_guided_search_finds_the_mn_beside_the_nucleus_in_native_pixels():
    image = np.full((160, 160), 20, np.uint8)  # one tile: the fake nucleus sits at (80, 80), box 66..94
    image[100:104, 100:104] = 255  # a 4x4 MN centred at (102, 102), 6 px from the nucleus box
    image[10:14, 10:14] = 255  # a bright spot far from any nucleus: outside the searched neighbourhood
    prof = replace(micronuclei.PROFILES["smoke"], approaches=(micronuclei.GUIDED,), margin=12, scale=2, tile=160)
    guided = micronuclei.make_approaches(prof, {"native": _fake_nuclei, "upsampled": _fake_bright_spots})["guided"]
    table, info = guided(image)
    mn = table[table["class"] == "mn"]
    assert len(mn) == 1 and info["regions"] == 1 and 0 < info["searched_share"] < 0.2
    centre = ((mn["x1"] + mn["x2"]) / 2).item(), ((mn["y1"] + mn["y2"]) / 2).item()
    assert np.allclose(centre, (102, 102), atol=0.5)  # back in native pixels
    assert (table["class"] == "nucleus").sum() == 1


def test_scoring_of_constructed_predictions():
    from workbench.analysis.micronuclei import parents_from_colours

    objects = pd.DataFrame({
        "image_id": ["a", "a", "a", "a", "b"], "class": ["nucleus", "nucleus", "mn", "mn", "nucleus"],
        "x1": [0, 100, 31, 10, 0], "y1": [0, 100, 10, 31, 0], "x2": [30, 130, 36, 15, 30], "y2": [30, 130, 15, 36, 30],
        "source_object": [f"m instance {k} (colour #00000{k})" for k in (1, 2, 1, 1, 3)]})
    true_mn, true_nuclei = parents_from_colours(objects)
    gt = objects.rename(columns={"image_id": "image"})[["image", "class", "x1", "y1", "x2", "y2"]]
    shifted = gt.assign(x1=gt["x1"] + 1, x2=gt["x2"] + 1, y1=gt["y1"] + 1, y2=gt["y2"] + 1, score=0.9)
    pred = pd.concat([shifted.assign(approach="good"),
                      shifted[shifted["class"] == "nucleus"].assign(approach="no-mn")], ignore_index=True)
    per_image = pd.DataFrame({"approach": ["good", "good", "no-mn", "no-mn"], "image": ["a", "b"] * 2,
                              "time_s": [1.0, 3.0, 0.5, 0.5]})
    prof = micronuclei.PROFILES["smoke"]
    r = micronuclei.score(prof, gt, true_mn, true_nuclei, pred, per_image, images=["a", "b"])
    t = r["mn_study"].set_index("approach")
    assert t.loc["good", "mn_recall_centre3"] == 1.0 and t.loc["good", "mn_precision_centre3"] == 1.0
    assert t.loc["good", "mn_recall_iou50"] < 1.0  # 5x5 boxes shifted diagonally by 1 px: IoU 0.47
    assert t.loc["good", "freq_mae"] == 0.0 and t.loc["good", "time_per_image_s"] == 2.0
    assert t.loc["no-mn", "mn_recall_centre3"] == 0.0
    freq = r["mn_frequency"].set_index(["approach", "image"])
    assert freq.loc[("good", "a"), "true_mn_frequency"] == 0.5 and freq.loc[("no-mn", "a"), "frequency_error"] == -0.5
    clin = r["mn_clinical"].set_index(["approach", "metric"])
    assert clin.loc[("good", "fn_rate"), "value"] == 0.0 and bool(clin.loc[("good", "fn_rate"), "passed"])
    assert clin.loc[("no-mn", "fn_rate"), "value"] == 1.0
    sweep = r["mn_sweep"][r["mn_sweep"]["approach"] == "good"]
    assert sweep["recall"].is_monotonic_decreasing and sweep["recall"].iloc[0] == 1.0


def test_one_cell_per_detector_then_the_evaluation(tmp_path):
    study = micronuclei.MicronucleiStudy(profile="smoke", work_dir=tmp_path)
    cells = study.cells()
    assert [c.key for c in cells] == ["mn_native_yolov8n_x1_s0", "mn_upsampled_yolov8n_x2_s0",
                                      "mn_p2_yolov8n-p2_x1_s0", "mn_dense_unet-tu-resnet18-d3-16-8-8_s0", "evaluate"]
    assert cells[-1].needs == tuple(c.key for c in cells[:-1])
    assert json.loads(json.dumps([c.to_dict() for c in cells])) == [c.to_dict() for c in cells]  # plain JSON
    # the evaluation finds each detector's run by the path derived from its cell's key
    assert study.detector_run("native") == tmp_path / "runs" / cells[0].key
    cpu = micronuclei.MicronucleiStudy(profile="cpu", work_dir=tmp_path)
    assert cpu.detector_run("upsampled").name == "mn_upsampled_yolov8n_x3_s0_plus16"  # the continued run
    guided = micronuclei.MicronucleiStudy(profile=replace(cpu.profile, approaches=("guided",)), work_dir=tmp_path)
    assert [c.key for c in guided.cells()] == [c.key for c in cpu.cells()[:2]] + ["evaluate"]
    with pytest.raises(ValueError, match="mnfinder only"):
        micronuclei.MicronucleiStudy("bccd")


def test_detectors_are_shared_with_notebook_07_by_default(tmp_path):
    from workbench.core.paths import outputs_dir

    study = micronuclei.MicronucleiStudy(profile="cpu", out_dir=tmp_path / "elsewhere")
    assert study.work_dir == outputs_dir() / "micronuclei" / "cpu"
    assert study.results_dir == tmp_path / "elsewhere" / "results"


def test_a_continued_run_older_than_its_first_run_is_stale(tmp_path):
    import os

    weights, record = tmp_path / "first" / "best.pt", tmp_path / "continued" / "run.json"
    for f in (weights, record):
        f.parent.mkdir()
        f.write_text("x")
    os.utime(record, (1_000, 1_000))
    assert micronuclei.stale(record.parent, weights)  # the first run was trained again since
    os.utime(record, (weights.stat().st_mtime + 10,) * 2)
    assert not micronuclei.stale(record.parent, weights)
    assert not micronuclei.stale(tmp_path / "never-trained", weights)


def test_result_rows_round_trip_to_tables():
    per_image = pd.DataFrame({"approach": ["native", "guided"], "image": ["a", "a"], "time_s": [1.0, 0.5],
                              "regions": [np.nan, 2.0]})
    boxes = pd.DataFrame({"x1": [1.0], "y1": [2.0], "x2": [3.0], "y2": [4.0], "class": ["mn"], "score": [0.9],
                          "image": ["a"], "approach": ["guided"]})
    rows = micronuclei.measurement_rows(per_image, boxes, part="p")
    assert [r["kind"] for r in json.loads(json.dumps(rows))] == ["timing", "timing", "box"]  # plain JSON
    frame = pd.DataFrame([{"kind": "detector", "run_id": "r"}, *rows])  # as the study gathers every cell's rows
    got = micronuclei.measured(frame, micronuclei.BOXES, list(boxes.columns), part="p")
    pd.testing.assert_frame_equal(got, boxes)
    timing = micronuclei.measured(frame, micronuclei.TIMING, ["approach", "time_s", "regions"], part="p")
    assert timing["time_s"].tolist() == [1.0, 0.5] and np.isnan(timing["regions"].iloc[0])
    assert micronuclei.measured(frame, micronuclei.TIMING, ["approach"], part="other").empty


def test_a_continued_detector_reports_the_training_time_of_both_runs(tmp_path, monkeypatch):
    """The upsampled detector of the cpu profile is a first run plus a continued run: its
    training time in the study's table is their sum, not the continued run's alone."""
    study = micronuclei.MicronucleiStudy(profile="cpu", work_dir=tmp_path)
    durations = {"mn_upsampled_yolov8n_x3_s0": 1200.0, "mn_upsampled_yolov8n_x3_s0_plus16": 1500.0}

    def fake_train(run: Path, data: Path, **kwargs) -> Path:  # what a finished run leaves behind
        (run / "weights").mkdir(parents=True, exist_ok=True)
        (run / "run.json").write_text(json.dumps({"status": "finished", "duration_s": durations[run.name]}))
        return run

    monkeypatch.setattr(study, "train_or_reuse", fake_train)
    study.tiles = {3: tmp_path / "tiles"}
    [cell] = [c for c in study.cells() if c.config.get("detector") == "upsampled"]
    [row] = study._train(cell)
    assert row["run_id"] == "mn_upsampled_yolov8n_x3_s0_plus16" and row["train_s"] == 2700.0
