"""Studies reuse a run only when it finished with the very settings asked for."""
import json

from workbench.models.runs import finished_with


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
