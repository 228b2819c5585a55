"""Crops: exact geometry on constructed arrays (padding, resize modes, border fill, box mask),
batching over a box table, and crops of real BCCD ground truth with their class-folder export."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.models.crops import (
    CropSpec, as_rgb, box_mask_channel, crop_image, crop_table, crop_windows, export_crops, gt_crops)

from _tiny import tiny_bccd


def ramp(h: int = 40, w: int = 50) -> np.ndarray:
    """RGB image whose pixel (y, x) is (y, x, 7): every pixel's origin is readable."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy, xx, np.full_like(yy, 7)], axis=2).astype(np.uint8)


def test_padding_window_is_the_box_grown_by_pad_on_every_side():
    boxes = np.array([[10, 20, 30, 30], [5.5, 5.2, 9.5, 6.8]])
    win = crop_windows(boxes, CropSpec(size=8, pad=0.25))
    # 20 x 10 box grown by 5 px left/right and 2.5 px top/bottom, rounded outwards
    assert win[0].tolist() == [5, 17, 35, 33]
    # 4 x 1.6 box: +-1 and +-0.4 -> [4.5, 10.5] x [4.8, 7.2] -> floor/ceil
    assert win[1].tolist() == [4, 4, 11, 8]
    square = crop_windows(boxes[:1], CropSpec(size=8, pad=0.25, resize="square"))
    assert square[0].tolist() == [5, 10, 35, 40]  # 30 x 30 around the centre (20, 25)


def test_stretch_crop_equal_to_a_slice_when_no_resampling_is_needed():
    img = ramp()
    spec = CropSpec(size=10, pad=0.0, resize="stretch")
    out = crop_image(img, np.array([[12, 3, 22, 13]]), spec)
    assert out.shape == (1, 10, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], img[3:13, 12:22])


def test_letterbox_keeps_aspect_and_centres_with_fill_bars():
    img = ramp()
    spec = CropSpec(size=10, pad=0.0, resize="letterbox", fill=200)
    out = crop_image(img, np.array([[0, 0, 10, 4]]), spec)[0]  # 10 wide, 4 high: scale 1
    np.testing.assert_array_equal(out[3:7], img[0:4, 0:10])  # (10 - 4) // 2 = 3 rows above
    assert (out[:3] == 200).all() and (out[7:] == 200).all()
    # downscale by 2: 20 x 8 box -> 10 x 4 in the middle
    out2 = crop_image(img, np.array([[10, 10, 30, 18]]), spec)[0]
    assert (out2[:3] == 200).all() and (out2[7:] == 200).all()
    np.testing.assert_allclose(out2[3:7, :, 1], [np.arange(10.5, 30, 2)] * 4, atol=0.51)


def test_border_is_filled_and_the_cell_stays_centred():
    img = ramp()
    spec = CropSpec(size=12, pad=0.5, resize="stretch", fill=99)
    # 6 x 6 box at the top-left corner: window [-3, 9) in both axes, 3 px outside
    out = crop_image(img, np.array([[0, 0, 6, 6]]), spec)[0]
    assert (out[:3] == 99).all() and (out[:, :3] == 99).all()  # 12 px window -> scale 1
    np.testing.assert_array_equal(out[3:, 3:], img[0:9, 0:9])
    # and at the bottom-right corner
    h, w = img.shape[:2]
    out = crop_image(img, np.array([[w - 6, h - 6, w, h]]), spec)[0]
    assert (out[9:] == 99).all() and (out[:, 9:] == 99).all()
    np.testing.assert_array_equal(out[:9, :9], img[h - 9:, w - 9:])


def test_zero_area_and_grey_images():
    grey = ramp()[..., 1]
    out = crop_image(grey, np.array([[5, 5, 5, 5]]), CropSpec(size=8, pad=0.0))
    assert out.shape == (1, 8, 8, 3)
    assert (out[0, :, :, 0] == out[0, :, :, 1]).all()  # grey repeated to RGB
    # a zero-area box at x = y = 5 lies on the edge of pixels 4 and 5: both are in its window
    assert crop_windows(np.array([[5, 5, 5, 5]]), CropSpec(size=8, pad=0.0))[0].tolist() == [4, 4, 6, 6]
    assert out[0, 0, 0, 0] == 4 and out[0, -1, -1, 0] == 5
    with pytest.raises(ValueError, match="8-bit"):
        crop_image(grey.astype(np.uint16), np.array([[0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="x2 < x1"):
        crop_image(grey, np.array([[5, 5, 4, 6]]))
    with pytest.raises(ValueError, match="size"):
        CropSpec(size=4)
    with pytest.raises(ValueError, match="resize"):
        CropSpec(resize="crop")


def test_box_mask_channel_marks_the_unpadded_box():
    spec = CropSpec(size=20, pad=0.5, resize="stretch", box_mask=True)
    mask = box_mask_channel(np.array([[10, 10, 20, 20]]), spec)[0]
    # window [5, 25) -> scale 1; the box covers pixels 5..14 of the crop
    expected = np.zeros((20, 20), np.uint8)
    expected[5:15, 5:15] = 255
    np.testing.assert_array_equal(mask, expected)
    crops = crop_image(ramp(), np.array([[10, 10, 20, 20], [0, 0, 4, 4]]), spec)
    assert crops.shape == (2, 20, 20, 4)
    np.testing.assert_array_equal(crops[0, :, :, 3], expected)


def test_extra_channel_is_cropped_with_the_image():
    img = ramp()
    extra = np.zeros(img.shape[:2], np.uint8)
    extra[10:20, 10:20] = 1
    out = crop_image(img, np.array([[10, 10, 20, 20]]), CropSpec(size=10, pad=0.0, resize="stretch"), extra=extra)
    assert out.shape == (1, 10, 10, 4) and (out[0, :, :, 3] == 1).all()
    with pytest.raises(ValueError, match="do not match"):
        crop_image(img, np.array([[0, 0, 2, 2]]), extra=extra[:5])


def test_crop_table_keeps_table_order_across_images():
    a, b = ramp(), 255 - ramp()
    boxes = pd.DataFrame({"image": ["b", "a", "b"], "x1": [0, 0, 10], "y1": [0, 0, 10],
                          "x2": [10, 10, 20], "y2": [10, 10, 20]})
    spec = CropSpec(size=10, pad=0.0, resize="stretch")
    out = crop_table(boxes, {"a": a, "b": b}, spec)
    np.testing.assert_array_equal(out[0], b[0:10, 0:10])
    np.testing.assert_array_equal(out[1], a[0:10, 0:10])
    np.testing.assert_array_equal(out[2], b[10:20, 10:20])
    with pytest.raises(KeyError, match="no pixels for image 'c'"):
        crop_table(boxes.assign(image="c"), {"a": a}, spec)
    assert crop_table(boxes.iloc[:0], {}, spec).shape == (0, 10, 10, 3)
    assert as_rgb(np.zeros((3, 3, 4), np.uint8)).shape == (3, 3, 3)


def test_gt_crops_of_real_bccd_and_export(tmp_path):
    ds = tiny_bccd(tmp_path / "bccd", n_train=3, n_val=1)
    cs = gt_crops(ds, CropSpec(size=32), split="train")
    objects = pd.read_csv(ds / "objects.csv")
    train_ids = set(pd.read_csv(ds / "meta.csv").query("split == 'train'")["image_id"])
    n_expected = int(objects["image_id"].isin(train_ids).sum())
    assert len(cs.table) == n_expected - cs.table.attrs["dropped_small"] and len(cs.table) > 10
    assert cs.crops.shape == (len(cs.table), 32, 32, 3)
    assert cs.classes == ["Platelets", "RBC", "WBC"]
    assert (np.asarray(cs.classes)[cs.labels] == cs.table["class"].to_numpy()).all()
    # crops are real pixels (blood smear: not flat)
    assert cs.crops.reshape(len(cs.crops), -1).std(axis=1).min() > 5
    only = gt_crops(ds, CropSpec(size=32), split="train", classes=["WBC", "Platelets"])
    assert set(only.table["class"]) <= {"WBC", "Platelets"} and only.classes == ["WBC", "Platelets"]
    with pytest.raises(ValueError, match="not in the dataset's classes"):
        gt_crops(ds, split="train", classes=["Neutrophil"])
    with pytest.raises(ValueError, match="no images in split 'test'"):
        gt_crops(ds, split="test")

    out = export_crops(cs, tmp_path / "crops")
    index = pd.read_csv(out / "crops.csv")
    assert len(index) == len(cs.table)
    for cls in cs.classes:
        assert len(list((out / cls).glob("*.png"))) == int((cs.table["class"] == cls).sum())
    import cv2

    first = cv2.imread(str(out / index["file"][0]))[:, :, ::-1]
    np.testing.assert_array_equal(first, cs.crops[0])
    with pytest.raises(FileExistsError):
        export_crops(cs, out)
