"""Exporters: canonical (real BCCD / MoNuSeg) -> YOLO / COCO / labelme -> import -> same data."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from _formats import SUBSET, assert_same_boxes, copy_voc_subset, labelled_ids, raw_as_dataset
from conftest import MONUSEG, checksums
from workbench.data.canonical import load_dataset
from workbench.data.exporters import ExportResult, export, export_coco, export_labelme, export_yolo
from workbench.data.importers import convert, read_raw

UNLABELLED = SUBSET[0]  # copied without its XML: an image nobody annotated


@pytest.fixture(scope="module")
def canon(tmp_path_factory) -> Path:
    """30 real BCCD images (official train/val split), one of them unlabelled."""
    tmp = tmp_path_factory.mktemp("export")
    voc = copy_voc_subset(tmp / "voc", drop_xml=(UNLABELLED,))
    return convert(voc, "voc", tmp / "canon")


@pytest.fixture(scope="module")
def canon_ds(canon):
    return load_dataset(canon)


@pytest.mark.slow
def test_yolo_round_trip_keeps_boxes_splits_and_unlabelled(canon, canon_ds, tmp_path):
    before = checksums(canon)
    res = export_yolo(canon, tmp_path / "yolo")
    assert isinstance(res, ExportResult) and res.images == 30 and res.objects == len(canon_ds.objects)
    doc = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert doc["names"] == {0: "Platelets", 1: "RBC", 2: "WBC"} and doc["nc"] == 3
    assert doc["train"] == "images/train" and doc["val"] == "images/val" and "path" not in doc
    n_train = int(canon_ds.images["split"].eq("train").sum())
    assert len(list((tmp_path / "yolo" / "images" / "train").iterdir())) == n_train
    # the unlabelled image has no label file (YOLO's "not labelled"), the others have one
    assert len(list((tmp_path / "yolo" / "labels").rglob("*.txt"))) == 29

    back = load_dataset(convert(tmp_path / "yolo" / "data.yaml", "yolo", tmp_path / "back"))
    assert set(back.images["image_id"]) == set(canon_ds.images["image_id"])
    assert assert_same_boxes(canon_ds, back) == len(canon_ds.objects) > 300
    split_a = canon_ds.images.set_index("image_id")["split"]
    split_b = back.images.set_index("image_id")["split"]
    assert split_b.reindex(split_a.index).tolist() == split_a.tolist()
    assert labelled_ids(back) == labelled_ids(canon_ds) == set(SUBSET) - {UNLABELLED}
    missing = back.problems[back.problems["kind"] == "missing_label_file"]
    assert len(missing) == 1 and UNLABELLED in missing["file"].iloc[0]
    # no rounding noise at the image border turned into warnings
    assert not back.problems["kind"].isin(["box_out_of_bounds", "unknown_class"]).any()
    assert checksums(canon) == before  # never writes into the source


@pytest.mark.slow
def test_yolo_flat_export_without_split_folders(canon, canon_ds, tmp_path):
    export_yolo(canon, tmp_path / "flat", split_folders=False)
    doc = yaml.safe_load((tmp_path / "flat" / "data.yaml").read_text())
    assert doc["train"] == doc["val"] == "images"
    assert len(list((tmp_path / "flat" / "images").glob("*.jpg"))) == 30
    back = load_dataset(convert(tmp_path / "flat", "yolo", tmp_path / "back"))
    assert back.images["split"].eq("").all()  # train == val: no official split
    assert "no_official_split" in set(back.problems["kind"])
    assert_same_boxes(canon_ds, back)


@pytest.mark.slow
def test_coco_round_trip_and_pycocotools_reads_it(canon, canon_ds, tmp_path):
    out = tmp_path / "coco" / "annotations.json"
    res = export_coco(canon, out)
    assert res.images == 29 and any("unlabelled" in n for n in res.notes)
    from pycocotools.coco import COCO

    coco = COCO(str(out))
    assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == canon_ds.classes
    assert sorted(coco.getCatIds()) == [1, 2, 3]
    assert len(coco.getAnnIds()) == len(canon_ds.objects)
    ann = coco.loadAnns([1])[0]
    assert ann["iscrowd"] == 0 and ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3], abs=0.01)

    back = load_dataset(convert(out, "coco", tmp_path / "back"))
    assert set(back.images["image_id"]) == labelled_ids(canon_ds)
    assert assert_same_boxes(canon_ds, back, ids=labelled_ids(canon_ds)) == len(canon_ds.objects)
    assert not back.problems["severity"].eq("error").any()


def test_coco_export_of_one_split(canon, canon_ds, tmp_path):
    export_coco(canon, tmp_path / "val.json", split="val")
    doc = json.loads((tmp_path / "val.json").read_text())
    val = canon_ds.images[(canon_ds.images["split"] == "val") & (canon_ds.images["image_id"] != UNLABELLED)]
    assert {Path(im["file_name"]).name for im in doc["images"]} == {Path(f).name for f in val["file"]}
    with pytest.raises(ValueError, match="no images in split 'test'"):
        export_coco(canon, tmp_path / "test.json", split="test")


@pytest.mark.slow
def test_labelme_round_trip(canon, canon_ds, tmp_path):
    res = export_labelme(canon, tmp_path / "lm")
    files = sorted((tmp_path / "lm").glob("*.json"))
    assert res.images == len(files) == 29  # the unlabelled image gets no JSON
    doc = json.loads(files[0].read_text())
    assert doc["imageData"] is None and not Path(doc["imagePath"]).is_absolute()
    assert (files[0].parent / doc["imagePath"]).is_file()
    assert {s["shape_type"] for s in doc["shapes"]} == {"rectangle"}

    back = load_dataset(convert(tmp_path / "lm", "labelme", tmp_path / "back"))
    assert set(back.images["image_id"]) == labelled_ids(canon_ds)
    assert_same_boxes(canon_ds, back, ids=labelled_ids(canon_ds))
    assert not back.problems["kind"].isin(["size_mismatch", "box_out_of_bounds"]).any()


@pytest.mark.slow
def test_labelme_with_embedded_images_stands_alone(canon, canon_ds, tmp_path):
    export_labelme(canon, tmp_path / "lm", image_data=True)
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "lm", moved)  # imagePath no longer resolves from here
    for f in moved.glob("*.json"):
        doc = json.loads(f.read_text())
        doc["imagePath"] = "../gone/" + Path(doc["imagePath"]).name
        f.write_text(json.dumps(doc))
    back = load_dataset(convert(moved, "labelme", tmp_path / "back"))
    assert (back.images["source_image"] == "(embedded)").all()
    px_a = canon_ds.images.set_index("image_id")["pixel_sha256"]
    px_b = back.images.set_index("image_id")["pixel_sha256"]
    assert (px_b == px_a.reindex(px_b.index)).all()  # the very same pixels
    assert_same_boxes(canon_ds, back, ids=labelled_ids(canon_ds))


@pytest.mark.slow
def test_all_of_bccd_round_trips_through_every_format(bccd_canonical, tmp_path):
    ds = load_dataset(bccd_canonical)
    assert len(ds.images) == 292 and len(ds.objects) == 3943
    targets = {"yolo": tmp_path / "y", "coco": tmp_path / "c.json", "labelme": tmp_path / "lm"}
    for fmt, out in targets.items():
        export(bccd_canonical, fmt, out)
        raw = read_raw(out, fmt)  # parsing only: write_canonical is checked on the subset above
        assert not raw.problems.errors, fmt
        back = raw_as_dataset(raw)
        assert len(back.images) == 292, fmt
        assert back.objects["class"].value_counts().to_dict() == {"RBC": 3350, "WBC": 301, "Platelets": 292}
        assert assert_same_boxes(ds, back) == 3943


@pytest.mark.skipif(importlib.util.find_spec("workbench.data.importers.imagescope") is None,
                    reason="the ImageScope (MoNuSeg) importer is not in this checkout yet")
@pytest.mark.slow
def test_monuseg_polygons_survive_coco_and_boxes_survive_yolo(tmp_path):
    canon = convert(MONUSEG, "monuseg", tmp_path / "canon")
    ds = load_dataset(canon)
    assert len(ds.images) == 3 and len(ds.objects) > 500
    export_coco(canon, tmp_path / "m.json")
    doc = json.loads((tmp_path / "m.json").read_text())
    with_seg = [a for a in doc["annotations"] if a["segmentation"]]
    assert len(with_seg) == len(doc["annotations"])  # every nucleus keeps its outline
    back = load_dataset(convert(tmp_path / "m.json", "coco", tmp_path / "back"))
    assert assert_same_boxes(ds, back) == len(ds.objects)
    poly = pd.read_csv(back.root / "objects.csv", keep_default_na=False)["polygon"]
    assert len(poly) == len(ds.objects) and poly.ne("").all()  # outlines re-imported too

    export_yolo(canon, tmp_path / "y")
    back_y = load_dataset(convert(tmp_path / "y", "yolo", tmp_path / "back_y"))
    assert assert_same_boxes(ds, back_y) == len(ds.objects)


def test_export_refuses_unsafe_targets(canon, tmp_path):
    with pytest.raises(ValueError, match="outside the source dataset"):
        export_yolo(canon, canon / "export")
    with pytest.raises(ValueError, match="outside the source dataset"):
        export_coco(canon, canon / "a.json")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="full"):
        export_labelme(canon, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(FileExistsError, match="a.json"):
        export_coco(canon, tmp_path / "a.json")
    with pytest.raises(ValueError, match="unknown export format 'voc'"):
        export(canon, "voc", tmp_path / "v")


def test_export_refuses_broken_labels_naming_file_and_line(canon, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(canon, broken)
    label = sorted((broken / "labels").glob("*.txt"))[3]
    label.write_text(label.read_text() + "1 0.5 oops 0.1 0.1\n9 0.5 0.5 0.1 0.1\n")
    n = len(label.read_text().splitlines())
    with pytest.raises(ValueError) as exc:
        export_yolo(broken, tmp_path / "out")
    msg = str(exc.value)
    assert f"labels/{label.name}" in msg and f"line {n - 1}" in msg  # the malformed line
    assert "class id 9" in msg and label.stem in msg  # and the unknown class id
    assert not (tmp_path / "out").exists()


def test_ultralytics_reads_the_yolo_export(canon, canon_ds, tmp_path):
    export_yolo(canon, tmp_path / "yolo")
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(tmp_path / "yolo" / "data.yaml"))
    assert data["names"] == dict(enumerate(canon_ds.classes))
    val = YOLODataset(img_path=data["val"], data=data, task="detect", augment=False, imgsz=160)
    n_val = canon_ds.objects["image_id"].isin(canon_ds.images.loc[canon_ds.images["split"] == "val", "image_id"])
    assert sum(len(lb["cls"]) for lb in val.labels) == int(n_val.sum()) > 0
