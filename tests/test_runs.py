"""Run folders: ids, fingerprints, versions, git state, tidy metrics, loading records."""
from __future__ import annotations

import datetime as dt
import json
import re
import shutil

import pandas as pd
import pytest

from workbench.models import runs
from workbench.core.paths import PROJECT_ROOT

from _tiny import tiny_bccd


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_bccd(tmp_path_factory.mktemp("runs") / "bccd", n_train=4, n_val=2)


def test_run_id_is_readable_and_unique(tmp_path):
    now = dt.datetime(2026, 11, 23, 20, 15, 0)
    first = runs.make_run_id("bccd", "yolov8n", 0, root=tmp_path, now=now)
    assert first == "20261123-201500_bccd_yolov8n_s0"
    (tmp_path / first).mkdir()
    second = runs.make_run_id("bccd", "yolov8n", 0, root=tmp_path, now=now)
    assert second == first + "-2"
    assert runs.make_run_id("my data/set", "yolov8n-p2", 3, root=tmp_path, now=now) == \
        "20261123-201500_my-data-set_yolov8n-p2_s3"


@pytest.mark.parametrize("bad", ["", "../x", "a b", "-x", "a/b"])
def test_run_names_must_be_plain_folder_names(bad):
    with pytest.raises(ValueError, match="run name"):
        runs.check_run_name(bad)
    assert runs.check_run_name("bccd_v8n-1.2") == "bccd_v8n-1.2"


def test_fingerprint_follows_image_and_label_bytes_only(tiny, tmp_path):
    fp = runs.dataset_fingerprint(tiny)
    assert re.fullmatch(r"[0-9a-f]{64}", fp["sha256"])
    assert fp["files"] == 12  # 6 images + 6 label files
    copy = shutil.copytree(tiny, tmp_path / "copy")
    (copy / "labels.cache").write_bytes(b"ultralytics cache")  # written by training: ignored
    assert runs.dataset_fingerprint(copy) == fp
    label = sorted((copy / "labels").glob("*.txt"))[0]
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    changed = runs.dataset_fingerprint(copy)
    assert changed["sha256"] != fp["sha256"] and changed["splits"] == fp["splits"]


def test_fingerprint_of_a_split_change(tiny, tmp_path):
    copy = shutil.copytree(tiny, tmp_path / "copy")
    (copy / "val.txt").write_text((copy / "val.txt").read_text().splitlines()[0] + "\n")
    fp, other = runs.dataset_fingerprint(tiny), runs.dataset_fingerprint(copy)
    assert other["sha256"] == fp["sha256"] and other["splits"] != fp["splits"]


def test_versions_and_git_state(tmp_path):
    v = runs.package_versions()
    for name in ("torch", "ultralytics", "timm", "numpy"):
        assert v[name] and v[name][0].isdigit()
    assert runs.git_state(tmp_path) is None  # outside git: no failure, no commit
    state = runs.git_state(PROJECT_ROOT)
    if state is not None:
        assert re.fullmatch(r"[0-9a-f]{40}", state["commit"])


@pytest.mark.parametrize("raw,tidy", [
    ("metrics/mAP50-95(B)", "mAP50_95"), ("metrics/mAP50(B)", "mAP50"),
    ("metrics/precision(B)", "precision"), ("train/box_loss", "train_box_loss"),
    ("val/dfl_loss", "val_dfl_loss"), ("lr/pg0", "lr_pg0"), ("  epoch", "epoch")])
def test_tidy_metric_names(raw, tidy):
    assert runs.tidy_metric_name(raw) == tidy


def test_tidy_metrics_table(tmp_path):
    # header as ultralytics writes it (edge-case unit test; real files are tested with training)
    csv = tmp_path / "results.csv"
    csv.write_text("epoch,time,train/box_loss,metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss\n"
                   "1,1.5,3.2,0.1,0.05,3.0\n2,3.1,2.9,0.2,0.08,2.8\n")
    df = runs.tidy_metrics(csv)
    assert list(df.columns) == ["epoch", "time", "train_box_loss", "mAP50", "mAP50_95", "val_box_loss"]
    assert df["epoch"].tolist() == [1, 2] and df["mAP50_95"].iloc[1] == pytest.approx(0.08)


def test_load_run_reads_record_metrics_and_weights(tmp_path):
    run = tmp_path / "r1"
    (run / "weights").mkdir(parents=True)
    runs.write_run_record(run, {"run_id": "r1", "status": "finished", "config": {"imgsz": 160}})
    pd.DataFrame({"epoch": [1], "mAP50": [0.5]}).to_csv(run / runs.METRICS_FILE, index=False)
    (run / "weights" / "last.pt").write_bytes(b"x")
    rec = runs.load_run(run)
    assert rec["run_id"] == "r1" and rec["config"]["imgsz"] == 160
    assert rec["metrics"]["mAP50"].tolist() == [0.5]
    assert set(rec["weights"]) == {"last"}
    assert runs.run_weights(run) == run / "weights" / "last.pt"  # no best.pt: an interrupted run


def test_bad_run_folders_are_named_in_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*no run.json"):
        runs.load_run(tmp_path)
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(ValueError, match="run.json: not valid JSON"):
        runs.load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights/best.pt or weights/last.pt"):
        runs.run_weights(tmp_path)


def test_update_keeps_other_fields(tmp_path):
    runs.write_run_record(tmp_path, {"a": 1, "status": "running"})
    runs.update_run_record(tmp_path, status="finished")
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": 1, "status": "finished"}
