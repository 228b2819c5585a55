"""The CLI contract for models end to end on real BCCD: train -> predict -> evaluate."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from _tiny import tiny_bccd
from workbench.cli.main import main

pytestmark = pytest.mark.slow  # every test uses the trained module fixture


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_models")
    ds = tiny_bccd(tmp / "ds", n_train=8, n_val=6)
    rc = main(["train", str(ds), "--model", "yolov8n.yaml", "--epochs", "1", "--imgsz", "160",
               "--device", "cpu", "--name", "cli_run", "--runs-root", str(tmp / "runs"), "--workers", "0"])
    assert rc == 0
    return tmp, ds, tmp / "runs" / "cli_run"


def test_train_writes_a_self_describing_run(trained):
    _, ds, run = trained
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["config"]["epochs"] == 1
    assert record["dataset"]["fingerprint"] and (run / "weights" / "best.pt").exists()
    assert len(pd.read_csv(run / "metrics.csv")) == 1


def test_predict_then_evaluate_matches_pycocotools(trained):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from workbench.evaluation.files import load_ground_truth
    from workbench.evaluation.metrics import gt_to_coco, preds_to_coco

    tmp, ds, run = trained
    pred_csv = tmp / "pred.csv"
    assert main(["predict", str(run), str(ds), "--split", "val", "--out", str(pred_csv), "--conf", "0.001",
                 "--device", "cpu"]) == 0
    pred = pd.read_csv(pred_csv, dtype={"image": str})
    assert list(pred.columns[:7]) == ["image", "x1", "y1", "x2", "y2", "class", "score"]
    assert main(["evaluate", "--gt", str(ds), "--split", "val", "--pred", str(pred_csv),
                 "--out", str(tmp / "eval"), "--n-boot", "50"]) == 0
    doc = json.loads((tmp / "eval" / "metrics.json").read_text())
    assert {"map50", "map50_95", "per_class", "max_dets", "ci"} <= set(doc)
    assert set(doc["per_class"]) == {"Platelets", "RBC", "WBC"}
    assert (tmp / "eval" / "pr_curves.png").exists() and (tmp / "eval" / "pr_curves.pdf").exists()

    gt = load_ground_truth(ds, split="val")
    coco_gt = gt_to_coco(gt.boxes, images=gt.images, classes=gt.classes)
    c = COCO()
    c.dataset = coco_gt
    c.createIndex()
    results = preds_to_coco(pred, coco_gt)
    if not results:
        pytest.skip("a 1-epoch model predicted nothing; agreement is covered by test_metrics")
    ev = COCOeval(c, c.loadRes(results), "bbox")
    ev.params.maxDets = [1, 10, doc["max_dets"]]
    ev.evaluate(); ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, -1]
    ref = float(np.mean(prec[prec > -1])) if (prec > -1).any() else float("nan")
    assert doc["map50_95"] == pytest.approx(ref, abs=1e-4)


def test_evaluate_reports_clear_errors(trained, tmp_path, capsys):
    _, ds, _ = trained
    assert main(["evaluate", "--gt", str(ds), "--pred", str(tmp_path / "none.csv"), "--out", str(tmp_path / "e")]) == 2
    assert "none.csv" in capsys.readouterr().err
    assert main(["evaluate", "--gt", str(ds), "--split", "nope", "--pred", str(tmp_path / "none.csv"),
                 "--out", str(tmp_path / "e")]) == 2
