"""Training runs and prediction on real BCCD images, tiny profile (imgsz 160, 1-2 epochs).

Covers: offline training (sockets and downloads refused), the run folder record, same seed
-> same numbers on CPU, interrupt + resume, local pretrained weights, the prediction table
and its colour order, and clear errors for specs that would download.
"""
from __future__ import annotations

import math
import socket

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workbench.core import tables
from workbench.inference import predict as pr
from workbench.models import yolo
from workbench.data.canonical import load_dataset
from workbench.core.images import read_image
from workbench.models.runs import dataset_fingerprint, load_run

from _tiny import tiny_bccd

pytestmark = pytest.mark.slow
TINY = dict(epochs=1, imgsz=160, batch=4, workers=1, device="cpu")
LOSSES = ["train_box_loss", "train_cls_loss", "train_dfl_loss", "val_box_loss", "val_cls_loss",
          "val_dfl_loss", "precision", "recall", "mAP50", "mAP50_95"]


class NetworkGuard:
    """Refuses and records every network attempt (AF_UNIX sockets used by data loaders pass)."""

    def __init__(self, monkeypatch):
        self.attempts: list[str] = []
        real_connect = socket.socket.connect

        def connect(sock, address, *a, **k):
            if sock.family == getattr(socket, "AF_UNIX", None):
                return real_connect(sock, address, *a, **k)
            return self._refuse("connect", address)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket, "create_connection", lambda *a, **k: self._refuse("create_connection", a))
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: self._refuse("getaddrinfo", a))
        import ultralytics.data.utils as data_utils
        import ultralytics.utils.downloads as downloads

        # ultralytics may download through curl in a subprocess: its single entry point is refused too
        for module in (downloads, data_utils):
            monkeypatch.setattr(module, "safe_download", lambda *a, **k: self._refuse("download", a))

    def _refuse(self, kind, target):
        self.attempts.append(f"{kind} {target!r}")
        raise OSError(f"network disabled by test ({kind})")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_bccd(tmp_path_factory.mktemp("train") / "bccd", n_train=8, n_val=4)


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def run(data, runs_root):
    """One finished run, trained with the network made impossible."""
    mp = pytest.MonkeyPatch()
    guard = NetworkGuard(mp)
    try:
        run_dir = yolo.train(data, model="yolov8n.yaml", seed=0, runs_root=runs_root, **TINY)
    finally:
        mp.undo()
    return run_dir, guard.attempts


def test_training_is_offline_by_construction(run):
    run_dir, attempts = run
    assert attempts == []
    assert load_run(run_dir)["status"] == "finished"


def test_run_folder_describes_itself(run, data):
    run_dir, _ = run
    assert (run_dir / "weights" / "best.pt").is_file() and (run_dir / "weights" / "last.pt").is_file()
    assert (run_dir / "results.csv").is_file() and (run_dir / "args.yaml").is_file()  # ultralytics' own
    rec = load_run(run_dir)
    assert rec["run_id"] == run_dir.name and "_bccd_yolov8n_s0" in run_dir.name
    assert rec["dataset"]["fingerprint"] == dataset_fingerprint(data)
    assert rec["dataset"]["images"] == {"train": 8, "val": 4, "test": 0}
    assert rec["config"]["seed"] == 0 and rec["config"]["imgsz"] == 160
    assert rec["config"]["amp"] is False and rec["amp_used"] is False  # CPU
    assert rec["config"]["plots"] is False
    most = int(load_dataset(data).images["n_objects"].max())
    assert rec["config"]["max_det"] == max(300, math.ceil(1.5 * most))
    assert rec["ultralytics_args"]["max_det"] == rec["config"]["max_det"]
    assert rec["ultralytics_args"]["project"] == str(run_dir.parent)
    assert rec["ultralytics_args"]["deterministic"] is True
    for pkg in ("torch", "ultralytics", "timm", "numpy"):
        assert rec["versions"][pkg]
    assert 2.9e6 < rec["model"]["parameters"] < 3.2e6  # yolov8n with 3 classes
    assert rec["model"]["gflops_640"] > 5 and 0 < rec["model"]["gflops"] < rec["model"]["gflops_640"]
    assert rec["device"]["type"] == "cpu" and rec["device"]["cpu_count"] >= 1
    assert rec["epochs_completed"] == 1 and rec["duration_s"] > 0
    m = rec["metrics"]
    assert m["epoch"].tolist() == [1]
    assert set(LOSSES) <= set(m.columns)
    assert np.isfinite(m[LOSSES].to_numpy()).all()


def test_same_seed_same_numbers_on_cpu(run, data, runs_root):
    again = yolo.train(data, model="yolov8n.yaml", seed=0, runs_root=runs_root, run_name="again", **TINY)
    first = load_run(run[0])["metrics"]
    second = load_run(again)["metrics"]
    pd.testing.assert_frame_equal(first[LOSSES], second[LOSSES])


def test_interrupted_run_resumes_to_the_end(data, runs_root):
    class Stop(Exception):
        pass

    def stop_after_first_epoch(trainer):
        if trainer.epoch == 0:
            raise Stop("simulated crash after epoch 1")

    args = {**TINY, "epochs": 2}
    with pytest.raises(Stop):
        yolo.train(data, runs_root=runs_root, run_name="crash", seed=1,
                   callbacks={"on_fit_epoch_end": stop_after_first_epoch}, **args)
    rec = load_run(runs_root / "crash")
    assert rec["status"] == "failed" and "simulated crash" in rec["error"]
    assert rec["epochs_completed"] == 1 and "last" in rec["weights"]

    epochs_seen = []
    yolo.train(data, runs_root=runs_root, run_name="crash", resume=True,
               callbacks={"on_train_epoch_start": lambda t: epochs_seen.append(t.epoch + 1)})
    rec = load_run(runs_root / "crash")
    assert epochs_seen == [2]  # continued, did not start over
    assert rec["status"] == "finished" and rec["epochs_completed"] == 2
    assert rec["metrics"]["epoch"].tolist() == [1, 2]
    assert len(rec["resumed"]) == 1
    with pytest.raises(ValueError, match="nothing to resume"):
        yolo.resume_run(runs_root / "crash")


def test_local_pretrained_weights(run, data, runs_root):
    best = run[0] / "weights" / "best.pt"
    run_dir = yolo.train(data, model="yolov8n.yaml", pretrained=best, runs_root=runs_root,
                         run_name="pre", **TINY)
    rec = load_run(run_dir)
    assert rec["model"]["pretrained"] == str(best) and rec["status"] == "finished"
    assert rec["ultralytics_args"]["pretrained"] == str(best)


@pytest.mark.parametrize("spec", ["yolov8n.yaml", "yolo11n.yaml", "yolov5nu.yaml", "yolov8n-p2.yaml"])
def test_architectures_build_offline_from_bundled_yaml(spec, monkeypatch):
    guard = NetworkGuard(monkeypatch)
    model = yolo.load_model(spec)
    assert model.task == "detect" and yolo.architecture_name(model) == spec.removesuffix(".yaml")
    assert guard.attempts == []


@pytest.mark.parametrize("spec,err,match", [
    ("yolo11n.pt", FileNotFoundError, "never downloads"),
    ("yolov8n", ValueError, "would make ultralytics download"),
    ("yolov8zz.yaml", ValueError, "unknown architecture"),
    ("yolov8n-cls.yaml", ValueError, "detectors only"),
])
def test_model_specs_that_would_download_are_refused(spec, err, match):
    with pytest.raises(err, match=match):
        yolo.load_model(spec)


def test_training_input_errors(data, tmp_path, run):
    with pytest.raises(FileNotFoundError, match="missing.pt: pretrained weights file not found"):
        yolo.train(data, pretrained=tmp_path / "missing.pt", runs_root=tmp_path, **TINY)
    with pytest.raises(ValueError, match="set by the workbench"):
        yolo.train(data, project=str(tmp_path / "elsewhere"), runs_root=tmp_path, **TINY)
    with pytest.raises(ValueError, match="'lr00' is not a valid YOLO argument.*lr0"):
        yolo.train(data, lr00=0.1, runs_root=tmp_path, **TINY)
    with pytest.raises(FileNotFoundError, match="no dataset.yaml"):
        yolo.train(tmp_path, runs_root=tmp_path, **TINY)
    with pytest.raises(FileExistsError, match="run folder exists"):
        yolo.train(data, runs_root=run[0].parent, run_name=run[0].name, **TINY)
    with pytest.raises(ValueError, match="resume=True needs run_name"):
        yolo.train(data, resume=True, runs_root=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-made


def test_amp_check_never_downloads(monkeypatch):
    guard = NetworkGuard(monkeypatch)
    model = yolo.load_model("yolov8n.yaml").model
    assert yolo.offline_amp_check(model) is False  # CPU: no AMP, no check
    import ultralytics.engine.trainer as trainer_module

    original = trainer_module.check_amp
    with yolo._no_download_amp_check():
        assert trainer_module.check_amp is yolo.offline_amp_check
    assert trainer_module.check_amp is original
    assert guard.attempts == []


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_training_uses_amp_without_download(data, tmp_path, monkeypatch):
    guard = NetworkGuard(monkeypatch)
    run_dir = yolo.train(data, runs_root=tmp_path, **{**TINY, "device": None})
    rec = load_run(run_dir)
    assert rec["config"]["device"].startswith("cuda") and rec["amp_used"] is True
    assert guard.attempts == []


# ----------------------------------------------------------------------------- prediction

def test_prediction_table_on_a_dataset_split(run, data):
    df = pr.predict(run[0], data, split="val", conf=0.001)
    assert list(df.columns) == tables.PREDICTION_COLUMNS
    assert len(df) > 0  # an untrained model still gives low-score boxes at conf 0.001
    val_ids = set(load_dataset(data).images.query("split == 'val'")["image_id"])
    assert set(df["image"]) <= val_ids
    assert set(df["class"]) <= {"Platelets", "RBC", "WBC"}
    assert (df["x1"] >= 0).all() and (df["x2"] <= 640).all() and (df["y2"] <= 480).all()
    assert (df["x2"] >= df["x1"]).all() and df["score"].between(0.001, 1).all()
    assert df.groupby("image").size().max() <= 300  # max_det recorded in the run


def test_colour_order_file_and_rgb_array_agree(run, data, tmp_path):
    """ultralytics must see the same BGR pixels from a file and from an RGB array given here."""
    src = load_dataset(data).images.iloc[0]
    rgb, _ = read_image(data / src["file"])
    png = tmp_path / "cells.png"  # lossless, so file and array hold the very same pixels
    Image.fromarray(rgb).save(png)
    model = yolo.load_model(run[0] / "weights" / "best.pt")
    seen: list[np.ndarray] = []  # the decoded images ultralytics predicts on
    model.add_callback("on_predict_batch_start", lambda p: seen.extend(im.copy() for im in p.batch[1]))
    opts = dict(conf=0.001, imgsz=160)
    from_file = pr.predict(model, [png], **opts)
    from_rgb = pr.predict(model, {"cells": rgb}, **opts)
    pr.predict(model, {"cells": np.ascontiguousarray(rgb[..., ::-1])}, **opts)  # the mistake
    file_px, rgb_px, swapped_px = seen
    np.testing.assert_array_equal(file_px, rgb[..., ::-1])  # ultralytics works in BGR
    np.testing.assert_array_equal(rgb_px, file_px)
    assert not np.array_equal(swapped_px, file_px)  # the check has teeth
    assert len(from_file) > 0 and from_file["image"].unique().tolist() == ["cells"]
    pd.testing.assert_frame_equal(from_file, from_rgb)


def test_weights_path_picks_up_the_run_settings(run, data):
    by_run = pr.predict(run[0], data, split="val", conf=0.01)
    by_weights = pr.predict(run[0] / "weights" / "best.pt", data, split="val", conf=0.01)
    pd.testing.assert_frame_equal(by_run, by_weights)


def test_sixteen_bit_and_grey_images(run, tmp_path):
    """Files OpenCV would read differently (16-bit) are normalised here; grey gets 3 channels."""
    grey16 = (np.linspace(0, 4000, 160 * 160).reshape(160, 160)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    df = pr.predict(run[0], tmp_path, conf=0.001)
    assert set(df["image"]) <= {"g16"} and list(df.columns) == tables.PREDICTION_COLUMNS


def test_prediction_source_errors(run, data, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png: image file not found"):
        pr.predict(run[0], [tmp_path / "nope.png"])
    with pytest.raises(ValueError, match="split must be one of"):
        pr.predict(run[0], data, split="holdout")
    with pytest.raises(ValueError, match="no images in split 'test'"):
        pr.predict(run[0], data, split="test")
    with pytest.raises(ValueError, match="folder has no image files"):
        pr.predict(run[0], tmp_path)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    img = np.zeros((32, 32, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "a" / "x.png")
    Image.fromarray(img).save(tmp_path / "b" / "x.png")
    with pytest.raises(ValueError, match="two images share the name 'x'"):
        pr.predict(run[0], [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"])
    with pytest.raises(FileNotFoundError, match="no such run folder or weights file"):
        pr.predict(tmp_path / "no_run", data)


def test_write_and_read_predictions(tmp_path):
    df = pd.DataFrame({"image": ["00012", "00012"], "x1": [1.0, 5.0], "y1": [2.0, 6.0],
                       "x2": [3.0, 7.0], "y2": [4.0, 8.0], "class": ["RBC", "WBC"], "score": [0.9, 0.4]})
    back = tables.read_predictions(tables.write_predictions(df, tmp_path / "p.csv"))
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["image"].tolist() == ["00012", "00012"]  # ids stay strings
    with pytest.raises(ValueError, match="as .csv or .parquet"):
        tables.write_predictions(df, tmp_path / "p.xlsx")
    with pytest.raises(ValueError, match="lacks columns"):
        tables.write_predictions(df.drop(columns="score"), tmp_path / "q.csv")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pyarrow"):
            tables.write_predictions(df, tmp_path / "p.parquet")
        assert not (tmp_path / "p.parquet").exists()
    else:
        back = tables.read_predictions(tables.write_predictions(df, tmp_path / "p.parquet"))
        pd.testing.assert_frame_equal(back, df)
