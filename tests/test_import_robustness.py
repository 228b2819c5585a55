"""Inputs that used to import wrong without a word (issue 16, items 3, 4 and 8-11), on copies of
the vendored real data made bad on purpose.

Each test asserts the named problem row (or the error text) and that the raw bytes are
unchanged. Item 7 (duplicates across splits) is in test_split_stability.py, items 5 and 6
(where and how ``convert`` writes) in test_output_safety.py, item 2 (EXIF) in test_import_exif.py.
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
from PIL import Image

from conftest import BCCD, MNFINDER, MONUSEG, checksums
from workbench.data.canonical import load_dataset, read_meta
from workbench.data.exporters import export_coco, export_labelme
from workbench.data.importers import convert

IDS = sorted(p.stem for p in (BCCD / "Annotations").glob("*.xml"))[:6]
W, H = 640, 480
NAMES = ["Platelets", "RBC", "WBC"]


def voc_copy(dest: Path, ids: list[str] = IDS) -> Path:
    (dest / "Annotations").mkdir(parents=True)
    (dest / "JPEGImages").mkdir()
    for i in ids:
        shutil.copy(BCCD / "Annotations" / f"{i}.xml", dest / "Annotations")
        shutil.copy(BCCD / "JPEGImages" / f"{i}.jpg", dest / "JPEGImages")
    return dest


def xml_objects(xml: Path) -> list[tuple[str, float, float, float, float]]:
    root = ET.parse(xml).getroot()
    return [(o.findtext("name"), *(float(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")))
            for o in root.iter("object")]


def yolo_copy(dest: Path, ids: list[str] = IDS) -> Path:
    """An ultralytics folder (images/, labels/, data.yaml) written from the BCCD XML."""
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    for i in ids:
        shutil.copy(BCCD / "JPEGImages" / f"{i}.jpg", dest / "images")
        lines = [f"{NAMES.index(c)} {(x1 + x2) / 2 / W:.6f} {(y1 + y2) / 2 / H:.6f} {(x2 - x1) / W:.6f} "
                 f"{(y2 - y1) / H:.6f}" for c, x1, y1, x2, y2 in xml_objects(BCCD / "Annotations" / f"{i}.xml")]
        (dest / "labels" / f"{i}.txt").write_text("\n".join(lines) + "\n")
    (dest / "data.yaml").write_text(yaml.safe_dump({"train": "images", "val": "images", "names": NAMES}))
    return dest


def problems(out: Path, kind: str) -> pd.DataFrame:
    p = load_dataset(out).problems
    return p[p["kind"] == kind]


def meta_row(out: Path, image_id: str) -> pd.Series:
    return read_meta(out).set_index("image_id").loc[image_id]


# ----------------------------------------------------------------------------- 3. VOC

def test_voc_uses_the_file_its_filename_names_not_another_with_the_same_stem(tmp_path):
    src = voc_copy(tmp_path / "voc")
    x = IDS[0]
    Image.open(BCCD / "JPEGImages" / f"{IDS[1]}.jpg").save(src / "JPEGImages" / f"{x}.png")  # another picture
    before = checksums(src)
    out = convert(src, "voc", tmp_path / "out")
    assert checksums(src) == before
    row = meta_row(out, x)
    assert row["source_image"].endswith(f"{x}.jpg")  # the annotated picture, not the lossless namesake
    named = read_meta(convert(voc_copy(tmp_path / "ref", [x]), "voc", tmp_path / "ref_out")).iloc[0]
    assert row["pixel_sha256"] == named["pixel_sha256"]
    note = problems(out, "several_image_formats")
    assert len(note) == 1 and f"{x}.png" in note.iloc[0]["detail"] and f"{x}.jpg" in note.iloc[0]["action"]


def test_voc_filename_that_does_not_exist_falls_back_to_the_stem_with_a_warning(tmp_path):
    src = voc_copy(tmp_path / "voc")
    x = IDS[0]
    jpg = src / "JPEGImages" / f"{x}.jpg"
    Image.open(jpg).save(jpg.with_suffix(".png"))
    jpg.unlink()
    before = checksums(src)
    out = convert(src, "voc", tmp_path / "out")
    assert checksums(src) == before
    row = problems(out, "filename_mismatch")
    assert len(row) == 1 and row.iloc[0]["file"].endswith(f"{x}.xml")
    assert f"{x}.jpg" in row.iloc[0]["detail"] and row.iloc[0]["action"] == f"used {x}.png"


def test_voc_subfolders_are_reported_not_silently_ignored(tmp_path):
    src = voc_copy(tmp_path / "voc", IDS[:4])
    for sub in ("Annotations", "JPEGImages"):
        (src / sub / "batch2").mkdir()
    for i in IDS[4:]:
        shutil.copy(BCCD / "Annotations" / f"{i}.xml", src / "Annotations" / "batch2")
        shutil.copy(BCCD / "JPEGImages" / f"{i}.jpg", src / "JPEGImages" / "batch2")
    before = checksums(src)
    out = convert(src, "voc", tmp_path / "out")
    assert checksums(src) == before and len(read_meta(out)) == 4
    rows = problems(out, "subfolder_not_imported")
    assert sorted(Path(f).parent.name for f in rows["file"]) == ["Annotations", "JPEGImages"]
    assert rows["detail"].str.startswith("2 ").all() and (rows["severity"] == "warning").all()


# ----------------------------------------------------------------------------- 4. labelme

def labelme_json(image_id: str, image_path: str, *, data: bool) -> dict:
    raw = (BCCD / "JPEGImages" / f"{image_id}.jpg").read_bytes()
    return {"version": "5.5.0", "flags": {}, "imagePath": image_path, "imageWidth": W, "imageHeight": H,
            "imageData": base64.b64encode(raw).decode() if data else None,
            "shapes": [{"label": c, "points": [[x1, y1], [x2, y2]], "shape_type": "rectangle", "flags": {}}
                       for c, x1, y1, x2, y2 in xml_objects(BCCD / "Annotations" / f"{image_id}.xml")]}


def test_labelme_embedded_image_wins_over_a_namesake_found_elsewhere(tmp_path):
    src = tmp_path / "lm"
    (src / "elsewhere").mkdir(parents=True)
    x, other = IDS[0], IDS[1]
    shutil.copy(BCCD / "JPEGImages" / f"{other}.jpg", src / "elsewhere" / f"{x}.jpg")  # same name, other picture
    (src / f"{x}.json").write_text(json.dumps(labelme_json(x, f"C:/scans/{x}.jpg", data=True)))
    before = checksums(src)
    out = convert(src, "labelme", tmp_path / "out")
    assert checksums(src) == before
    row = meta_row(out, x)
    assert row["source_image"] == "(embedded)"  # what labelme itself shows
    ref = read_meta(convert(voc_copy(tmp_path / "ref", [x]), "voc", tmp_path / "ref_out")).iloc[0]
    assert row["pixel_sha256"] == ref["pixel_sha256"]
    note = problems(out, "embedded_image")
    assert len(note) == 1 and "elsewhere" in note.iloc[0]["detail"] and note.iloc[0]["severity"] == "warning"


def test_labelme_without_image_data_uses_a_namesake_elsewhere_with_a_warning(tmp_path):
    src = tmp_path / "lm"
    (src / "elsewhere").mkdir(parents=True)
    x = IDS[0]
    shutil.copy(BCCD / "JPEGImages" / f"{x}.jpg", src / "elsewhere")
    (src / f"{x}.json").write_text(json.dumps(labelme_json(x, f"C:/scans/{x}.jpg", data=False)))
    out = convert(src, "labelme", tmp_path / "out")
    row = problems(out, "image_found_elsewhere")
    assert len(row) == 1 and str(src / "elsewhere" / f"{x}.jpg") in row.iloc[0]["action"]


# ----------------------------------------------------------------------------- 8. failed reads

def test_unreadable_yolo_label_file_is_unlabelled_not_an_empty_negative(tmp_path):
    src = yolo_copy(tmp_path / "yolo")
    label = src / "labels" / f"{IDS[2]}.txt"
    label.write_bytes(label.read_text().encode("utf-16"))  # Notepad's "Unicode"
    before = checksums(src)
    out = convert(src, "yolo", tmp_path / "out")
    assert checksums(src) == before
    row = meta_row(out, IDS[2])
    assert str(row["labelled"]) == "False" and row["label_file"] == ""
    assert not (out / "labels" / f"{IDS[2]}.txt").exists()
    p = problems(out, "unreadable_label_file")
    assert len(p) == 1 and p.iloc[0]["file"].endswith(label.name) and p.iloc[0]["action"] == "imported as unlabelled"
    assert problems(out, "missing_label_file").empty  # the file exists: no misleading second row


def test_image_whose_annotations_were_all_rejected_is_unlabelled(tmp_path):
    src = voc_copy(tmp_path / "voc")
    xml = src / "Annotations" / f"{IDS[1]}.xml"
    tree = ET.parse(xml)
    for obj in tree.getroot().iter("object"):
        obj.find("name").text = "cell"  # a class the --classes list does not have
    tree.write(xml)
    out = convert(src, "voc", tmp_path / "out", classes=NAMES)
    row = meta_row(out, IDS[1])
    assert str(row["labelled"]) == "False" and int(row["n_objects"]) == 0
    p = problems(out, "no_valid_objects")
    assert len(p) == 1 and p.iloc[0]["file"].endswith(xml.name) and "unlabelled" in p.iloc[0]["action"]
    assert len(problems(out, "unknown_class")) == len(xml_objects(xml))
    # an image that truly has no objects stays a labelled negative
    empty = src / "Annotations" / f"{IDS[2]}.xml"
    tree = ET.parse(empty)
    for obj in list(tree.getroot().iter("object")):
        tree.getroot().remove(obj)
    tree.write(empty)
    out2 = convert(src, "voc", tmp_path / "out2", classes=NAMES)
    assert str(meta_row(out2, IDS[2])["labelled"]) == "True"


# ----------------------------------------------------------------------------- 9. lossy masks

def jpeg_mask_set(dest: Path) -> Path:
    s = dest / "training-data" / "2022-05-26_RPE1"
    shutil.copytree(MNFINDER / "training-data" / "2022-05-26_RPE1", s)
    for m in s.glob("*_masks/1.png"):
        Image.open(m).convert("RGB").save(m.with_suffix(".jpg"), quality=90)
        m.unlink()
    for m in s.glob("*_masks/2.png"):
        m.unlink()
    for im in s.glob("images/2.*"):
        im.unlink()
    return dest


@pytest.mark.slow
def test_jpeg_masks_are_refused_unless_the_user_insists(tmp_path):
    src = jpeg_mask_set(tmp_path / "mn")
    before = checksums(src)
    with pytest.raises(ValueError, match=r"(?s)2 mask file\(s\) are in a lossy format.*--allow-lossy-masks") as exc:
        convert(src, "masks", tmp_path / "out")
    assert "nucleus_masks/1.jpg" in str(exc.value) and not (tmp_path / "out").exists()
    out = convert(src, "masks", tmp_path / "out", allow_lossy_masks=True)
    assert checksums(src) == before
    assert len(problems(out, "lossy_mask")) == 2
    png = convert(MNFINDER / "training-data", "masks", tmp_path / "png")
    n_png = int(read_meta(png).set_index("image_id").loc["2022-05-26_RPE1/1", "n_objects"])
    n_jpg = int(read_meta(out).iloc[0]["n_objects"])
    assert n_jpg > 5 * n_png  # why they are refused: compression specks become objects


# ----------------------------------------------------------------------------- 10. crashes

def test_yolo_class_inf_and_nan_are_named_line_errors_not_crashes(tmp_path):
    src = yolo_copy(tmp_path / "yolo")
    label = src / "labels" / f"{IDS[0]}.txt"
    n = len(label.read_text().splitlines())
    label.write_text(label.read_text() + "inf 0.5 0.5 0.1 0.1\nnan 0.5 0.5 0.1 0.1\n0 nan 0.5 0.1 0.1\n")
    out = convert(src, "yolo", tmp_path / "out")
    rows = problems(out, "malformed_label_line")
    assert sorted(rows["object"]) == [f"line {n + k}" for k in (1, 2, 3)]
    assert rows["file"].str.endswith(label.name).all() and (rows["severity"] == "error").all()
    assert int(meta_row(out, IDS[0])["n_objects"]) == n and len(read_meta(out)) == len(IDS)


def test_images_under_ten_pixels_are_skipped_as_ultralytics_does(tmp_path):
    src = voc_copy(tmp_path / "voc", IDS[:3])
    x = IDS[0]
    Image.open(src / "JPEGImages" / f"{x}.jpg").crop((0, 0, 1, 480)).save(src / "JPEGImages" / f"{x}.jpg")
    out = convert(src, "voc", tmp_path / "out")
    row = problems(out, "image_too_small")
    assert len(row) == 1 and "1x480" in row.iloc[0]["detail"] and row.iloc[0]["action"] == "skipped image"
    assert x not in set(read_meta(out)["image_id"])


def test_audit_image_check_on_a_one_pixel_wide_image_is_no_crash(tmp_path):
    from workbench.data.audit.checks import check_image

    sliver = tmp_path / "sliver.png"
    Image.open(BCCD / "JPEGImages" / f"{IDS[0]}.jpg").crop((0, 0, 1, 480)).save(sliver)
    for reduce in (1, 2, 4, 8):  # OpenCV's reduced decode asserted on it (cv2.error)
        result = check_image(str(sliver), reduce)
        assert result["readable"] and np.isfinite(result["sharpness"])


# ----------------------------------------------------------------------------- 11. smaller ones

def test_yolo_label_with_a_utf8_bom_keeps_its_first_line(tmp_path):
    src = yolo_copy(tmp_path / "yolo")
    label = src / "labels" / f"{IDS[0]}.txt"
    n = len(label.read_text().splitlines())
    label.write_bytes(b"\xef\xbb\xbf" + label.read_bytes())
    out = convert(src, "yolo", tmp_path / "out")
    assert int(meta_row(out, IDS[0])["n_objects"]) == n
    assert problems(out, "malformed_label_line").empty


def test_voc_difficult_and_truncated_are_kept_and_exported(tmp_path):
    src = voc_copy(tmp_path / "voc", IDS[:2])
    xml = src / "Annotations" / f"{IDS[0]}.xml"
    tree = ET.parse(xml)
    first = next(tree.getroot().iter("object"))
    first.find("difficult").text, first.find("truncated").text = "1", "1"
    tree.write(xml)
    out = convert(src, "voc", tmp_path / "out")
    objects = pd.read_csv(out / "objects.csv", dtype={"image_id": str})
    mine = objects[objects["image_id"] == IDS[0]]
    assert mine["difficult"].tolist()[0] == 1 and mine["truncated"].tolist()[0] == 1
    assert objects["difficult"].sum() == 1
    assert len(problems(out, "difficult_object")) == 1
    coco = json.loads(export_coco(out, tmp_path / "c.json").path.read_text())
    assert sum(a.get("difficult", 0) for a in coco["annotations"]) == 1
    back = load_dataset(convert(tmp_path / "c.json", "coco", tmp_path / "back"))
    assert pd.read_csv(back.root / "objects.csv")["difficult"].sum() == 1  # and read back


def test_class_names_differing_only_in_case_are_reported(tmp_path):
    src = voc_copy(tmp_path / "voc", IDS[:2])
    xml = src / "Annotations" / f"{IDS[0]}.xml"
    tree = ET.parse(xml)
    rbc = [o for o in tree.getroot().iter("object") if o.findtext("name") == "RBC"]
    rbc[0].find("name").text = "rbc"
    tree.write(xml)
    out = convert(src, "voc", tmp_path / "out")
    row = problems(out, "class_name_variants")
    assert len(row) == 1 and "'RBC'" in row.iloc[0]["detail"] and "'rbc' 1" in row.iloc[0]["detail"]
    with_classes = convert(src, "voc", tmp_path / "out2", classes=NAMES)
    assert problems(with_classes, "unknown_class")["detail"].str.contains("did you mean 'RBC'").all()


def test_multipage_tiff_and_48_bit_png_are_not_handled_silently(tmp_path):
    src = voc_copy(tmp_path / "voc", IDS[:3])
    a, b = IDS[0], IDS[1]
    pages = [Image.open(BCCD / "JPEGImages" / f"{i}.jpg") for i in (a, b)]
    pages[0].save(src / "JPEGImages" / f"{a}.tif", save_all=True, append_images=pages[1:])
    (src / "JPEGImages" / f"{a}.jpg").unlink()
    import cv2

    rgb = np.asarray(Image.open(BCCD / "JPEGImages" / f"{b}.jpg"))
    deep = rgb.astype(np.uint16) * 257 + np.arange(W, dtype=np.uint16)[None, :, None] % 200
    cv2.imwrite(str(src / "JPEGImages" / f"{b}.png"), deep[..., ::-1])
    (src / "JPEGImages" / f"{b}.jpg").unlink()
    for i in (a, b):
        xml = src / "Annotations" / f"{i}.xml"
        tree = ET.parse(xml)
        tree.getroot().find("filename").text = f"{i}.{'tif' if i == a else 'png'}"
        tree.write(xml)
    before = checksums(src)
    out = convert(src, "voc", tmp_path / "out")
    assert checksums(src) == before
    row = problems(out, "multi_page_image")
    assert len(row) == 1 and "2 pages" in row.iloc[0]["detail"] and "page 1" in row.iloc[0]["action"]
    deep_row = meta_row(out, b)
    assert int(deep_row["bit_depth"]) == 16 and "uint16 -> uint8" in deep_row["normalisation"]


def test_dataset_yaml_lists_no_empty_test_split(tmp_path):
    from _formats import copy_voc_subset

    out = convert(copy_voc_subset(tmp_path / "voc", IDS), "voc", tmp_path / "out")
    doc = yaml.safe_load((out / "dataset.yaml").read_text())
    assert "test" not in doc and doc["train"] == "train.txt" and doc["val"] == "val.txt"
    assert (out / "test.txt").read_text() == ""  # written (a stale list never survives), not listed


@pytest.mark.slow
def test_labelme_export_keeps_polygons_and_writes_no_float_noise(tmp_path):
    out = convert(MONUSEG, "monuseg", tmp_path / "mon")
    result = export_labelme(out, tmp_path / "lm")
    assert any("polygon" in n for n in result.notes)
    doc = json.loads(next((tmp_path / "lm").glob("*.json")).read_text())
    assert {s["shape_type"] for s in doc["shapes"]} == {"polygon"}
    values = [v for s in doc["shapes"] for p in s["points"] for v in p]
    assert all(round(v, 2) == v for v in values)
    bccd = convert(voc_copy(tmp_path / "voc", IDS[:2]), "voc", tmp_path / "b")
    export_labelme(bccd, tmp_path / "lm_b")
    text = "".join(p.read_text() for p in (tmp_path / "lm_b").glob("*.json"))
    assert "0000000" not in text and "9999999" not in text  # 267.99960000000004 and the like
