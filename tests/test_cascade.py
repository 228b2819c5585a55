"""The cascade: the decision rule on hand-built detections, error attribution from one
class-agnostic matching, and a tiny real end to end on BCCD (detector 1 epoch at 160 px,
classifier 1 epoch on 32 px crops): output columns, ``changed``, frozen thresholds, tuning."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workbench.models import yolo
from workbench.inference.cascade import (
    COLUMNS, attribute_errors, cascade_predict, detector_only, fuse, read_cascade, tune_thresholds, write_cascade)
from workbench.models.classifier import load_classifier, train_classifier
from workbench.evaluation.clinical import compare_systems
from workbench.models.crops import CropSpec
from workbench.evaluation.files import load_ground_truth
from workbench.inference.predict import predict

from _tiny import tiny_bccd

CLASSES = ["Platelets", "RBC", "WBC"]


def dets(rows):
    return pd.DataFrame(rows, columns=["image", "x1", "y1", "x2", "y2", "class", "score"])


# ----------------------------------------------------------------------------- the rule

def test_fuse_applies_the_threshold_and_scores():
    det = dets([("a", 0, 0, 10, 10, "RBC", 0.9),   # classifier sure: WBC
                ("a", 20, 0, 30, 10, "RBC", 0.8),  # classifier unsure (0.5 < 0.6): keep RBC
                ("b", 0, 0, 10, 10, "WBC", 0.6),   # classifier agrees
                ("b", 5, 5, 9, 9, "cell", 0.7)])   # detector class unknown to the classifier
    probs = np.array([[0.05, 0.15, 0.8], [0.3, 0.2, 0.5], [0.0, 0.1, 0.9], [0.1, 0.2, 0.7]])
    out = fuse(det, probs, CLASSES, cls_thr=0.6)
    assert list(out.columns) == COLUMNS
    assert out["final_class"].tolist() == ["WBC", "RBC", "WBC", "WBC"]
    assert (out["class"] == out["final_class"]).all()
    assert out["changed"].tolist() == [True, False, False, True]
    assert out["cls_class"].tolist() == ["WBC", "WBC", "WBC", "WBC"]
    np.testing.assert_allclose(out["cls_prob"], [0.8, 0.5, 0.9, 0.7])
    np.testing.assert_allclose(out["final_prob"], [0.8, 0.2, 0.9, 0.7])
    np.testing.assert_allclose(out["score"], [0.9 * 0.8, 0.8 * 0.2, 0.6 * 0.9, 0.7 * 0.7])
    # cls_thr 0: the classifier always decides; a detector class it does not know scores det_score
    always = fuse(det.assign(**{"class": "cell"}), probs, CLASSES, cls_thr=0.0)
    assert always["final_class"].tolist() == ["WBC", "WBC", "WBC", "WBC"] and always["changed"].all()
    never = fuse(det, probs, CLASSES, cls_thr=1.0)
    assert not never["changed"].any()
    np.testing.assert_allclose(never.loc[3, "score"], 0.7)  # 'cell' is not a classifier class
    back = detector_only(out)
    assert back["class"].tolist() == det["class"].tolist()
    np.testing.assert_allclose(back["score"], det["score"])


def test_error_attribution_from_one_class_agnostic_matching():
    gt = pd.DataFrame([("a", "RBC", 0, 0, 10, 10), ("a", "WBC", 20, 0, 30, 10), ("a", "RBC", 40, 0, 50, 10),
                       ("a", "Platelets", 60, 0, 70, 10), ("b", "RBC", 0, 0, 10, 10)],
                      columns=["image", "class", "x1", "y1", "x2", "y2"])
    det = dets([("a", 0, 0, 10, 10, "RBC", 0.9),     # right, classifier keeps
                ("a", 20, 0, 30, 10, "RBC", 0.9),    # detector wrong, classifier fixes to WBC
                ("a", 40, 0, 50, 10, "RBC", 0.9),    # detector right, classifier breaks it (WBC)
                ("a", 100, 100, 110, 110, "RBC", 0.9),  # spurious
                ("b", 1, 0, 11, 10, "WBC", 0.9)])    # detector wrong, classifier keeps wrong
    probs = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=float)
    pred = fuse(det, probs, CLASSES)
    table, summary = attribute_errors(gt, pred)
    by = table.set_index(["image", "gt_class", "error"])
    assert len(table) == 6  # 5 GT cells + 1 spurious prediction
    errors = table.sort_values(["image", "x1"])["error"].tolist()
    assert errors == ["correct", "correct", "misclassified", "missed", "spurious", "misclassified"]
    assert table.loc[table["error"] == "missed", "stage"].item() == "detector"
    assert table.loc[table["error"] == "spurious", "stage"].item() == "detector"
    assert set(table.loc[table["error"] == "misclassified", "stage"]) == {"classifier"}
    assert by.loc[("a", "WBC", "correct"), "changed"]  # fixed by the classifier
    n = summary.set_index("count")["n"].to_dict()
    assert n == {"gt_cells": 5, "detected": 4, "missed": 1, "correct": 2, "misclassified": 2,
                 "detector_label_right": 2, "fixed_by_classifier": 1, "broken_by_classifier": 1,
                 "predictions": 5, "spurious": 1}
    assert summary.set_index("count").loc["missed", "share"] == pytest.approx(0.2)
    # a plain detector table works too (det_class = class)
    plain, s2 = attribute_errors(gt, detector_only(pred))
    assert s2.set_index("count").loc["correct", "n"] == 2 and not plain["changed"].any()


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    data = tiny_bccd(root / "bccd", n_train=8, n_val=4)
    detector = yolo.train(data, model="yolov8n.yaml", epochs=1, imgsz=160, batch=4, workers=1, device="cpu",
                          seed=0, runs_root=root / "runs")
    classifier = train_classifier(data, arch="test_efficientnet", crop=CropSpec(size=32), epochs=1, batch=16,
                                  seed=0, device="cpu", runs_root=root / "runs", verbose=False)
    return data, detector, classifier


@pytest.mark.slow
def test_cascade_end_to_end_on_real_bccd(trained):
    data, detector, classifier = trained
    # an untrained-looking 1-epoch detector scores low: a low confidence still gives many boxes
    out = cascade_predict(classifier, data, detector=detector, split="val", det_conf=0.001, device="cpu",
                          chunk=3)
    assert list(out.columns) == COLUMNS and len(out) > 20
    assert set(out["image"]) <= set(load_ground_truth(data, split="val").images)
    assert (out["det_score"] >= 0.001).all()
    assert (out["changed"] == (out["final_class"] != out["det_class"])).all()
    assert (out["class"] == out["final_class"]).all() and (out["cls_class"] == out["final_class"]).all()
    assert set(out["final_class"]) <= set(CLASSES)
    np.testing.assert_allclose(out["score"], out["det_score"] * out["final_prob"], rtol=1e-6)
    # the cascade's boxes are the detector's own (same images, same threshold)
    alone = predict(detector, data, split="val", conf=0.001, device="cpu")
    assert len(alone) == len(out)
    np.testing.assert_allclose(np.sort(alone["score"]), np.sort(out["det_score"]), atol=1e-4)
    # classifier probabilities agree with a direct call on the same crops
    clf = load_classifier(classifier, device="cpu")
    from workbench.models.crops import crop_table, dataset_images

    pixels = dataset_images(data, sorted(set(out["image"])))
    probs = clf.predict_proba(crop_table(out, pixels, clf.spec))
    np.testing.assert_allclose(probs.max(1), out["cls_prob"], atol=1e-5)
    # the same images compared as detector-only vs cascade in one tidy table
    gt = load_ground_truth(data, split="val")
    table = compare_systems(gt.boxes, {"detector-only": detector_only(out), "cascade": out},
                            positive=["WBC", "Platelets"], meta=gt.meta, n_boot=50)
    wide = table.pivot(index="metric", columns="system", values="value")
    assert wide.loc["detection_rate", "cascade"] == wide.loc["detection_rate", "detector-only"]


@pytest.mark.slow
def test_tiled_cascade_classifies_each_merged_box_once_from_the_whole_image(trained, tmp_path, monkeypatch):
    """Large images: tiled detection (boxes identical to tiled detection alone), then one
    classification per merged box, from that box's crop of the whole image."""
    from workbench import cli
    from workbench.cli import cascade as cli_cascade
    from workbench.cli import extensions as cli_extensions
    from workbench.models.crops import crop_table, dataset_images
    from workbench.core.tables import read_predictions
    from workbench.inference.tiled_inference import TileSettings, predict_large, tile_windows

    data, detector, classifier = trained
    tiles = TileSettings(tile=160, overlap=0.25, batch=8)
    out = cascade_predict(classifier, data, detector=detector, split="val", det_conf=0.001, device="cpu", tiles=tiles)
    alone = predict_large(detector, data, settings=tiles, conf=0.001, device="cpu", split="val")
    assert list(out.columns) == COLUMNS and len(out) == len(alone) > 0
    key = ["image", "x1", "y1", "x2", "y2"]
    np.testing.assert_allclose(out.sort_values(key)[key[1:]].to_numpy(), alone.sort_values(key)[key[1:]].to_numpy())
    assert out.attrs["tiles"]["tile"] == 160
    clf = load_classifier(classifier, device="cpu")
    pixels = dataset_images(data, sorted(set(out["image"])))
    np.testing.assert_allclose(clf.predict_proba(crop_table(out, pixels, clf.spec)).max(1), out["cls_prob"], atol=1e-5)
    # some merged boxes straddle an inner tile edge: each is still one row, classified whole
    inner_x = {int(x) for x in tile_windows(480, 640, tile=160, overlap=0.25)[:, 0] if x > 0}
    assert any(((out["x1"] < x) & (out["x2"] > x)).any() for x in inner_x)

    if cli_cascade.register not in cli_extensions.REGISTRY:
        monkeypatch.setattr(cli_extensions, "REGISTRY", [*cli_extensions.REGISTRY, cli_cascade.register])
    csv = tmp_path / "tiled.csv"
    assert cli.main(["cascade", "predict", str(classifier), str(data), "--detector", str(detector), "--split", "val",
                     "--det-conf", "0.001", "--device", "cpu", "--tile", "160", "--overlap", "0.25", "--batch", "8",
                     "--out", str(csv)]) == 0
    assert len(read_predictions(csv)) == len(out)


@pytest.mark.slow
def test_frozen_thresholds_and_tuning(trained):
    data, detector, classifier = trained
    with pytest.raises(ValueError, match="no detector given"):
        cascade_predict(classifier, data, split="val")
    write_cascade(classifier, detector=detector, det_conf=0.002, cls_thr=0.99)
    frozen = read_cascade(classifier)
    assert frozen["det_conf"] == 0.002 and frozen["detector"] == str(detector.resolve())
    out = cascade_predict(classifier, data, split="val", device="cpu")  # all from cascade.json
    assert out.attrs["det_conf"] == 0.002 and out.attrs["cls_thr"] == 0.99
    assert (out["det_score"] >= 0.002).all()
    unsure = out["cls_prob"] < 0.99
    assert (out.loc[unsure, "final_class"] == out.loc[unsure, "det_class"]).all()
    override = cascade_predict(classifier, data, split="val", device="cpu", cls_thr=0.0, det_conf=0.01)
    assert override.attrs["cls_thr"] == 0.0 and (override["cls_class"] == override["final_class"]).all()

    chosen, grid = tune_thresholds(classifier, data, split="val", objective="f1", det_grid=[0.001, 0.01, 0.05],
                                   cls_grid=[0.0, 0.5], device="cpu")
    assert len(grid) == 6 and {"f1", "macro_f1", "correct_rate", "detection_rate"} <= set(grid.columns)
    assert chosen["value"] == pytest.approx(grid["f1"].max())
    doc = json.loads((classifier / "cascade.json").read_text())
    assert doc["det_conf"] == chosen["det_conf"] and doc["cls_thr"] == chosen["cls_thr"]
    assert doc["tuning"]["objective"] == "f1" and doc["tuning"]["tuned_on"]["split"] == "val"
    assert (classifier / "cascade_tuning.csv").is_file()
    with pytest.raises(ValueError, match="objective"):
        tune_thresholds(classifier, data, objective="auc")


@pytest.mark.slow
def test_cli_predict_errors_and_crops(trained, tmp_path, monkeypatch, capsys):
    from workbench import cli
    from workbench.cli import cascade as cli_cascade
    from workbench.cli import extensions as cli_extensions
    from workbench.core.tables import read_predictions

    data, detector, classifier = trained
    if cli_cascade.register not in cli_extensions.REGISTRY:  # before the lead wires it in
        monkeypatch.setattr(cli_extensions, "REGISTRY", [*cli_extensions.REGISTRY, cli_cascade.register])
    out = tmp_path / "cascade.csv"
    rc = cli.main(["cascade", "predict", str(classifier), str(data), "--detector", str(detector), "--split", "val",
                   "--det-conf", "0.001", "--device", "cpu", "--out", str(out),
                   "--detector-out", str(tmp_path / "det.csv")])
    assert rc == 0
    table = read_predictions(out)
    assert list(table.columns) == COLUMNS and len(table) > 0
    assert (table["changed"] == (table["final_class"] != table["det_class"])).all()
    assert len(read_predictions(tmp_path / "det.csv")) == len(table)
    assert cli.main(["cascade", "errors", "--gt", str(data), "--split", "val", "--pred", str(out),
                     "--out", str(tmp_path / "errors")]) == 0
    summary = pd.read_csv(tmp_path / "errors" / "error_summary.csv").set_index("count")["n"]
    assert summary["detected"] + summary["missed"] == summary["gt_cells"]
    assert summary["predictions"] == len(table)
    assert cli.main(["cascade", "crops", str(data), "--split", "val", "--size", "24",
                     "--out", str(tmp_path / "crops")]) == 0
    assert len(pd.read_csv(tmp_path / "crops" / "crops.csv")) > 10
    capsys.readouterr()
    assert cli.main(["cascade", "predict", str(tmp_path / "nothing"), str(data), "--out", str(out)]) == 2
    assert "no such classifier run" in capsys.readouterr().err
    # train + tune in one command: the run gets a cascade.json tuned on val
    assert cli.main(["cascade", "train", str(data), "--arch", "test_efficientnet", "--size", "32", "--epochs", "1",
                     "--batch", "16", "--device", "cpu", "--runs-root", str(tmp_path / "runs"), "--name", "c1",
                     "--balance", "ratio", "--ratio", "2", "--negative", "RBC", "--detector", str(detector),
                     "--det-grid", "0.001,0.01", "--cls-grid", "0,0.5"]) == 0
    frozen = read_cascade(tmp_path / "runs" / "c1")
    assert frozen["det_conf"] in (0.001, 0.01) and frozen["tuning"]["objective"] == "f1"
    rec = json.loads((tmp_path / "runs" / "c1" / "run.json").read_text())
    assert rec["balance"]["mode"] == "ratio" and rec["balance"]["ratio"] == 2.0
