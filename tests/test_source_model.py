"""The committed source model (data/models/monuseg_yolov8n) loads, is what its provenance says, and
its recorded metrics on the 3 vendored MoNuSeg tiles reproduce (a check of the weights: those tiles
were among its training tiles, and its provenance says so)."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from workbench.core.paths import SOURCE_MODEL, VENDORED


def test_the_source_model_is_a_finished_run_with_the_weights_its_provenance_names():
    from workbench.models.runs import read_run_record, run_weights

    rec = read_run_record(SOURCE_MODEL)
    assert rec["status"] == "finished" and rec["model"]["spec"] == "yolov8n.yaml"
    assert rec["model"]["pretrained"] is None  # trained from random initialisation, nothing downloaded
    assert rec["dataset"]["classes"] == ["nucleus"]
    weights = run_weights(SOURCE_MODEL)
    stated = re.search(r"sha256 `([0-9a-f]{64})`", (SOURCE_MODEL / "PROVENANCE.md").read_text()).group(1)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == stated
    # the record is the run PROVENANCE describes: all 13 tiles, 10 to train, 3 to choose the checkpoint
    assert rec["dataset"]["images"] == {"train": 160, "val": 48, "test": 0}
    assert rec["config"]["epochs"] == 30 and rec["config"]["imgsz"] == 320
    assert "**training** tiles" in (SOURCE_MODEL / "PROVENANCE.md").read_text()
    assert "NOT an accuracy estimate" in json.loads((SOURCE_MODEL / "check_metrics.json").read_text())["what"]


def test_the_source_model_loads_offline_as_a_detector():
    from workbench.inference.predict import load_detector

    det = load_detector(SOURCE_MODEL)
    assert det.imgsz == 320 and dict(det.yolo.names) == {0: "nucleus"}


@pytest.mark.slow
def test_recorded_metrics_reproduce_on_the_vendored_tiles(tmp_path):
    from workbench.cli import main

    recorded = json.loads((SOURCE_MODEL / "check_metrics.json").read_text())
    assert main(["convert", str(VENDORED["monuseg"]), "--format", "monuseg", "--out", str(tmp_path / "m3")]) == 0
    assert main(["tile", str(tmp_path / "m3"), "--out", str(tmp_path / "t320"), "--tile", "320",
                 "--overlap", "0.125", "--min-visibility", "0.5"]) == 0
    assert main(["predict", str(SOURCE_MODEL), str(tmp_path / "t320"), "--out", str(tmp_path / "pred.csv"),
                 "--conf", "0.001", "--device", "cpu"]) == 0
    assert main(["evaluate", "--gt", str(tmp_path / "t320"), "--pred", str(tmp_path / "pred.csv"),
                 "--out", str(tmp_path / "eval"), "--n-boot", "0"]) == 0
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert got["n_images"] == recorded["n_images"] and got["n_gt"] == recorded["n_gt"]
    assert got["map50"] == pytest.approx(recorded["map50"], abs=0.005)
    assert got["map50_95"] == pytest.approx(recorded["map50_95"], abs=0.005)
