"""YOLO, COCO, labelme and Label Studio importers on real BCCD annotations.

Each format is written here straight from the BCCD VOC XML (not with the exporters), so the
importers are checked against the VOC importer independently; bad inputs are real files
with one defect each.
"""
from __future__ import annotations

import base64
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from _formats import SUBSET, assert_same_boxes, copy_voc_subset
from workbench.data.canonical import load_dataset
from workbench.data.importers import convert, read_raw

W, H = 640, 480  # every BCCD image
NAMES = ["Platelets", "RBC", "WBC"]  # the VOC import's class order (sorted)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return copy_voc_subset(tmp_path_factory.mktemp("fmt") / "voc")


@pytest.fixture(scope="module")
def voc_ds(voc, tmp_path_factory):
    return load_dataset(convert(voc, "voc", tmp_path_factory.mktemp("fmt_canon") / "c"))


def boxes(voc: Path, image_id: str) -> list[tuple[str, float, float, float, float]]:
    root = ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot()
    return [(o.findtext("name"), *(float(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")))
            for o in root.iter("object")]


def split_of(voc: Path) -> dict[str, str]:
    return {i: s for s in ("train", "val")
            for i in (voc / "ImageSets" / "Main" / f"{s}.txt").read_text().split()}


def yolo_line(cls: str, x1: float, y1: float, x2: float, y2: float) -> str:
    return f"{NAMES.index(cls)} {(x1 + x2) / 2 / W:.6f} {(y1 + y2) / 2 / H:.6f} {(x2 - x1) / W:.6f} {(y2 - y1) / H:.6f}"


def make_yolo(voc: Path, dest: Path, *, layout: str = "ultralytics") -> Path:
    """``ultralytics``: images/<split>/, labels/<split>/; ``roboflow``: <split>/images, <split>/labels."""
    for image_id, split in split_of(voc).items():
        folder = "valid" if (layout == "roboflow" and split == "val") else split
        img = dest / ("images" if layout == "ultralytics" else folder) / (folder if layout == "ultralytics" else "images")
        lab = dest / ("labels" if layout == "ultralytics" else folder) / (folder if layout == "ultralytics" else "labels")
        img.mkdir(parents=True, exist_ok=True)
        lab.mkdir(parents=True, exist_ok=True)
        shutil.copy(voc / "JPEGImages" / f"{image_id}.jpg", img)
        (lab / f"{image_id}.txt").write_text("".join(yolo_line(*b) + "\n" for b in boxes(voc, image_id)))
    return dest


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def problems_of(ds, kind: str) -> pd.DataFrame:
    return ds.problems[ds.problems["kind"] == kind]


# ----------------------------------------------------------------------------- YOLO

@pytest.mark.slow
def test_yolo_ultralytics_layout_matches_voc(voc, voc_ds, tmp_path):
    make_yolo(voc, tmp_path / "y")
    write_yaml(tmp_path / "y" / "data.yaml", {"path": ".", "train": "images/train", "val": "images/val",
                                              "names": NAMES})
    ds = load_dataset(convert(tmp_path / "y", "yolo", tmp_path / "c"))
    assert assert_same_boxes(voc_ds, ds) == len(voc_ds.objects)
    assert set(ds.images["image_id"]) == set(SUBSET)
    assert ds.images.set_index("image_id")["split"].to_dict() == split_of(voc)  # official split
    assert ds.info["split_source"] == "official" and len(ds.problems) == len(voc_ds.problems)


@pytest.mark.slow
def test_yolo_txt_lists_dict_names_and_a_path_from_another_machine(voc, voc_ds, tmp_path):
    make_yolo(voc, tmp_path / "y")
    for split in ("train", "val"):
        files = sorted((tmp_path / "y" / "images" / split).glob("*.jpg"))
        (tmp_path / "y" / f"{split}.txt").write_text("".join(f"./images/{split}/{f.name}\n" for f in files))
    yml = write_yaml(tmp_path / "y" / "dataset.yaml", {
        "path": "/home/someone/datasets/bccd", "train": "train.txt", "val": ["val.txt"],
        "nc": 3, "names": {0: "Platelets", 1: "RBC", 2: "WBC"}})
    ds = load_dataset(convert(yml, "yolo", tmp_path / "c"))
    assert_same_boxes(voc_ds, ds)
    assert ds.images.set_index("image_id")["split"].to_dict() == split_of(voc)
    warn = problems_of(ds, "missing_dataset_path")
    assert len(warn) == 1 and "/home/someone/datasets/bccd" in warn["detail"].iloc[0]


@pytest.mark.slow
def test_yolo_roboflow_layout_with_and_without_yaml(voc, voc_ds, tmp_path):
    make_yolo(voc, tmp_path / "rf", layout="roboflow")
    # Roboflow writes "../train/images" relative to a parent folder; ultralytics retries without "../"
    yml = write_yaml(tmp_path / "rf" / "data.yaml", {"train": "../train/images", "val": "../valid/images",
                                                     "nc": 3, "names": NAMES})
    ds = load_dataset(convert(yml, "yolo", tmp_path / "c"))
    assert_same_boxes(voc_ds, ds)
    assert ds.images.set_index("image_id")["split"].to_dict() == split_of(voc)  # valid -> val

    yml.unlink()  # no names anywhere: classes are named by id, with a warning
    raw = read_raw(tmp_path / "rf", "yolo")
    assert raw.classes == ["0", "1", "2"]
    assert [p.kind for p in raw.problems] == ["no_class_names"]
    assert {im.meta["split"] for im in raw.images} == {"train", "val"}


@pytest.mark.slow
def test_yolo_side_by_side_folder_with_classes_txt(voc, voc_ds, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for image_id in SUBSET:
        shutil.copy(voc / "JPEGImages" / f"{image_id}.jpg", flat)
        (flat / f"{image_id}.txt").write_text("\n".join(yolo_line(*b) for b in boxes(voc, image_id)))
    (flat / "classes.txt").write_text("\n".join(NAMES) + "\n")
    ds = load_dataset(convert(flat, "yolo", tmp_path / "c"))
    assert_same_boxes(voc_ds, ds)
    assert ds.images["split"].eq("").all() and not problems_of(ds, "missing_image").size


@pytest.mark.slow
def test_yolo_empty_label_file_is_not_a_missing_one(voc, tmp_path):
    y = make_yolo(voc, tmp_path / "y")
    write_yaml(y / "data.yaml", {"train": "images/train", "val": "images/val", "names": NAMES})
    empty, gone = sorted((y / "labels" / "train").glob("*.txt"))[:2]
    empty.write_text("")
    gone.unlink()
    ds = load_dataset(convert(y, "yolo", tmp_path / "c"))
    meta = ds.images.set_index("image_id")
    assert meta.loc[empty.stem, "labelled"] and meta.loc[empty.stem, "n_objects"] == 0
    assert not meta.loc[gone.stem, "labelled"] and meta.loc[gone.stem, "label_file"] == ""
    e, m = problems_of(ds, "empty_label_file"), problems_of(ds, "missing_label_file")
    assert len(e) == 1 and e["file"].iloc[0].endswith(f"labels/train/{empty.name}") and e["severity"].iloc[0] == "info"
    assert len(m) == 1 and m["file"].iloc[0].endswith(f"images/train/{gone.stem}.jpg")
    assert (ds.root / "labels" / f"{empty.stem}.txt").read_text() == ""


@pytest.mark.slow
def test_yolo_bad_lines_are_recorded_with_file_and_line(voc, tmp_path):
    y = make_yolo(voc, tmp_path / "y")
    write_yaml(y / "data.yaml", {"train": "images/train", "val": "images/val", "names": NAMES})
    label = sorted((y / "labels" / "val").glob("*.txt"))[0]
    n = len(label.read_text().splitlines())
    label.write_text(label.read_text()
                     + "7 0.5 0.5 0.1 0.1\n"      # class id out of range
                     + "1 0.5 abc 0.1 0.1\n"      # malformed
                     + "1 0.98 0.5 0.1 0.1\n"     # right edge at 1.03: clipped
                     + "0 0.1 0.1 0.2 0.1 0.15 0.2\n")  # segment line: a triangle
    ghost = y / "labels" / "val" / "BloodImage_99999.txt"
    ghost.write_text("1 0.5 0.5 0.1 0.1\n")
    ds = load_dataset(convert(y, "yolo", tmp_path / "c"))
    by_kind = ds.problems.set_index("kind")
    assert by_kind.loc["unknown_class", "object"] == f"line {n + 1}"
    assert by_kind.loc["unknown_class", "file"] == str(label) and "class id 7" in by_kind.loc["unknown_class", "detail"]
    assert by_kind.loc["malformed_label_line", "object"] == f"line {n + 2}"
    assert by_kind.loc["malformed_label_line", "file"] == str(label)
    assert by_kind.loc["box_out_of_bounds", "object"] == f"line {n + 3}"
    assert by_kind.loc["box_out_of_bounds", "action"] == "clipped to the image"
    assert by_kind.loc["missing_image", "file"] == str(ghost)
    objs = pd.read_csv(ds.root / "objects.csv", keep_default_na=False)
    mine = objs[objs["image_id"] == label.stem]
    assert len(mine) == n + 2  # the good lines, the clipped box and the segment
    clipped = mine[mine["source_object"] == f"line {n + 3}"].iloc[0]
    assert clipped["x2"] == W and clipped["x1"] == pytest.approx(0.93 * W)
    seg = mine[mine["source_object"] == f"line {n + 4}"].iloc[0]
    assert [seg.x1, seg.y1, seg.x2, seg.y2] == pytest.approx([0.1 * W, 0.1 * H, 0.2 * W, 0.2 * H])
    assert np.allclose(json.loads(seg["polygon"]), [[64, 48], [128, 48], [96, 96]])


# ----------------------------------------------------------------------------- COCO

def make_coco(voc: Path, dest: Path, cat_ids: dict[str, int]) -> dict:
    images, anns = [], []
    for k, image_id in enumerate(SUBSET, 100):
        images.append({"id": k, "file_name": f"{image_id}.jpg", "width": W, "height": H})
        for name, x1, y1, x2, y2 in boxes(voc, image_id):
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": cat_ids[name],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                         "segmentation": []})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": i, "name": n, "supercategory": "cell"} for n, i in cat_ids.items()]}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(doc))
    return doc


@pytest.mark.slow
def test_coco_matches_voc_with_images_elsewhere(voc, voc_ds, tmp_path):
    js = tmp_path / "ann" / "instances.json"
    make_coco(voc, js, {"Platelets": 7, "RBC": 3, "WBC": 5})
    raw = read_raw(tmp_path / "ann", "coco", images=voc / "JPEGImages")
    assert raw.classes == ["RBC", "WBC", "Platelets"]  # category id order
    ds = load_dataset(convert(js, "coco", tmp_path / "c", classes=NAMES, images=voc / "JPEGImages"))
    assert assert_same_boxes(voc_ds, ds) == len(voc_ds.objects)
    assert set(ds.images["image_id"]) == set(SUBSET)


@pytest.mark.slow
def test_coco_bad_references_are_named(voc, tmp_path):
    js = tmp_path / "coco.json"
    doc = make_coco(voc, js, {"Platelets": 1, "RBC": 2, "WBC": 3})
    for im in SUBSET:
        shutil.copy(voc / "JPEGImages" / f"{im}.jpg", tmp_path)
    n = len(doc["annotations"])
    doc["annotations"][0]["category_id"] = 99
    doc["annotations"][1]["image_id"] = 999
    doc["annotations"][2]["iscrowd"] = 1
    x, y, w, h = doc["annotations"][3]["bbox"]
    doc["annotations"][3]["segmentation"] = [[x, y, x + w, y, x + w / 2, y + h]]
    doc["images"].append({"id": 5000, "file_name": "BloodImage_99999.jpg", "width": W, "height": H})
    doc["images"][1]["width"] = 641
    js.write_text(json.dumps(doc))
    ds = load_dataset(convert(js, "coco", tmp_path / "c"))
    p = ds.problems.set_index("kind")
    assert p.loc["unknown_category_id", "object"] == "annotation id 1" and "99" in p.loc["unknown_category_id", "detail"]
    assert p.loc["unknown_image_id", "object"] == "annotation id 2" and "999" in p.loc["unknown_image_id", "detail"]
    assert p.loc["crowd_annotation", "object"] == "annotation id 3"
    assert p.loc["missing_image", "object"] == "image id 5000" and "BloodImage_99999.jpg" in p.loc["missing_image", "detail"]
    assert "641x480" in p.loc["size_mismatch", "detail"]
    assert all(p.loc[k, "file"] == str(js) for k in ("unknown_category_id", "unknown_image_id", "missing_image"))
    assert len(ds.objects) == n - 3 and len(ds.images) == 30
    poly = pd.read_csv(ds.root / "objects.csv", keep_default_na=False).set_index("source_object")["polygon"]
    assert len(json.loads(poly["annotation id 4"])) == 3


def test_coco_folder_must_hold_one_json(voc, tmp_path):
    make_coco(voc, tmp_path / "a.json", {"RBC": 1, "WBC": 2, "Platelets": 3})
    shutil.copy(tmp_path / "a.json", tmp_path / "b.json")
    with pytest.raises(ValueError, match=r"2 \.json files \(a\.json, b\.json\)"):
        read_raw(tmp_path, "coco")


# ----------------------------------------------------------------------------- labelme

def labelme_doc(voc: Path, image_id: str, image_path: str, *, data: bool = False) -> dict:
    shapes = [{"label": n, "points": [[x1, y1], [x2, y2]], "group_id": None, "description": "",
               "shape_type": "rectangle", "flags": {}} for n, x1, y1, x2, y2 in boxes(voc, image_id)]
    img = voc / "JPEGImages" / f"{image_id}.jpg"
    return {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": image_path,
            "imageData": base64.b64encode(img.read_bytes()).decode() if data else None,
            "imageHeight": H, "imageWidth": W}


@pytest.mark.slow
def test_labelme_matches_voc(voc, voc_ds, tmp_path):
    folder = voc.parent / "labelme_json"  # beside the VOC tree: imagePath "../voc/JPEGImages/x.jpg"
    folder.mkdir(exist_ok=True)
    for image_id in SUBSET:
        # labelme on Windows writes backslashes
        doc = labelme_doc(voc, image_id, f"..\\voc\\JPEGImages\\{image_id}.jpg")
        (folder / f"{image_id}.json").write_text(json.dumps(doc))
    (folder / "notes.json").write_text(json.dumps({"comment": "not an annotation"}))
    ds = load_dataset(convert(folder, "labelme", tmp_path / "c"))
    assert assert_same_boxes(voc_ds, ds) == len(voc_ds.objects)
    assert ds.images["source_image"].str.contains("JPEGImages").all()
    assert problems_of(ds, "not_labelme")["file"].str.endswith("notes.json").all()
    shutil.rmtree(folder)


def test_labelme_with_only_image_data(voc, voc_ds, tmp_path):
    for image_id in SUBSET[:5]:
        doc = labelme_doc(voc, image_id, f"C:/Users/someone/Desktop/{image_id}.jpg", data=True)
        (tmp_path / "lm").mkdir(exist_ok=True)
        (tmp_path / "lm" / f"{image_id}.json").write_text(json.dumps(doc))
    ds = load_dataset(convert(tmp_path / "lm", "labelme", tmp_path / "c"))
    assert len(ds.images) == 5 and (ds.images["source_image"] == "(embedded)").all()
    ref = voc_ds.images.set_index("image_id")["pixel_sha256"]
    assert (ds.images.set_index("image_id")["pixel_sha256"] == ref.reindex(ds.images["image_id"])).all()
    assert assert_same_boxes(voc_ds, ds, ids=set(SUBSET[:5])) > 20
    assert len(problems_of(ds, "embedded_image")) == 5


def test_labelme_shape_types(voc, tmp_path):
    image_id = SUBSET[1]
    doc = labelme_doc(voc, image_id, f"../voc/JPEGImages/{image_id}.jpg")
    doc["shapes"] = [
        {"label": "RBC", "shape_type": "polygon", "points": [[10, 20], [50, 25], [30, 60]]},
        {"label": "WBC", "shape_type": "circle", "points": [[100, 100], [130, 140]]},  # r = 50
        {"label": "RBC", "shape_type": "linestrip", "points": [[200, 200], [220, 260], [250, 210]]},
        {"label": "Platelets", "shape_type": "point", "points": [[300, 300]]},
        {"label": "", "shape_type": "rectangle", "points": [[1, 1], [5, 5]]},
    ]
    folder = voc.parent / "lm_shapes"
    folder.mkdir()
    (folder / f"{image_id}.json").write_text(json.dumps(doc))
    raw = read_raw(folder, "labelme")
    got = [(o.cls, o.x1, o.y1, o.x2, o.y2) for o in raw.images[0].objects]
    assert got == [("RBC", 10, 20, 50, 60), ("WBC", 50, 50, 150, 150), ("RBC", 200, 200, 250, 260)]
    assert raw.images[0].objects[0].polygon == [(10, 20), (50, 25), (30, 60)]
    assert raw.images[0].image_path == voc / "JPEGImages" / f"{image_id}.jpg"
    kinds = {(p.kind, p.object) for p in raw.problems}
    assert kinds == {("point_shape", "shape 4 (Platelets)"), ("missing_class", "shape 5 (no label)")}
    shutil.rmtree(folder)


# ----------------------------------------------------------------------------- Label Studio

def ls_result(name: str, x1: float, y1: float, x2: float, y2: float, rid: str) -> dict:
    return {"id": rid, "type": "rectanglelabels", "from_name": "label", "to_name": "image",
            "original_width": W, "original_height": H, "image_rotation": 0, "origin": "manual",
            "value": {"x": x1 / W * 100, "y": y1 / H * 100, "width": (x2 - x1) / W * 100,
                      "height": (y2 - y1) / H * 100, "rotation": 0, "rectanglelabels": [name]}}


def make_labelstudio(voc: Path, dest: Path) -> list[dict]:
    """A Label Studio JSON export of the subset: uploaded files, one annotation per task,
    plus the history real projects have (an older and a cancelled annotation)."""
    tasks = []
    for k, image_id in enumerate(SUBSET, 1):
        upload = f"{k:08x}-{image_id}.jpg"  # Label Studio's upload prefix: 8 hex digits
        result = [ls_result(*b, rid=f"r{k}_{j}") for j, b in enumerate(boxes(voc, image_id))]
        ann = {"id": 1000 + k, "completed_by": 1, "result": result, "was_cancelled": False,
               "ground_truth": False, "created_at": "2024-05-02T10:00:00.000000Z",
               "updated_at": "2024-05-02T10:05:00.000000Z", "task": k, "project": 3}
        anns = [ann]
        if k == 1:  # an older, unfinished annotation: the latest one wins
            anns.insert(0, {**ann, "id": 1, "result": result[:1], "updated_at": "2024-05-01T09:00:00.000000Z"})
        if k == 2:  # a newer but cancelled annotation is ignored
            anns.append({**ann, "id": 2, "result": [], "was_cancelled": True,
                         "updated_at": "2024-06-01T09:00:00.000000Z"})
        tasks.append({"id": k, "annotations": anns, "file_upload": upload, "drafts": [], "predictions": [],
                      "data": {"image": f"/data/upload/3/{upload}"}, "meta": {},
                      "created_at": "2024-05-01T08:00:00.000000Z", "project": 3})
    dest.write_text(json.dumps(tasks, indent=1))
    return tasks


@pytest.mark.slow
def test_labelstudio_export_matches_voc(voc, voc_ds, tmp_path):
    js = tmp_path / "project-3-at-2024-05-02.json"
    make_labelstudio(voc, js)
    ds = load_dataset(convert(js, "labelstudio", tmp_path / "c", classes=NAMES, images=voc / "JPEGImages"))
    assert set(ds.images["image_id"]) == set(SUBSET)  # upload prefixes stripped
    assert assert_same_boxes(voc_ds, ds, tol=0.01) == len(voc_ds.objects)
    info = problems_of(ds, "several_annotations")
    assert list(info["object"]) == ["task 1"] and "annotation id 1001" in info["action"].iloc[0]
    assert not ds.problems["severity"].eq("error").any()


def test_labelstudio_rotation_polygons_local_files_and_missing_images(voc, tmp_path):
    tasks = make_labelstudio(voc, tmp_path / "x.json")[:3]
    rot = ls_result("WBC", 64, 48, 128, 96, "rot")
    rot["value"]["rotation"] = 90  # clockwise about the top-left corner (64, 48)
    poly = {"id": "poly", "type": "polygonlabels", "original_width": W, "original_height": H,
            "value": {"points": [[10, 10], [20, 10], [15, 30]], "polygonlabels": ["RBC"]}}
    tasks[0]["annotations"][-1]["result"] = [rot, poly]
    tasks[0]["data"]["image"] = f"/data/local-files/?d=bccd%2FJPEGImages%2F{SUBSET[0]}.jpg"
    tasks[1]["data"]["image"] = tasks[1]["file_upload"] = "/data/upload/3/0badf00d-BloodImage_99999.jpg"
    tasks[2]["annotations"] = [{**tasks[2]["annotations"][0], "was_cancelled": True}]
    js = tmp_path / "export.json"
    js.write_text(json.dumps(tasks))
    raw = read_raw(js, "labelstudio", images=voc / "JPEGImages")
    assert [im.image_id for im in raw.images] == [SUBSET[0], SUBSET[2]]
    r, p = raw.images[0].objects
    assert (r.cls, r.x1, r.y1, r.x2, r.y2) == pytest.approx(("WBC", 16, 48, 64, 112))
    assert (p.cls, p.x1, p.y1, p.x2, p.y2) == pytest.approx(("RBC", 64, 48, 128, 144))
    assert np.allclose(p.polygon, [(64, 48), (128, 48), (96, 144)])
    assert raw.images[1].objects is None  # every annotation cancelled: not labelled
    kinds = {p.kind: p for p in raw.problems}
    assert kinds["rotated_box"].object == "task 1 result rot" and kinds["rotated_box"].severity == "warning"
    assert kinds["missing_image"].object == "task 2" and "BloodImage_99999" in kinds["missing_image"].detail
    assert kinds["cancelled_annotations"].object == "task 3"
