"""Overlays: exact box colours on constructed arrays, three roles on a real BCCD image, galleries."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from workbench.data.canonical import read_images
from workbench.report import overlays as ov
from workbench.data.canonical import load_dataset
from workbench.evaluation.metrics import match

POS, NOR = ["WBC", "Platelets"], "RBC"


def test_display_rgb_scales_grey_and_16_bit_without_touching_the_input():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = ov.display_rgb(grey)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert (out[..., 0] == grey).all() and (out[..., 2] == grey).all()
    deep = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600)  # 0..59400
    before = deep.copy()
    out = ov.display_rgb(deep)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255  # stretched for display
    assert (deep == before).all()
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = 255
    assert ov.display_rgb(rgba).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="expected an"):
        ov.display_rgb(np.zeros((2, 2, 5)))


def test_roles_from_changed_or_from_the_two_classes():
    t = pd.DataFrame({"det_class": ["mn", "mn", "nuc", "junk"], "final_class": ["mn", "nuc", "nuc", "junk"]})
    assert ov.box_roles(t, positive="mn", normal="nuc").tolist() == ["positive", "corrected", "normal", "other"]
    t["changed"] = ["True", "false", "1", "no"]  # CSV text is read as well
    assert ov.box_roles(t, positive="mn", normal="nuc").tolist() == ["corrected", "normal", "corrected", "other"]
    t["changed"] = ["maybe", "x", "1", "0"]
    with pytest.raises(ValueError, match=r"'changed' must be true/false; rows \[0, 1\]"):
        ov.box_roles(t, positive="mn", normal="nuc")
    with pytest.raises(ValueError, match="both positive and normal"):
        ov.box_roles(t, positive="mn", normal=["mn"])


def test_missed_gt_rows_get_their_own_role_and_colour():
    t = pd.DataFrame({"image": ["a"] * 3, "class": ["mn", "nuc", "mn"], "x1": [0, 10, 20], "y1": [0, 0, 0],
                      "x2": [5, 15, 25], "y2": [5, 5, 5], "changed": [False, True, pd.NA],
                      "missed": [pd.NA, pd.NA, True]})  # a prediction table with one GT row appended
    assert ov.box_roles(t, positive="mn", normal="nuc").tolist() == ["positive", "corrected", "missed"]
    img = ov.draw_overlay(np.full((8, 30, 3), 200, np.uint8), t, positive="mn", normal="nuc", thickness=1)
    assert tuple(img[0, 22]) == ov.COLOURS["missed"]  # top edge of the missed box
    assert tuple(img[0, 2]) == ov.COLOURS["positive"]


def test_draw_overlay_exact_pixels():
    img = np.zeros((60, 80), np.uint8)
    boxes = pd.DataFrame({"image": "I", "class": ["mn", "nuc", "nuc"], "x1": [10, 40, 5], "y1": [10, 10, 40],
                          "x2": [30, 70, 15], "y2": [30, 35, 55], "changed": [False, False, True]})
    out = ov.draw_overlay(img, boxes, positive="mn", normal="nuc", thickness=1)
    assert tuple(out[10, 20]) == ov.COLOURS["positive"]  # top edge at y1
    assert tuple(out[29, 20]) == ov.COLOURS["positive"]  # bottom edge: last pixel inside y2=30
    assert tuple(out[20, 69]) == ov.COLOURS["normal"]
    assert tuple(out[45, 5]) == ov.COLOURS["corrected"]
    assert tuple(out[20, 20]) == (0, 0, 0) and tuple(out[5, 5]) == (0, 0, 0)  # inside / outside untouched
    colours = {tuple(c) for c in out.reshape(-1, 3)}
    assert colours == {(0, 0, 0), ov.COLOURS["positive"], ov.COLOURS["normal"], ov.COLOURS["corrected"]}
    assert img.max() == 0  # the caller's array is not modified


@pytest.fixture(scope="module")
def bccd(bccd_canonical):
    return load_dataset(bccd_canonical)


def _cascade(objects: pd.DataFrame, image_ids: list[str]) -> pd.DataFrame:
    """A cascade-style table: the classifier relabels every third RBC of these images as WBC."""
    t = objects[objects["image_id"].isin(image_ids)].rename(columns={"class": "det_class"})
    t = t.assign(final_class=t["det_class"]).reset_index(drop=True)
    rbc = t.index[t["det_class"] == "RBC"][::3]
    t.loc[rbc, "final_class"] = "WBC"
    return t.assign(changed=t["det_class"] != t["final_class"])


def _outline(shape, x1, y1, x2, y2, band: int) -> np.ndarray:
    """Pixels within ``band`` of the box outline."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    outer = (xx >= x1 - band) & (xx <= x2 + band) & (yy >= y1 - band) & (yy <= y2 + band)
    inner = (xx > x1 + band) & (xx < x2 - band) & (yy > y1 + band) & (yy < y2 - band)
    return outer & ~inner


def test_real_bccd_overlay_has_the_three_colours_on_the_boxes(bccd):
    o = bccd.objects
    kinds = o.groupby("image_id")["class"].agg(lambda s: set(s))
    image_id = next(i for i, s in kinds.items() if s == {"RBC", "WBC", "Platelets"})
    table = _cascade(o, [image_id])
    arr = read_images(bccd.root, [image_id])[image_id]
    out = ov.draw_overlay(arr, table, positive=POS, normal=NOR)
    assert out.shape == arr.shape and out.dtype == np.uint8
    roles = ov.box_roles(table, positive=POS, normal=NOR)
    assert set(roles) == {"positive", "normal", "corrected"}
    any_outline = np.zeros(arr.shape[:2], bool)
    for role in ("positive", "normal", "corrected"):
        colour = np.array(ov.COLOURS[role])
        is_colour = (out == colour).all(axis=2)
        on_boxes = np.zeros(arr.shape[:2], bool)
        for r in table[roles == role].itertuples():
            on_boxes |= _outline(arr.shape[:2], r.x1, r.y1, r.x2, r.y2, band=3)
        any_outline |= on_boxes
        # the colour is there, and (bar the rare natural pixel) only on this role's outlines
        assert is_colour.sum() > 100
        assert (is_colour & on_boxes).sum() / is_colour.sum() > 0.99
    assert (out[~any_outline] == arr[~any_outline]).all()  # away from the boxes: the image itself
    fig = ov.overlay_figure(arr, table, positive=POS, normal=NOR, title=image_id)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    n = roles.value_counts()
    assert labels == [f"positive: WBC, Platelets (n={n['positive']})", f"normal: RBC (n={n['normal']})",
                      f"corrected by classifier (n={n['corrected']})"]


def test_gallery_of_the_worst_images_from_a_match_table(bccd):
    ids = sorted(bccd.images["image_id"])[:5]
    gt = bccd.objects[bccd.objects["image_id"].isin(ids)].rename(columns={"image_id": "image"})
    gt = gt.reset_index(drop=True)
    pred = gt.assign(score=1.0)
    # drop two boxes of the 4th image and one of the 2nd: 2 and 1 false negatives
    drop = list(pred.index[pred["image"] == ids[3]][:2]) + list(pred.index[pred["image"] == ids[1]][:1])
    m = match(gt, pred.drop(index=drop))
    errors = ov.error_counts(m)
    assert errors.loc[0, ["image", "fn", "fp", "errors"]].tolist() == [ids[3], 2, 0, 2]
    worst = ov.worst_images(m, n=4)
    assert worst == [ids[3], ids[1]]  # only images with errors
    images = read_images(bccd.root, worst)
    fig = ov.overlay_gallery(images, gt, positive=POS, normal=NOR, image_ids=worst,
                             titles={i: f"{i}: {e} errors" for i, e in zip(errors["image"], errors["errors"])})
    assert isinstance(fig, Figure)
    shown = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in shown] == [f"{ids[3]}: 2 errors", f"{ids[1]}: 1 errors"]
    n_boxes = int(gt["image"].isin(worst).sum())
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    counts = [int(s.split("n=")[1].rstrip(")")) for s in legend.split(") ") if "n=" in s]
    assert sum(counts) == n_boxes
    with pytest.raises(ValueError, match="no image array given"):
        ov.overlay_gallery(images, gt, positive=POS, normal=NOR, image_ids=["nope"])
    with pytest.raises(ValueError, match="no image"):
        read_images(bccd.root, ["nope"])
