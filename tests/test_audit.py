"""Dataset audit on real canonical datasets, and every check on a damaged real copy."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import MNFINDER, MONUSEG, checksums
from workbench.data.audit import (
    AuditSettings, audit_dataset, check_image, clark_evans, density_class, duplicate_boxes, write_audit)
from workbench.data.importers import convert


@pytest.fixture(scope="module")
def bccd_audit(bccd_canonical):
    before = checksums(bccd_canonical)
    result = audit_dataset(bccd_canonical, workers=2)
    assert checksums(bccd_canonical) == before  # the audit never modifies the dataset
    return result


def kinds(problems: pd.DataFrame, kind: str, source: str = "audit") -> pd.DataFrame:
    return problems[(problems["kind"] == kind) & (problems["source"] == source)]


@pytest.mark.slow
def test_bccd_counts_equal_the_raw_counts(bccd_audit):
    summary = bccd_audit.summary()
    assert summary["images"] == 292 and summary["objects"] == 3943
    assert summary["classes"] == {"Platelets": 292, "RBC": 3350, "WBC": 301}
    assert summary["splits"] == {"train": 205, "val": 87}
    t = bccd_audit.tables
    per_split = t["images_per_split"].set_index("split")
    assert per_split.loc["train", "objects"] == 2805 and per_split.loc["val", "objects"] == 1138
    cls = t["objects_per_class_split"].set_index(["split", "class"])["objects"]
    assert (cls["train", "RBC"], cls["val", "RBC"], cls["train", "WBC"], cls["val", "Platelets"]) == \
        (2382, 968, 214, 83)
    assert t["image_properties"].to_dict(orient="records") == [
        {"width": 640, "height": 480, "channels": 3, "bit_depth": 8, "file_format": "JPEG", "images": 292}]
    sizes = t["box_sizes"].set_index("class")
    assert 100 <= sizes.loc["RBC", "width_median"] <= 110 and 35 <= sizes.loc["Platelets", "width_median"] <= 42
    # RBCs pack regularly (Clark-Evans R 0.87-1.54); no BCCD image has > 100 objects
    assert set(bccd_audit.images["density"]) == {"sparse"}
    assert bccd_audit.images["clark_evans"].min() > 0.8
    im = bccd_audit.images
    assert im["readable"].all() and not im["truncated"].any() and not im["grey"].any()
    assert im["brightness"].between(150, 200).all() and (im["sharpness"] > 0).all()


@pytest.mark.slow
def test_bccd_known_quirks_are_reported(bccd_audit):
    p = bccd_audit.problems
    zero = kinds(p, "zero_area_box")
    assert sorted(zero["image"]) == ["BloodImage_00338", "BloodImage_00343"]
    assert set(zero["object"]) == {"line 13", "line 4"}
    assert sorted(kinds(p, "zero_area_box", "import")["image"]) == ["BloodImage_00338", "BloodImage_00343"]
    # near-duplicate RBC boxes: 7 images have IoU > 0.8, six of them > 0.9 (00013 is 0.830)
    dup = kinds(p, "duplicate_box")
    assert sorted(dup["image"].str[-3:]) == ["020", "100", "104", "251", "331", "403"]
    assert (dup["severity"] == "warning").all()
    loose = duplicate_boxes(bccd_audit.objects, iou=0.8)
    assert sorted(loose["image_id"].str[-3:]) == ["013", "020", "100", "104", "251", "331", "403"]
    assert loose.set_index("image_id").loc["BloodImage_00013", "iou"] == pytest.approx(0.830, abs=1e-3)
    # the same field at two focus settings, in official val and train: leakage
    near = kinds(p, "near_duplicate_image")
    assert sorted(near["image"]) == ["BloodImage_00037", "BloodImage_00038"]
    assert (near["severity"] == "error").all() and near["detail"].str.contains("leakage").all()
    assert set(p["kind"]) == {"zero_area_box", "duplicate_box", "near_duplicate_image", "absent_common_class"}


def test_bccd_images_without_a_class_that_almost_every_image_has_are_pointed_at(bccd_audit):
    """BCCD boxes RBC in 280 of 292 images and WBC in 290: the 12 + 2 others are flagged (00330
    boxes only its WBC among ~20 plainly visible red cells; notebook 05 counts 19 there)."""
    absent = kinds(bccd_audit.problems, "absent_common_class")
    assert len(absent) == 14 and (absent["severity"] == "warning").all()
    by_class = absent["detail"].str.extract(r"^no (\w+) box")[0].value_counts().to_dict()
    assert by_class == {"RBC": 12, "WBC": 2}
    row = absent.set_index("image").loc["BloodImage_00330"]
    assert row["detail"] == ("no RBC box, although 280 of 292 labelled images (95.9 %) have one: "
                             "check for incomplete annotation")
    assert row["file"].endswith("BloodImage_00330.txt")


def test_absent_common_class_edge_cases():
    from workbench.data.audit import absent_class_problems

    objs = pd.DataFrame({"image_id": ["a", "a", "b", "c", "d", "d"], "class_id": [0, 1, 0, 0, 0, 7],
                         "class": ["x", "y", "x", "x", "x", None]})
    images = pd.DataFrame({"image_id": ["a", "b", "c", "d", "e", "f"], "label_path": list("abcdef"),
                           "label_state": ["labelled"] * 4 + ["empty", "missing"]})
    # x is in 4 of 4 labelled images; y in 1 of 4; empty/missing label files are other problems
    assert absent_class_problems(objs, images, ["x", "y"], AuditSettings(common_class_share=0.9)) == []
    rows = absent_class_problems(objs, images, ["x", "y"], AuditSettings(common_class_share=0.25))
    assert [(r["image"], r["detail"][:6]) for r in rows] == [("b", "no y b"), ("c", "no y b"), ("d", "no y b")]
    assert absent_class_problems(objs.iloc[:0], images.iloc[4:], ["x"], AuditSettings()) == []
    with pytest.raises(ValueError, match="common_class_share"):
        AuditSettings(common_class_share=0)


@pytest.mark.slow
def test_write_audit_outputs_and_never_touches_the_dataset(bccd_canonical, bccd_audit, tmp_path):
    before = checksums(bccd_canonical)
    out = write_audit(bccd_audit, tmp_path / "audit", examples=2)
    assert checksums(bccd_canonical) == before
    doc = json.loads((out / "audit.json").read_text())
    assert (doc["images"], doc["objects"]) == (292, 3943)
    assert doc["classes"] == {"Platelets": 292, "RBC": 3350, "WBC": 301}
    assert len(doc["problems"]) == len(bccd_audit.problems) == 12 + 14  # + 14 absent_common_class
    assert {"image", "kind", "detail", "severity"} <= set(doc["problems"][0])
    assert doc["settings"]["dup_iou"] == 0.9 and doc["settings"]["common_class_share"] == 0.9
    for name in ("images", "objects", "problems", "duplicates", "images_per_split",
                 "objects_per_class_split", "objects_per_image", "box_sizes", "image_properties",
                 "density", "quality"):
        assert len(pd.read_csv(out / f"{name}.csv")) > 0, name
    for fig in ("class_counts", "box_sizes", "objects_per_image", "density_classes",
                "quality_proxies", "examples"):
        png, pdf = out / "figures" / f"{fig}.png", out / "figures" / f"{fig}.pdf"
        assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF", fig
    write_audit(bccd_audit, out, figures=False)  # a previous audit folder is replaced
    assert not (out / "figures").exists() and (out / "audit.json").exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_audit(bccd_audit, other)
    with pytest.raises(ValueError, match="outside the dataset"):
        write_audit(bccd_audit, bccd_canonical / "audit")


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line + "\n")


@pytest.mark.slow
def test_damaged_copy_every_problem_has_the_right_kind(bccd_canonical, tmp_path):
    root = shutil.copytree(bccd_canonical, tmp_path / "bccd")
    img, lab = root / "images", root / "labels"
    ids = sorted(p.stem for p in img.glob("*.jpg"))[:11]  # BCCD numbers have gaps
    data = (img / f"{ids[1]}.jpg").read_bytes()
    (img / f"{ids[1]}.jpg").write_bytes(data[: len(data) // 2])  # truncated real JPEG
    (img / f"{ids[2]}.jpg").write_bytes(b"not an image at all")
    (img / f"{ids[3]}.jpg").unlink()
    (lab / f"{ids[4]}.txt").unlink()  # missing label file ...
    (lab / f"{ids[5]}.txt").write_text("")  # ... vs empty label file
    _append(lab / f"{ids[6]}.txt", "7 0.5 0.5 0.1 0.1")  # class id out of range (3 classes)
    _append(lab / f"{ids[7]}.txt", "1 0.98 0.5 0.1 0.1")  # exceeds the right edge
    _append(lab / f"{ids[8]}.txt", "1 1.5 0.5 0.1 0.1")  # entirely outside
    _append(lab / f"{ids[9]}.txt", "1 0.5 zero 0.1 0.1")  # malformed
    _append(lab / f"{ids[10]}.txt", "1 0.5 0.5 0.003 0.1")  # 1.9 px wide: tiny
    (lab / "stray.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    before = checksums(root)
    result = audit_dataset(root, workers=2)
    assert checksums(root) == before
    p = result.problems[result.problems["source"] == "audit"].set_index("kind")
    expect = {
        "truncated_image": (ids[1], "error"),
        "unreadable_image": (ids[2], "error"),
        "missing_image_file": (ids[3], "error"),
        "missing_label_file": (ids[4], "error"),
        "empty_label_file": (ids[5], "info"),
        "unknown_class_id": (ids[6], "error"),
        "box_out_of_bounds": (ids[7], "warning"),
        "box_outside_image": (ids[8], "error"),
        "malformed_label_line": (ids[9], "error"),
        "tiny_box": (ids[10], "info"),
        "orphan_label_file": ("", "warning"),
    }
    for kind, (image, severity) in expect.items():
        row = p.loc[[kind]]
        assert len(row) == 1, (kind, row)
        assert (row["image"].iat[0], row["severity"].iat[0]) == (image, severity), kind
    assert "EOI" in p.loc["truncated_image", "detail"]
    assert p.loc["unknown_class_id", "object"] == f"line {len((lab / f'{ids[6]}.txt').read_text().splitlines())}"
    assert "not in 0..2" in p.loc["unknown_class_id", "detail"]
    state = result.images.set_index("image_id")["label_state"]
    assert (state[ids[4]], state[ids[5]]) == ("missing", "empty")
    assert result.images.set_index("image_id")["density"][ids[5]] == "empty"
    # class counts: 3943 minus the two emptied label files, plus the three appended valid boxes
    # (out of bounds, outside, tiny); the unknown id and the malformed line are not counted
    lost = len(_lines(bccd_canonical, ids[4])) + len(_lines(bccd_canonical, ids[5]))
    assert result.summary()["objects"] == 3943 - lost + 3


def _lines(root: Path, stem: str) -> list[str]:
    return [ln for ln in (root / "labels" / f"{stem}.txt").read_text().splitlines() if ln.strip()]


def test_truncated_real_images_are_detected_although_opencv_decodes_them(bccd_canonical, tmp_path):
    import cv2
    from PIL import Image

    data = (bccd_canonical / "images" / "BloodImage_00000.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert cv2.imread(str(cut)) is not None  # why a marker check is needed
    r = check_image(str(cut))
    assert r["truncated"] and r["file_width"] == 640  # the header is intact
    whole = check_image(str(bccd_canonical / "images" / "BloodImage_00000.jpg"))
    assert not whole["truncated"] and whole["readable"]
    png = tmp_path / "whole.png"
    with Image.open(bccd_canonical / "images" / "BloodImage_00000.jpg") as im:
        im.save(png)
    assert not check_image(str(png))["truncated"]
    (tmp_path / "cut.png").write_bytes(png.read_bytes()[:-200])
    assert check_image(str(tmp_path / "cut.png"))["truncated"]
    # quality proxies at reduce 2 and 4 agree on brightness (a resolution-free measure)
    assert check_image(str(png), reduce=4)["brightness"] == pytest.approx(whole["brightness"], abs=1.0)


def test_density_classes_and_clark_evans_on_point_patterns():
    rng = np.random.default_rng(0)
    W = H = 1000.0
    grid = np.stack(np.meshgrid(np.arange(50, 1000, 100), np.arange(50, 1000, 100)), -1).reshape(-1, 2)
    clump = rng.normal(500, 15, size=(40, 2))
    pats = {"grid": grid.astype(float), "clump": clump, "many": rng.uniform(0, 1000, size=(150, 2)),
            "few": clump[:5]}
    objs = pd.concat([pd.DataFrame({"image_id": k, "x1": p[:, 0] - 5, "x2": p[:, 0] + 5,
                                    "y1": p[:, 1] - 5, "y2": p[:, 1] + 5}) for k, p in pats.items()])
    images = pd.DataFrame({"image_id": list(pats) + ["none", "blank"], "width": W, "height": H})
    ce = clark_evans(objs, images, min_objects=10)
    assert ce["grid"] > 1.8 and ce["clump"] < 0.3 and 0.8 < ce["many"] < 1.2 and np.isnan(ce["few"])
    n = pd.Series([100, 40, 150, 5, 0, 0], index=ce.index)
    state = pd.Series(["labelled"] * 4 + ["unlabelled", "empty"], index=ce.index)
    got = density_class(n, state, ce, AuditSettings())
    assert got.tolist() == ["sparse", "clustered", "dense", "sparse", "unlabelled", "empty"]


def test_duplicate_boxes_hand_computed():
    objs = pd.DataFrame({"image_id": ["a"] * 4 + ["b"] * 2, "line": [1, 2, 3, 4, 1, 2],
                         "class_id": [0, 0, 1, 0, 0, 0], "class": ["x", "x", "y", "x", "x", "x"],
                         "x1": [0, 0, 0, 50, 0, 0], "y1": [0, 0, 0, 50, 0, 0],
                         "x2": [10, 10, 10, 60, 10, 10], "y2": [10, 9.5, 10, 60, 10, 5],
                         "w": 1.0, "h": 1.0})
    d = duplicate_boxes(objs, iou=0.9)
    # a: lines 1/2 IoU 0.95 (same class); line 3 is another class; b: IoU 0.5
    assert d[["image_id", "line_a", "line_b"]].values.tolist() == [["a", 1, 2]]
    assert d["iou"].iat[0] == pytest.approx(0.95)


def test_bad_settings_are_rejected(bccd_canonical):
    for kwargs, msg in [({"dup_iou": 0}, "dup_iou"), ({"reduce": 3}, "reduce must be one of"),
                        ({"tiny_box_px": -1}, "tiny_box_px"), ({"cluster_min_objects": 1}, "cluster_min")]:
        with pytest.raises(ValueError, match=msg):
            audit_dataset(bccd_canonical, **kwargs)
    with pytest.raises(FileNotFoundError, match="no meta.csv"):
        audit_dataset(bccd_canonical / "images")


@pytest.mark.skipif(importlib.util.find_spec("workbench.data.importers.imagescope") is None,
                    reason="the MoNuSeg importer is not in this checkout")
@pytest.mark.slow
def test_monuseg_tiles_are_dense_and_counts_match_the_import(tmp_path):
    root = convert(MONUSEG, "monuseg", tmp_path / "monuseg")
    result = audit_dataset(root, workers=1)
    meta = pd.read_csv(root / "meta.csv")
    assert result.summary()["objects"] == int(meta["n_objects"].sum()) > 0
    assert set(result.images["density"]) == {"dense"}  # 294-472 nuclei per tile
    assert (result.images["colourfulness"] > 20).all()  # H&E colour


@pytest.mark.skipif(importlib.util.find_spec("workbench.data.importers.masks") is None,
                    reason="the masks importer (MNFinder format) is not in this checkout")
@pytest.mark.slow
def test_mnfinder_grey_16bit_sources_and_tiny_micronuclei(tmp_path):
    root = convert(MNFINDER, "masks", tmp_path / "mnfinder")
    result = audit_dataset(root, workers=1)
    im = result.images
    assert im["grey"].all() and (im["colourfulness"] == 0).all()
    assert set(im["bit_depth"]) >= {16}  # meta records the source depth; the file is 8-bit PNG
    assert set(im["file_mode"]) == {"L"}
    tiny = result.problems[result.problems["kind"] == "tiny_box"]
    # mostly micronuclei (median 5x5 px); a few nuclei cut by the image border
    assert len(tiny) > 50 and tiny["detail"].str.startswith("mn ").mean() > 0.9
    assert result.tables["box_sizes"].set_index("class").loc["mn", "width_median"] < 8
