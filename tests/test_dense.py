"""The dense micronucleus detector without training: targets from polygons, post-processing on
constructed probability maps with known answers, tuning on validation images only, the table
contract of an (untrained) run folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.core.tables import BOX_COLUMNS, PREDICTION_COLUMNS
from workbench.inference import dense as inf
from workbench.models import dense as md
from workbench.models import dense_data as dd


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _probs(shape, *, mn=(), nuclei=(), mn_p=0.9, nucleus_p=0.9):
    """(3, H, W) maps: each MN / nucleus mask at its probability, background the rest."""
    p = np.zeros((3, *shape), np.float32)
    for m in nuclei:
        p[dd.NUCLEUS][m] = nucleus_p
    for m in mn:
        p[dd.MN][m] = mn_p
        p[dd.NUCLEUS][m] = 0.05
    p[dd.BACKGROUND] = 1 - p[dd.MN] - p[dd.NUCLEUS]
    return p


def _centres(table):
    return sorted(zip(((table["x1"] + table["x2"]) / 2).round(2), ((table["y1"] + table["y2"]) / 2).round(2)))


# ----------------------------------------------------------------------------- targets

def test_polygons_of_the_masks_importer_rasterise_to_the_mask_pixels():
    from workbench.data.importers.masks import instances_from_labels

    mask = np.zeros((20, 24), np.int64)
    mask[2:7, 3:8] = 1  # a 5x5 square
    mask[10:16, 10:12] = 2  # an L: a column and a foot (concave step)
    mask[14:16, 12:16] = 2
    mask |= np.where(_disc(mask.shape, 5, 17, 2.5), 3, 0) * (mask == 0)  # a small disc (diagonal outline)
    found = instances_from_labels(mask, mask)
    objects = pd.DataFrame([{"class": "mn", "x1": x1, "y1": y1, "x2": x2, "y2": y2, "polygon": json.dumps(poly)}
                            for x1, y1, x2, y2, _, poly in found])
    target = dd.rasterise(objects, mask.shape)
    assert np.array_equal(target == dd.MN, mask > 0)  # every pixel, none on the outlines' diagonals


def test_touching_nuclei_are_parted_by_a_one_pixel_line_and_mn_win_over_nuclei():
    square = lambda x1, y1, x2, y2: {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "polygon": json.dumps(
        [[x1, y1], [x2, y1], [x2, y2], [x1, y2]])}
    objects = pd.DataFrame([{"class": "nucleus", **square(0, 0, 10, 10)}, {"class": "nucleus", **square(10, 0, 20, 10)},
                            {"class": "mn", **square(4, 4, 6, 6)}])
    target = dd.rasterise(objects, (12, 22))
    assert (target[:10, 10] == dd.BACKGROUND).all() and (target[:10, 9] == dd.NUCLEUS).all()  # 1 px line
    assert (target[4:6, 4:6] == dd.MN).all() and (target[10:] == dd.BACKGROUND).all()
    assert inf.components(target == dd.NUCLEUS).max() == 2
    assert (dd.rasterise(objects, (12, 22), nucleus_gap=False)[:10, :20] != dd.BACKGROUND).all()


def test_a_box_without_polygon_becomes_its_inscribed_ellipse():
    objects = pd.DataFrame({"class": ["mn"], "x1": [2.0], "y1": [2.0], "x2": [7.0], "y2": [7.0], "polygon": [""]})
    target = dd.rasterise(objects, (10, 10))
    rows, cols = np.nonzero(target == dd.MN)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 6, 2, 6) and target[4, 4] == dd.MN
    assert target[2, 2] == dd.BACKGROUND  # a corner of the box is outside the ellipse


# ----------------------------------------------------------------------------- post-processing

def test_touching_mn_are_split_and_each_keeps_its_centre():
    shape = (30, 40)
    a, b = _disc(shape, 15, 12, 3), _disc(shape, 15, 18, 3)  # centres 6 px apart: one 4-connected blob
    probs = _probs(shape, mn=[a, b])
    assert inf.components(probs[dd.MN] >= 0.5).max() == 1
    table = inf.postprocess(probs, inf.Thresholds(mn_min_size=3))
    mn = table[table["class"] == "mn"]
    assert len(mn) == 2
    assert np.allclose(_centres(mn), [(12.5, 15.5), (18.5, 15.5)], atol=1.0)  # pixel c's centre is c + 0.5
    unsplit = inf.postprocess(probs, inf.Thresholds(split_depth=None))
    assert (unsplit["class"] == "mn").sum() == 1


def test_an_elongated_mn_is_not_split():
    shape = (30, 40)
    yy, xx = np.mgrid[:30, :40]
    ellipse = ((yy - 15) / 2.5) ** 2 + ((xx - 20) / 7) ** 2 <= 1
    table = inf.postprocess(_probs(shape, mn=[ellipse]), inf.Thresholds())
    assert (table["class"] == "mn").sum() == 1


def test_mn_touching_only_diagonally_are_two_under_4_connectivity():
    m1, m2 = np.zeros((12, 12), bool), np.zeros((12, 12), bool)
    m1[2:5, 2:5] = True
    m2[5:8, 5:8] = True  # corner to corner with m1
    table = inf.postprocess(_probs((12, 12), mn=[m1, m2]), inf.Thresholds(mn_min_size=1))
    assert (table["class"] == "mn").sum() == 2
    eight = inf.postprocess(_probs((12, 12), mn=[m1, m2]), inf.Thresholds(mn_min_size=1, connectivity=8,
                                                                           split_depth=None))
    assert (eight["class"] == "mn").sum() == 1


def test_mn_at_the_image_edge_has_a_box_clipped_to_the_image():
    m = np.zeros((20, 20), bool)
    m[0:3, 0:4] = True  # in the top-left corner
    probs = _probs((20, 20), mn=[m], mn_p=0.8)
    probs[dd.MN][1, 2] = 0.95  # the peak: the object's score
    table = inf.postprocess(probs, inf.Thresholds(mn_min_size=3))
    mn = table[table["class"] == "mn"]
    assert mn[["x1", "y1", "x2", "y2"]].values.tolist() == [[0.0, 0.0, 4.0, 3.0]]
    assert mn["score"].item() == pytest.approx(0.95)


def test_mn_inside_a_nucleus_mask_is_found_and_leaves_the_nucleus_whole():
    shape = (50, 50)
    nucleus = np.zeros(shape, bool)
    nucleus[10:40, 12:42] = True
    mn = _disc(shape, 25, 27, 2.5)  # inside the nucleus: its pixels are MN, not nucleus
    table = inf.postprocess(_probs(shape, mn=[mn], nuclei=[nucleus]), inf.Thresholds(mn_min_size=3))
    assert (table["class"] == "mn").sum() == 1 and (table["class"] == "nucleus").sum() == 1
    n = table[table["class"] == "nucleus"]
    assert n[["x1", "y1", "x2", "y2"]].values.tolist() == [[12.0, 10.0, 42.0, 40.0]]  # no hole, no growth
    assert _centres(table[table["class"] == "mn"]) == [(27.5, 25.5)]


def test_touching_nuclei_get_their_parting_line_back():
    shape = (20, 30)
    left, right = np.zeros(shape, bool), np.zeros(shape, bool)
    left[2:12, 2:12] = True
    right[2:12, 13:23] = True  # column 12: the 1 px line the targets drew between them
    table = inf.postprocess(_probs(shape, nuclei=[left, right]), inf.Thresholds(nucleus_min_size=10))
    boxes = sorted(table[["x1", "y1", "x2", "y2"]].values.tolist())
    assert boxes == [[2.0, 2.0, 12.0, 12.0], [12.0, 2.0, 23.0, 12.0]]  # the line joins one of them


def test_small_components_and_low_probabilities_are_dropped():
    shape = (20, 20)
    speck, faint, mn = np.zeros(shape, bool), np.zeros(shape, bool), _disc(shape, 10, 10, 2.5)
    speck[1, 1] = True
    faint[15:18, 15:18] = True
    probs = _probs(shape, mn=[speck, mn])
    probs[dd.MN][faint] = 0.3
    table = inf.postprocess(probs, inf.Thresholds(mn_prob=0.5, mn_min_size=2))
    assert _centres(table) == [(10.5, 10.5)]


def test_postprocess_returns_the_box_columns_and_checks_its_input():
    table = inf.postprocess(_probs((16, 16)))
    assert list(table.columns) == BOX_COLUMNS and table.empty
    with pytest.raises(ValueError, match="classes, H, W"):
        inf.postprocess(np.zeros((16, 16)))
    with pytest.raises(ValueError, match="probability thresholds"):
        inf.Thresholds(mn_prob=1.0)


def test_windows_cover_the_image_and_blend():
    assert inf.window_starts(100, 128, 16) == [0]
    starts = inf.window_starts(869, 512, 64)
    assert starts[0] == 0 and starts[-1] == 869 - 512 and all(b - a <= 512 - 64 for a, b in zip(starts, starts[1:]))
    w = inf.ramp(8, 4)
    assert w[0] == pytest.approx(0.25) and w[3] == 1.0 and (w > 0).all()


def test_each_dihedral_view_maps_back_to_the_image():
    img = np.arange(5 * 7 * 3).reshape(5, 7, 3)  # not square, not symmetric: any wrong inverse shows
    seen = set()
    for v in range(8):
        view = inf.dihedral(img, v)
        seen.add(view.tobytes() + bytes(view.shape))
        assert np.array_equal(inf.dihedral(view, v, inverse=True), img)
        chw = np.moveaxis(view, -1, 0)  # a probability map (C, H, W) of the view maps back the same way
        assert np.array_equal(inf.dihedral(chw, v, axes=(1, 2), inverse=True), np.moveaxis(img, -1, 0))
    assert len(seen) == 8  # eight different views
    assert all(inf.dihedral(img, v).shape == img.shape for v in range(4))  # 2 and 4 views keep the shape


def test_averaged_views_keep_a_pixelwise_network_exact_and_the_thresholds_record_them():
    import torch

    class Pixelwise(torch.nn.Module):  # a 1x1 convolution: the same answer in every view
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(1, 3, 1)

        def forward(self, x):
            return self.conv(x)

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (37, 53), dtype=np.uint8)
    one = inf.probabilities(Pixelwise(), image, tile=32, overlap=8, multiple=8)
    for views in (2, 4, 8):
        many = inf.probabilities(Pixelwise(), image, tile=32, overlap=8, multiple=8, views=views)
        assert many.shape == (3, 37, 53) and np.allclose(many, one, atol=1e-5), views
    with pytest.raises(ValueError, match="views"):
        inf.probabilities(Pixelwise(), image, tile=32, overlap=8, multiple=8, views=3)
    assert inf.Thresholds.from_dict({"mn_prob": 0.6, "views": 8}).views == 8
    assert inf.Thresholds.from_dict({"mn_prob": 0.6}).views == 1  # thresholds tuned before views existed
    with pytest.raises(ValueError, match="views"):
        inf.Thresholds(views=5)


# ----------------------------------------------------------------------------- tuning

@pytest.mark.slow
def test_tuning_picks_the_most_recall_at_the_precision_target():
    shape = (60, 60)
    true = [_disc(shape, y, x, 2.5) for y, x in ((10, 10), (10, 40), (40, 10), (40, 40))]
    faint = [_disc(shape, 25, 25, 2.5), _disc(shape, 50, 25, 2.5)]  # debris at p = 0.35
    speck = np.zeros(shape, bool)
    speck[2, 55] = True  # one confident pixel
    probs = _probs(shape, mn=[*true, speck])
    for f in faint:
        probs[dd.MN][f] = 0.35
    gt = pd.DataFrame([{"image": "a", "class": "mn", "x1": x - 2.0, "y1": y - 2.0, "x2": x + 3.0, "y2": y + 3.0}
                       for y, x in ((10, 10), (10, 40), (40, 10), (40, 40))])
    th, table, summary = inf.tune({"a": probs}, gt, min_precision=0.8, nucleus_grid=(0.5,))
    assert (th.mn_prob, th.mn_min_size) == (0.4, 2)  # the lowest setting with recall 1 at precision 1
    low = table[(table["class"] == "mn") & (table["prob"] == 0.3) & (table["min_size"] == 2)].iloc[0]
    assert (low["tp"], low["fp"]) == (4, 2)
    assert summary["mn_val"]["recall"] == 1.0 and summary["rule"].startswith("MN: highest recall")


def test_without_the_precision_target_the_best_f1_is_chosen():
    table = pd.DataFrame({"class": "mn", "prob": [0.3, 0.5, 0.7], "min_size": 1, "precision": [0.4, 0.6, 0.7],
                          "recall": [0.9, 0.8, 0.5], "f1": [0.55, 0.69, 0.58]})
    assert inf.choose(table, min_precision=0.8)["prob"] == 0.5
    assert inf.choose(table, min_precision=0.5)["prob"] == 0.5  # more recall than 0.7 at precision >= 0.5


def test_thresholds_are_never_tuned_on_held_out_images(mnfinder_canonical):
    meta = pd.read_csv(mnfinder_canonical / "meta.csv", dtype=str, keep_default_na=False)
    train = meta.loc[meta["split"] == "train", "image_id"].tolist()
    held_out = meta.loc[meta["split"] == "val", "image_id"].tolist()
    record = {"run_id": "r", "dataset": {"path": str(mnfinder_canonical), "train_split": "train",
                                         "train_images": train[:1], "val_images": train[1:]}}
    assert inf.tuning_images(record) == train[1:]
    with pytest.raises(ValueError, match="tuned on training images only"):
        inf.tuning_images({**record, "dataset": {**record["dataset"], "val_images": held_out[:1]}})
    with pytest.raises(ValueError, match="both trained and validated"):
        inf.tuning_images({**record, "dataset": {**record["dataset"], "train_images": train}})


def test_the_validation_split_keeps_acquisition_sets_whole():
    meta = pd.DataFrame({"image_id": [f"i{k}" for k in range(10)], "set": list("aaabbbccdd"), "split": "train"})
    train, val, note = dd.split_by_group(meta, val_share=0.2, group_by="set", seed=0)
    sets = meta.set_index("image_id")["set"]
    assert set(train) | set(val) == set(meta["image_id"]) and not set(train) & set(val) and val
    assert not set(sets[train]) & set(sets[val]) and "whole 'set' groups" in note
    one = meta.assign(set="a")
    train, val, note = dd.split_by_group(one, val_share=0.2, group_by="set", seed=0)
    assert len(val) >= 1 and len(train) >= 1 and "one by one" in note


# ----------------------------------------------------------------------------- config, run folder, table

def test_config_is_checked_and_round_trips():
    cfg = md.DenseConfig(decoder_channels=(32, 16, 8), crop=96)
    assert md.DenseConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.spec == "unet-tu-resnet18-d3-32-16-8"
    with pytest.raises(ValueError, match="one decoder channel count per encoder stage"):
        md.DenseConfig(decoder_channels=(64, 32))
    with pytest.raises(ValueError, match="must divide by 8"):
        md.DenseConfig(crop=100)
    with pytest.raises(ValueError, match="unknown dense setting"):
        md.DenseConfig.from_dict({"crop_size": 96})


def _untrained_run(tmp_path: Path, dataset: Path) -> Path:
    """A dense run folder with random weights (what training writes, without training)."""
    import torch

    cfg = md.DenseConfig(decoder_channels=(16, 8, 8), tile=256, tile_overlap=32)
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    torch.manual_seed(0)
    model = md.build_model(cfg, 1)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "in_channels": 1, "classes": list(dd.CLASSES),
                "epoch": 0}, run / "weights" / "best.pt")
    info = json.loads((dataset / "dataset.json").read_text())
    md.write_run_record(run, {"run_id": "run", "status": "finished", "model": {"family": "dense", "spec": cfg.spec},
                              "config": {"dense": cfg.to_dict()},
                              "dataset": {"path": str(dataset), "normalisation": info["normalisation"]}})
    return run


@pytest.mark.slow
def test_an_untrained_run_predicts_the_prediction_table_on_16_bit_raw_images(tmp_path, mnfinder_canonical):
    from workbench.core.paths import VENDORED

    import cv2

    from workbench.core.images import read_image

    run = _untrained_run(tmp_path, mnfinder_canonical)
    raw, _ = read_image(VENDORED["mnfinder"] / "validation-data" / "2022-05-26_RPE1" / "images" / "2198.tif")
    assert raw.dtype == np.uint16
    small = tmp_path / "crop.tif"
    cv2.imwrite(str(small), raw[300:396, 300:428])  # a 16-bit crop keeps the test quick
    table = inf.predict_dense(run, small, device="cpu", thresholds=inf.Thresholds(mn_prob=0.3, nucleus_prob=0.3))
    assert list(table.columns) == PREDICTION_COLUMNS
    assert set(table["class"]) <= {"mn", "nucleus"} and table["image"].nunique() <= 1
    assert ((table["score"] > 0) & (table["score"] <= 1)).all()
    assert (table["x1"] >= 0).all() and (table["x2"] <= 128).all() and (table["y2"] <= 96).all()
    assert (table["x2"] > table["x1"]).all() and (table["y2"] > table["y1"]).all()
    det = inf.DenseDetector(run, device="cpu")
    assert det.tuning == {"tuned": False, "note": "no thresholds.json: default thresholds"}
    probs = det.probabilities(np.zeros((100, 130), np.uint8))
    assert probs.shape == (3, 100, 130) and np.allclose(probs.sum(0), 1, atol=1e-4)


def test_a_yolo_run_is_not_a_dense_run(tmp_path):
    md.write_run_record(tmp_path, {"run_id": "y", "model": {"spec": "yolov8n.yaml"}})
    with pytest.raises(ValueError, match="not a dense run"):
        md.load_dense(tmp_path)


@pytest.fixture(scope="module")
def mnfinder_canonical() -> Path:
    """The vendored MNFinder data in canonical form (converted once, cached in data/generated)."""
    from workbench.data import datasets

    return datasets.prepare("mnfinder")


# ----------------------------------------------------------------------------- the study's error tables

def test_error_kinds_of_constructed_predictions():
    from workbench.studies import micronuclei_dense as mnd

    box = lambda cls, x, y, s=5: {"class": cls, "x1": float(x), "y1": float(y), "x2": float(x + s), "y2": float(y + s)}
    gt = pd.DataFrame([box("nucleus", 0, 0, 30), box("mn", 10, 10), box("mn", 31, 10), box("mn", 60, 60),
                       box("mn", 80, 10)]).assign(image="a")
    pred = pd.DataFrame([box("nucleus", 0, 0, 30), box("mn", 80, 10),  # the nucleus and one MN found
                         box("mn", 13, 20),  # on the true nucleus
                         box("mn", 64, 60),  # 4 px from the missed isolated MN at (62.5, 62.5)
                         box("mn", 40, 10),  # 12.5 px from the nucleus
                         box("mn", 100, 100)]).assign(image="a", score=0.9, approach="x")
    e = mnd.error_table(gt, pred, count_thr={"x": 0.5}, images=["a"], parent_distance=20).iloc[0]
    assert (e["n_true_mn"], e["tp"], e["fn"], e["fp"]) == (4, 1, 3, 4)
    assert (e["fn_in_predicted_nucleus"], e["fn_next_to_nucleus"], e["fn_isolated"]) == (1, 1, 1)
    assert (e["fp_on_nucleus"], e["fp_close_to_true_mn"], e["fp_near_nucleus"], e["fp_debris"]) == (1, 1, 1, 1)
    assert mnd.worst_image(mnd.error_table(gt, pred, count_thr={"x": 0.95}, images=["a"], parent_distance=20),
                           "x") == "a"
