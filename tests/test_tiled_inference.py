"""Batched tiled inference: cells cut by tile edges counted once, counts over tiles equal counts
on the whole image, batching across images, colour order handed to ultralytics, empty tiles."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _blobs import BlobDetector, blob_image, sorted_boxes
from workbench.inference.tiled_inference import (
    TileSettings, YoloDetector, is_empty, tile_windows, tiled_predict, tiled_predict_image, to_bgr)
from workbench.data.tiling import tile_starts

# Cells up to 40 px, tiles of 200 px overlapping by 50 px: every cell lies whole in some tile.
CELLS = [(10, 10, 40, 35), (185, 20, 215, 50),  # straddles the first vertical tile edge (x=200)
         (140, 140, 175, 165),  # in the overlap of four tiles
         (290, 185, 330, 210),  # crosses the horizontal edge y=200
         (420, 300, 455, 340), (560, 420, 590, 455), (100, 440, 130, 470),
         (320, 100, 352, 130), (354, 100, 380, 128)]  # two cells 2 px apart, seen by two tiles


def test_tile_windows_cover_the_image_with_the_training_offsets():
    win = tile_windows(480, 600, tile=200, overlap=0.25)
    xs, ys = tile_starts(600, 200, 0.25), tile_starts(480, 200, 0.25)
    assert sorted(set(win[:, 0])) == xs and sorted(set(win[:, 1])) == ys
    assert (win[:, 2] - win[:, 0] == 200).all() and win[:, 2].max() == 600 and win[:, 3].max() == 480
    assert tile_windows(50, 70, tile=200, overlap=0.2).tolist() == [[0, 0, 70, 50]]  # small image: one tile


@pytest.mark.parametrize("merge, metric", [("nmm", "ios"), ("nms", "ios")])
def test_counts_over_tiles_equal_counts_on_the_whole_image(merge, metric):
    img = blob_image(480, 600, CELLS)
    whole = BlobDetector()([img])[0]
    assert len(whole) == len(CELLS)
    det = BlobDetector()
    s = TileSettings(tile=200, overlap=0.25, batch=4, merge=merge, merge_metric=metric, merge_thr=0.5)
    out = tiled_predict_image(img, det, settings=s, name="blobs")
    assert len(out) == len(CELLS) and set(out["image"]) == {"blobs"}
    if merge == "nmm":  # the union of a cut cell's pieces is exactly the whole cell
        np.testing.assert_array_equal(sorted_boxes(out), sorted_boxes(whole))
    n_tiles = len(tile_windows(480, 600, tile=200, overlap=0.25))
    assert sum(det.calls) == n_tiles and max(det.calls) == 4 and len(det.calls) == -(-n_tiles // 4)
    assert out.attrs["tiles"] == n_tiles and out.attrs["skipped"] == 0


def test_a_winning_cut_piece_is_completed_to_the_whole_cell():
    class SureOfPieces(BlobDetector):  # cut pieces outscore whole views
        def _one(self, a):
            t = super()._one(a)
            return t.assign(score=np.where(t["score"] < 0.7, 0.95, 0.5))

    img = blob_image(480, 600, CELLS)
    out = tiled_predict_image(img, SureOfPieces(), settings=TileSettings(tile=200, overlap=0.25, merge="nmm"))
    np.testing.assert_array_equal(sorted_boxes(out), sorted_boxes(BlobDetector()([img])[0]))
    nms_out = tiled_predict_image(img, SureOfPieces(), settings=TileSettings(tile=200, overlap=0.25, merge="nms"))
    assert len(nms_out) == len(CELLS)  # counted once, but NMS keeps the truncated pieces
    assert not np.array_equal(sorted_boxes(nms_out), sorted_boxes(out))


def test_without_a_cross_tile_merge_cut_cells_would_be_counted_twice():
    img = blob_image(480, 600, CELLS)
    out = tiled_predict_image(img, BlobDetector(), settings=TileSettings(tile=200, overlap=0.25, merge="nms",
                                                                         merge_metric="iou", merge_thr=0.9))
    assert len(out) > len(CELLS)  # the partial pieces survive a strict IoU-NMS


def test_tiles_of_several_images_share_batches_and_keep_their_names():
    a = blob_image(300, 300, [(10, 10, 30, 30), (190, 100, 230, 130)])
    b = blob_image(150, 150, [(50, 50, 70, 80)], rgb=False)  # grey and smaller than a tile
    det = BlobDetector()
    out = tiled_predict(det, {"a": a, "b": b}, settings=TileSettings(tile=200, overlap=0.25, batch=8))
    assert det.calls == [5]  # 4 tiles of a and 1 of b in one call
    assert out["image"].tolist().count("a") == 2 and out["image"].tolist().count("b") == 1
    assert out["image"].tolist()[:2] == ["a", "a"]  # image order, then score
    assert list(out.columns) == ["image", "x1", "y1", "x2", "y2", "class", "score"]
    np.testing.assert_array_equal(out.loc[out["image"] == "b", ["x1", "y1", "x2", "y2"]].to_numpy(), [[50, 50, 70, 80]])


def test_empty_tiles_are_skipped_only_when_really_empty():
    flat = np.full((200, 200), 30, np.uint8)
    dim_cell = flat.copy()
    dim_cell[100:105, 100:105] = 130  # one 5x5 cell of contrast 100: std ~2
    assert is_empty(flat, empty_std=1.0) and not is_empty(dim_cell, empty_std=1.0)
    assert not is_empty(flat, empty_std=None)  # default: never skip
    img = np.full((400, 400), 30, np.uint8)
    img[300:305, 300:305] = 130
    det = BlobDetector()
    out = tiled_predict_image(img, det, settings=TileSettings(tile=200, overlap=0.0, empty_std=1.0))
    assert out.attrs["skipped"] == 3 and out.attrs["tiles"] == 1 and len(out) == 1
    out_all = tiled_predict_image(img, BlobDetector(), settings=TileSettings(tile=200, overlap=0.0))
    assert out_all.attrs["skipped"] == 0 and out_all.attrs["tiles"] == 4 and len(out_all) == 1


class _OneTablePerCall(BlobDetector):
    """The same blobs through the ``detect_items`` protocol: one table per call with ``item``."""

    def detect_items(self, arrays):
        self.calls.append(len(arrays))
        return pd.concat([self._one(a).assign(item=k) for k, a in enumerate(arrays)], ignore_index=True)


def test_a_detector_giving_one_table_per_call_is_read_like_one_giving_a_table_per_tile():
    a = blob_image(480, 600, CELLS)
    b = blob_image(150, 150, [(50, 50, 70, 80)], rgb=False)
    s = TileSettings(tile=200, overlap=0.25, batch=5, merge="nmm")
    per_tile, per_call = BlobDetector(), _OneTablePerCall()
    expected = tiled_predict(per_tile, {"a": a, "b": b}, settings=s)
    got = tiled_predict(per_call, {"a": a, "b": b}, settings=s)
    pd.testing.assert_frame_equal(got, expected)
    assert per_call.calls == per_tile.calls and len(got) == len(CELLS) + 1


def test_a_one_table_detector_must_say_which_array_each_box_belongs_to():
    class NoItem(_OneTablePerCall):
        def detect_items(self, arrays):
            return super().detect_items(arrays).drop(columns="item")

    class WrongItem(_OneTablePerCall):
        def detect_items(self, arrays):
            return super().detect_items(arrays).assign(item=len(arrays))

    img = blob_image(480, 600, CELLS)
    with pytest.raises(ValueError, match="without an 'item' column"):
        tiled_predict_image(img, NoItem(), settings=TileSettings(tile=200, overlap=0.25))
    with pytest.raises(ValueError, match="items outside 0..3"):
        tiled_predict_image(img, WrongItem(), settings=TileSettings(tile=200, overlap=0.25, batch=4))


def test_bad_detectors_and_images_fail_with_clear_errors():
    img = blob_image(100, 100, [(10, 10, 20, 20)])
    with pytest.raises(ValueError, match="returned 0 tables for 1"):
        tiled_predict_image(img, lambda arrays: [], settings=TileSettings(tile=100))
    with pytest.raises(ValueError, match="lacks columns"):
        tiled_predict_image(img, lambda arrays: [pd.DataFrame({"x1": [1.0]})], settings=TileSettings(tile=100))
    with pytest.raises(ValueError, match="big.tif: image is uint16"):
        tiled_predict(BlobDetector(), {"big.tif": img.astype(np.uint16)}, settings=TileSettings(tile=100))
    with pytest.raises(ValueError, match="overlap"):
        TileSettings(overlap=1.0)


# ----------------------------------------------------------------------------- colour order

class _Boxes:
    def __init__(self, xyxy, cls, conf):
        import torch

        self.xyxy, self.cls, self.conf = torch.tensor(xyxy), torch.tensor(cls), torch.tensor(conf)


class _Result:
    def __init__(self, boxes):
        self.boxes = boxes


class _RecordingModel:
    """Looks like ultralytics.YOLO to the adapter; records what predict() receives."""

    names = {0: "cell"}

    def __init__(self):
        self.seen, self.kwargs = [], []

    def predict(self, source, **kwargs):
        self.seen.append(source)
        self.kwargs.append(kwargs)
        return [_Result(_Boxes([[1.0, 2.0, 3.0, 4.0]], [0.0], [0.5])) for _ in source]


def test_yolo_adapter_hands_ultralytics_bgr_in_one_call_per_batch():
    model = _RecordingModel()
    det = YoloDetector(model, conf=0.1, imgsz=64, device="cpu")
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255  # RGB red
    grey = np.full((8, 8), 7, np.uint8)
    tables = det([red, grey])
    assert len(model.seen) == 1 and len(model.seen[0]) == 2 and model.kwargs[0]["batch"] == 2
    bgr = model.seen[0][0]
    assert bgr[..., 2].min() == 255 and bgr[..., 0].max() == 0  # red sits in the last (R of BGR) channel
    assert bgr.flags["C_CONTIGUOUS"] and model.seen[0][1].shape == (8, 8, 3)
    assert tables[0].iloc[0].tolist() == [1.0, 2.0, 3.0, 4.0, "cell", 0.5]
    np.testing.assert_array_equal(to_bgr(red)[..., ::-1], red)


@pytest.mark.slow
def test_yolo_adapter_feeds_the_network_what_ultralytics_makes_of_the_file(tmp_path):
    """A real YOLO: the network input made from an RGB array through the adapter equals the one
    ultralytics makes from the same image file (read by OpenCV as BGR); unflipped RGB differs."""
    from workbench.core.paths import VENDORED
    from workbench.models.yolo import load_model

    tif = next((VENDORED["monuseg"] / "Tissue_Images").glob("*.tif"))
    rgb = np.asarray(Image.open(tif).convert("RGB"))[:96, :128]
    path = tmp_path / "crop.png"
    Image.fromarray(rgb).save(path)
    model = load_model("yolov8n.yaml")
    seen = []
    model.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    kw = dict(conf=0.25, imgsz=128, max_det=10, device="cpu")
    model.predict(str(path), verbose=False, save=False, **kw)
    det = YoloDetector(model, **kw)
    det([rgb])
    det([np.ascontiguousarray(rgb[..., ::-1])])
    from_file, from_adapter, unflipped = seen[-3:]
    assert from_file.shape == from_adapter.shape == (1, 3, 96, 128)
    assert torch_equal(from_adapter, from_file) and not torch_equal(unflipped, from_file)
    # the network's first channel is red
    np.testing.assert_allclose(from_adapter[0, 0].numpy() * 255, rgb[..., 0], atol=0.5)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())
