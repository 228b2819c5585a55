"""Class balance (equal / ratio / weights / none), offline timm models with local pretrained
weights, and a tiny seeded classifier run on real BCCD crops (run folder, metrics, reload)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.models.balance import balance_indices, class_weights
from workbench.models.classifier import build_model, load_classifier, train_classifier
from workbench.models.crops import CropSpec, gt_crops

from _tiny import tiny_bccd

TINY_ARCH = "test_efficientnet"  # timm's 0.36 M-parameter test model: fast on 2 CPU cores
CLASSES = ["Platelets", "RBC", "WBC"]


# ----------------------------------------------------------------------------- balance

def labels_of(counts):
    return np.repeat(np.arange(len(counts)), counts)


def test_equal_samples_as_many_normal_cells_as_positive_cells():
    labels = labels_of([5, 100, 7])  # Platelets, RBC, WBC
    keep, rec = balance_indices(labels, CLASSES, mode="equal", seed=0)
    kept = np.bincount(labels[keep], minlength=3)
    assert kept.tolist() == [5, 12, 7]  # all positives, 12 of the 100 RBC
    assert rec["negative"] == ["RBC"] and rec["positive"] == ["Platelets", "WBC"]  # most frequent = normal
    assert rec["counts_before"] == {"Platelets": 5, "RBC": 100, "WBC": 7}
    assert rec["counts_after"] == {"Platelets": 5, "RBC": 12, "WBC": 7}
    assert (np.diff(keep) > 0).all()
    again, _ = balance_indices(labels, CLASSES, mode="equal", seed=0)
    other, _ = balance_indices(labels, CLASSES, mode="equal", seed=1)
    np.testing.assert_array_equal(keep, again)
    assert set(keep) != set(other)  # a different random draw of normal cells


def test_ratio_and_several_negative_classes():
    labels = labels_of([10, 60, 30])
    keep, rec = balance_indices(labels, CLASSES, mode="ratio", ratio=2.0, negative=["RBC", "WBC"], seed=0)
    kept = np.bincount(labels[keep], minlength=3)
    assert kept.tolist() == [10, 14, 6]  # 20 normal cells split 60:30 over RBC and WBC
    assert rec["ratio"] == 2.0
    # asking for more normal cells than exist keeps them all
    keep, _ = balance_indices(labels, CLASSES, mode="ratio", ratio=50, seed=0)
    assert len(keep) == len(labels)
    with pytest.raises(ValueError, match="ratio"):
        balance_indices(labels, CLASSES, mode="ratio", ratio=0)
    with pytest.raises(ValueError, match="not among the classes"):
        balance_indices(labels, CLASSES, negative=["normal"])
    with pytest.raises(ValueError, match="no positive cells"):
        balance_indices(labels_of([0, 10, 0]), CLASSES, mode="equal")
    with pytest.raises(ValueError, match="balance mode"):
        balance_indices(labels, CLASSES, mode="oversample")


def test_weights_and_none_keep_everything():
    labels = labels_of([10, 80, 10])
    keep, rec = balance_indices(labels, CLASSES, mode="weights")
    assert len(keep) == 100
    w = rec["class_weights"]
    assert w == pytest.approx({"Platelets": 100 / 30, "RBC": 100 / 240, "WBC": 100 / 30})
    assert (class_weights(labels, 3)[labels]).mean() == pytest.approx(1.0)  # mean sample weight 1
    assert class_weights(labels_of([0, 4, 4]), 3).tolist() == [0.0, 1.0, 1.0]
    keep, rec = balance_indices(labels, CLASSES, mode="none")
    assert len(keep) == 100 and rec["class_weights"] is None


# ----------------------------------------------------------------------------- models

@pytest.mark.slow
def test_models_build_offline_and_load_local_pretrained_weights(tmp_path):
    import timm

    source = timm.create_model(TINY_ARCH, pretrained=False)  # 1000-class head, like a real checkpoint
    weights = tmp_path / "pretrained.pth"
    torch.save(source.state_dict(), weights)
    model = build_model(TINY_ARCH, 3, in_chans=3, pretrained=weights)
    assert model.get_classifier().out_features == 3
    for name, tensor in source.state_dict().items():
        if not name.startswith("classifier"):
            assert torch.equal(model.state_dict()[name], tensor), name
    four = build_model(TINY_ARCH, 2, in_chans=4, pretrained=weights)  # extra channel: stem adapted
    assert four.conv_stem.weight.shape[1] == 4
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_model(TINY_ARCH, 3, pretrained=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown timm architecture 'resnet3'"):
        build_model("resnet3", 3)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_model(TINY_ARCH, 1)


# ----------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_bccd(tmp_path_factory.mktemp("cls") / "bccd", n_train=6, n_val=3)


TRAIN = dict(arch=TINY_ARCH, crop=CropSpec(size=32), epochs=2, patience=1, batch=16, seed=0,
             device="cpu", verbose=False)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    return train_classifier(data, runs_root=tmp_path_factory.mktemp("runs"), **TRAIN)


@pytest.mark.slow
def test_run_folder_describes_itself(run, data):
    record = json.loads((run / "run.json").read_text())
    assert record["kind"] == "classifier" and record["status"] == "finished"
    assert record["classes"] == CLASSES and record["seed"] == 0
    assert record["model"]["arch"] == TINY_ARCH and record["model"]["pretrained"] is None
    assert record["crop"] == CropSpec(size=32).to_dict()
    bal = record["balance"]
    assert bal["mode"] == "equal" and bal["negative"] == ["RBC"]
    after = bal["counts_after"]
    assert after["RBC"] == after["Platelets"] + after["WBC"]
    assert record["dataset"]["crops"]["train_balanced"] == after
    assert record["dataset"]["fingerprint"]["files"] > 0
    assert record["versions"]["timm"] and record["versions"]["torch"]
    assert 1 <= record["best_epoch"] <= record["epochs_completed"] <= 2
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == list(range(1, record["epochs_completed"] + 1))
    for col in ["train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy",
                "val_recall_Platelets", "val_recall_RBC", "val_recall_WBC"]:
        assert col in metrics and metrics[col].notna().all(), col
    assert ((metrics["val_accuracy"] >= 0) & (metrics["val_accuracy"] <= 1)).all()
    assert (run / "weights" / "best.pt").is_file() and (run / "weights" / "last.pt").is_file()


@pytest.mark.slow
def test_reloaded_classifier_reproduces_the_val_metrics(run, data):
    clf = load_classifier(run, device="cpu")
    assert clf.classes == CLASSES and clf.spec.size == 32 and clf.in_chans == 3
    val = gt_crops(data, clf.spec, split="val")
    probs = clf.predict_proba(val.crops, batch=7)  # batch size must not matter
    assert probs.shape == (len(val.table), 3)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(clf.predict_proba(val.crops, batch=1000), probs, atol=1e-5)
    record = json.loads((run / "run.json").read_text())
    acc = float((probs.argmax(1) == val.labels).mean())
    assert acc == pytest.approx(record["best_metrics"]["val_accuracy"], abs=1e-9)
    with pytest.raises(ValueError, match="expects"):
        clf.predict_proba(val.crops[..., :2])


@pytest.mark.slow
def test_same_seed_same_run(run, data, tmp_path):
    again = train_classifier(data, runs_root=tmp_path, **TRAIN)
    a = pd.read_csv(run / "metrics.csv").drop(columns="time")
    b = pd.read_csv(again / "metrics.csv").drop(columns="time")
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_weights_balance_and_bad_options(data, tmp_path):
    run = train_classifier(data, runs_root=tmp_path, run_name="weighted", balance="weights",
                           classes=["WBC", "RBC"], **{**TRAIN, "epochs": 1})
    rec = json.loads((run / "run.json").read_text())
    assert rec["classes"] == ["WBC", "RBC"]
    assert rec["balance"]["class_weights"]["WBC"] > rec["balance"]["class_weights"]["RBC"]
    with pytest.raises(FileExistsError):
        train_classifier(data, runs_root=tmp_path, run_name="weighted", **TRAIN)
    with pytest.raises(ValueError, match="monitor"):
        train_classifier(data, runs_root=tmp_path, monitor="f1", **TRAIN)
    with pytest.raises(FileNotFoundError, match="pretrained"):
        train_classifier(data, runs_root=tmp_path, pretrained=tmp_path / "none.pth", **TRAIN)
    with pytest.raises(ValueError, match="not a workbench classifier"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
        load_classifier(tmp_path / "other.pt")
