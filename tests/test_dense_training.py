"""The dense detector trained for real on the vendored MNFinder images (tiny: a few crops, 1-2
epochs): the run folder, resume, thresholds tuned on training images only, the CLI and the
prediction table on the held-out 16-bit images."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from workbench.core.tables import PREDICTION_COLUMNS, read_predictions
from workbench.inference import dense as inf
from workbench.models import dense as md

pytestmark = pytest.mark.slow  # every test here trains

TINY = md.DenseConfig(decoder_channels=(16, 8, 8), crop=64, batch=4, epochs=2, crops_per_epoch=8, val_crops=4,
                      tile=256, tile_overlap=32)


@pytest.fixture(scope="module")
def mnfinder() -> Path:
    from workbench.data import datasets

    return datasets.prepare("mnfinder")  # 2 training images (one acquisition set), 3 held out


def test_a_tiny_run_describes_itself_and_tunes_on_training_images_only(tmp_path, mnfinder):
    run = md.train_dense(mnfinder, config=TINY, device="cpu", runs_root=tmp_path, run_name="tiny")
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "finished" and rec["model"]["family"] == "dense" and rec["duration_s"] > 0
    assert rec["config"]["dense"] == TINY.to_dict() and rec["versions"]["segmentation-models-pytorch"]
    meta = pd.read_csv(mnfinder / "meta.csv", dtype=str, keep_default_na=False).set_index("image_id")
    ds = rec["dataset"]
    assert len(ds["train_images"]) == len(ds["val_images"]) == 1 and "one by one" in ds["val_split"]
    assert set(meta.loc[ds["train_images"] + ds["val_images"], "split"]) == {"train"}  # never a held-out image
    assert ds["normalisation"]["method"] == "percentile" and ds["fingerprint"]["files"] > 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2] and metrics["train_loss"].notna().all()
    assert (run / "weights" / "best.pt").is_file() and (run / "weights" / "last.pt").is_file()
    assert md.dense_finished_with(run, TINY, dataset=mnfinder)
    assert not md.dense_finished_with(run, replace(TINY, lr=0.01), dataset=mnfinder)  # any other setting: retrain

    th = inf.tune_thresholds(run, device="cpu", mn_grid=(0.3, 0.5), size_grid=(1, 3), nucleus_grid=(0.5,))
    doc = json.loads((run / inf.THRESHOLDS_FILE).read_text())
    assert doc["tuned"] and doc["images"] == ds["val_images"] and doc["thresholds"]["mn_prob"] == th.mn_prob
    assert len(pd.read_csv(run / inf.SWEEP_FILE)) == 2 * 2 + 1
    held_out = meta.index[meta["split"] == "val"].tolist()
    assert not set(doc["images"]) & set(held_out)

    table = inf.predict_dense(run, mnfinder, split="val", device="cpu")
    assert list(table.columns) == PREDICTION_COLUMNS and set(table["image"]) <= set(held_out)
    assert set(table["class"]) <= {"mn", "nucleus"} and (table["score"] >= min(th.mn_prob, th.nucleus_prob)).all()


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, mnfinder):
    whole = md.train_dense(mnfinder, config=TINY, device="cpu", runs_root=tmp_path, run_name="whole")

    def stop_after_first_epoch(message: str) -> None:
        if "epoch 1/" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        md.train_dense(mnfinder, config=TINY, device="cpu", runs_root=tmp_path, run_name="cut",
                       log=stop_after_first_epoch)
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "interrupted"
    assert len(pd.read_csv(tmp_path / "cut" / "metrics.csv")) == 1
    run = md.train_dense(mnfinder, device="cpu", runs_root=tmp_path, run_name="cut", resume=True)
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "finished" and len(rec["resumed"]) == 1
    resumed, uninterrupted = pd.read_csv(run / "metrics.csv"), pd.read_csv(whole / "metrics.csv")
    assert resumed["epoch"].tolist() == [1, 2]
    # the same seeded crops and the restored optimiser: the resumed epoch repeats the uninterrupted one
    assert resumed["train_loss"].tolist() == pytest.approx(uninterrupted["train_loss"].tolist(), rel=1e-4)
    with pytest.raises(ValueError, match="nothing to resume"):
        md.train_dense(mnfinder, device="cpu", runs_root=tmp_path, run_name="cut", resume=True)


def test_the_cli_trains_tunes_and_predicts_offline(tmp_path, mnfinder):
    """train-dense and predict-dense in a fresh interpreter with every network call refused."""
    import os
    import subprocess
    import sys

    held_out = pd.read_csv(mnfinder / "meta.csv", dtype=str, keep_default_na=False).query("split == 'val'")
    out, run = tmp_path / "pred.csv", tmp_path / "cli"
    code = ("import _netguard\nfrom workbench.cli.main import main\n"
            f"assert main(['train-dense', {str(mnfinder)!r}, '--epochs', '1', '--crop', '64', '--batch', '4', "
            "'--crops-per-epoch', '8', '--set', 'val_crops=4', '--set', 'decoder_channels=[16, 8, 8]', "
            f"'--set', 'tile=256', '--device', 'cpu', '--runs-root', {str(tmp_path)!r}, '--name', 'cli']) == 0\n"
            f"assert main(['predict-dense', {str(run)!r}, {held_out['source_image'].iloc[0]!r}, '--out', {str(out)!r}, "
            "'--device', 'cpu', '--mn-prob', '0.4']) == 0\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent))
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NETWORK_ATTEMPTS=0" in proc.stdout, proc.stdout[-2000:]
    assert json.loads((run / inf.THRESHOLDS_FILE).read_text())["tuned"]
    table = read_predictions(out)
    assert list(table.columns) == PREDICTION_COLUMNS and table["image"].nunique() <= 1
