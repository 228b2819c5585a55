"""Studies reuse a run only when it finished with the very settings asked for."""
import json

import pytest

from workbench.models.runs import dataset_fingerprint, finished_with, resumable_with


def _run(tmp_path, **cfg):
    rec = {"status": "finished", "config": {"epochs": 30, "imgsz": 256, "batch": 4, **cfg},
           "model": {"spec": "yolov8n.yaml", "pretrained": None}}
    (tmp_path / "run.json").write_text(json.dumps(rec))
    return tmp_path


def test_reuse_needs_same_model_epochs_size_batch_and_weights(tmp_path):
    run = _run(tmp_path)
    assert finished_with(run, model="yolov8n.yaml", epochs=30, imgsz=256, batch=4)
    assert not finished_with(run, model="yolov8n.yaml", epochs=30, imgsz=256, batch=16)
    assert not finished_with(run, model="yolov8s.yaml", epochs=30, imgsz=256)
    assert not finished_with(run, model="yolov8n.yaml", epochs=8, imgsz=256)
    assert not finished_with(run, model="yolov8n.yaml", epochs=30, imgsz=256, pretrained=tmp_path / "w.pt")
    assert not finished_with(tmp_path / "missing", model="yolov8n.yaml", epochs=30, imgsz=256)
    rec = json.loads((run / "run.json").read_text())
    rec["status"] = "failed"
    (run / "run.json").write_text(json.dumps(rec))
    assert not finished_with(run, model="yolov8n.yaml", epochs=30, imgsz=256, batch=4)


def test_a_run_stopped_part_way_with_the_same_settings_is_resumable(tmp_path):
    run = _run(tmp_path, seed=0)
    rec = json.loads((run / "run.json").read_text())
    rec["status"] = "running"  # what a killed process leaves behind
    (run / "run.json").write_text(json.dumps(rec))
    same = {"model": "yolov8n.yaml", "epochs": 30, "imgsz": 256, "batch": 4, "seed": 0}
    assert not resumable_with(run, **same)  # no epoch saved yet: nothing to resume from
    (run / "weights").mkdir()
    (run / "weights" / "last.pt").write_bytes(b"checkpoint")
    assert resumable_with(run, **same) and not finished_with(run, **same)
    assert not resumable_with(run, **{**same, "seed": 1})
    assert not resumable_with(run, **{**same, "epochs": 40})
    rec["status"] = "finished"
    (run / "run.json").write_text(json.dumps(rec))
    assert finished_with(run, **same) and not resumable_with(run, **same)


@pytest.mark.slow  # ~2 s: importing the study skeleton
def test_train_or_reuse_resumes_a_stopped_run_and_retrains_a_changed_one(tmp_path, monkeypatch):
    """The one reuse policy, decided without training: finished -> reuse, stopped with the same
    settings -> resume in place, anything else -> delete and train afresh."""
    from _grid_fake import FakeStudy
    from workbench.models import yolo

    calls = []
    monkeypatch.setattr(yolo, "resume_run", lambda run_dir, **kw: calls.append(("resume", kw)) or run_dir)
    monkeypatch.setattr(yolo, "train", lambda data, **kw: calls.append(("train", kw)) or kw["runs_root"] / kw["run_name"])
    study = FakeStudy(profile="fake", out_dir=tmp_path / "study", log=lambda m: None)
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.yaml").write_text("names: {0: cell}\n")
    (tmp_path / "r").mkdir()
    run = _run(tmp_path / "r", seed=0)
    rec = json.loads((run / "run.json").read_text())
    rec.update(status="failed", dataset={"fingerprint": dataset_fingerprint(data)})
    (run / "run.json").write_text(json.dumps(rec))
    (run / "weights").mkdir()
    (run / "weights" / "last.pt").write_bytes(b"checkpoint")
    same = {"model": "yolov8n.yaml", "epochs": 30, "imgsz": 256, "batch": 4, "seed": 0}

    assert study.train_or_reuse(run, data, **same, workers=0) == run
    assert calls == [("resume", {"device": None, "workers": 0, "callbacks": None})] and run.is_dir()
    calls.clear()
    assert study.train_or_reuse(run, data, **{**same, "epochs": 40}) == run
    assert [c[0] for c in calls] == ["train"] and not run.exists()  # the stopped run was deleted first
