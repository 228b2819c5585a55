"""The canonical writer: every bad input is recorded with file and object, nothing is lost."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import BCCD, MONUSEG, checksums
from workbench.data.canonical import (
    RawDataset, RawImage, RawObject, load_dataset, parse_yolo_label, safe_stem, write_canonical)
from workbench.core.images import ImageReadError, Normalisation, read_image, to_uint8
from workbench.data.importers import convert
from workbench.core.problems import ProblemLog, StrictModeError


def _problems(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "problems.csv", dtype=str, keep_default_na=False)


def _xml_set_box(xml: Path, index: int, box: tuple[int, int, int, int], name: str | None = None) -> None:
    import xml.etree.ElementTree as ET

    tree = ET.parse(xml)
    obj = list(tree.getroot().iter("object"))[index]
    for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
        obj.find("bndbox").find(tag).text = str(v)
    if name is not None:
        obj.find("name").text = name
    tree.write(xml)


def test_bccd_counts_equal_raw_xml_counts(bccd_canonical):
    import xml.etree.ElementTree as ET

    raw = pd.Series([o.findtext("name") for x in sorted((BCCD / "Annotations").glob("*.xml"))
                     for o in ET.parse(x).getroot().iter("object")]).value_counts()
    ds = load_dataset(bccd_canonical)
    assert len(ds.images) == 292
    assert ds.objects["class"].value_counts().sort_index().to_dict() == raw.sort_index().to_dict()
    assert raw.to_dict() == {"RBC": 3350, "WBC": 301, "Platelets": 292}
    # official split from ImageSets/Main kept as given
    assert ds.images["split"].value_counts().to_dict() == {"train": 205, "val": 87}


def test_boxes_survive_the_yolo_encoding_within_a_hundredth_pixel(bccd_canonical):
    ds = load_dataset(bccd_canonical)
    objects = pd.read_csv(bccd_canonical / "objects.csv")
    key = ["image_id", "class", "x1", "y1", "x2", "y2"]
    a = ds.objects.round(1).sort_values(key).reset_index(drop=True)
    b = objects.round(1).sort_values(key).reset_index(drop=True)
    assert (a["class"] == b["class"]).all()
    assert np.abs(a[["x1", "y1", "x2", "y2"]].to_numpy() - b[["x1", "y1", "x2", "y2"]].to_numpy()).max() < 0.01


def test_raw_files_unchanged_and_images_copied_byte_for_byte(tmp_path, bccd_subset):
    before = checksums(bccd_subset)
    out = convert(bccd_subset, "voc", tmp_path / "out")
    assert checksums(bccd_subset) == before
    meta = load_dataset(out).images
    for row in meta.itertuples():
        assert (out / row.file).read_bytes() == Path(row.source_image).read_bytes()
        assert row.normalisation == "none"


def test_corrupt_jpeg_is_reported_and_the_rest_imported(tmp_path, bccd_subset):
    victim = sorted((bccd_subset / "JPEGImages").glob("*.jpg"))[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # truncated mid-scan
    out = convert(bccd_subset, "voc", tmp_path / "out")
    probs = _problems(out)
    row = probs[probs.kind == "unreadable_image"]
    assert len(row) == 1 and row.iloc[0].file.endswith(victim.name)
    assert row.iloc[0].severity == "error" and row.iloc[0].action == "skipped image"
    assert victim.stem not in set(load_dataset(out).images.image_id)
    assert len(load_dataset(out).images) == 11


def test_garbage_bytes_and_truncated_tiff_raise_a_named_error(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="junk.jpg"):
        read_image(junk)
    tif = next((MONUSEG / "Tissue_Images").glob("*.tif"))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(tif.read_bytes()[: tif.stat().st_size // 2])
    with pytest.raises(ImageReadError, match="cut.tif"):
        read_image(cut)
    arr, info = read_image(tif)  # the intact real tile reads fine
    assert (info.width, info.height, info.channels, info.bit_depth) == (1000, 1000, 3, 8)


@pytest.mark.slow
def test_unknown_class_is_skipped_per_object_and_strict_writes_nothing(tmp_path, bccd_subset):
    xml = sorted((bccd_subset / "Annotations").glob("*.xml"))[0]
    _xml_set_box(xml, 0, (10, 10, 50, 50), name="Neutrophil")
    out = convert(bccd_subset, "voc", tmp_path / "out", classes=["RBC", "WBC", "Platelets"])
    probs = _problems(out)
    unk = probs[probs.kind == "unknown_class"]
    assert len(unk) == 1
    assert unk.iloc[0].file.endswith(xml.name) and unk.iloc[0].object == "object 1"
    assert "Neutrophil" in unk.iloc[0].detail
    assert load_dataset(out).classes == ["RBC", "WBC", "Platelets"]
    with pytest.raises(StrictModeError, match="Neutrophil"):
        convert(bccd_subset, "voc", tmp_path / "strict", classes=["RBC", "WBC", "Platelets"], strict=True)
    assert not (tmp_path / "strict").exists()


def test_boxes_out_of_bounds_are_clipped_and_outside_boxes_skipped(tmp_path, bccd_subset):
    xml = sorted((bccd_subset / "Annotations").glob("*.xml"))[1]
    _xml_set_box(xml, 0, (600, 400, 700, 520))  # crosses the 640x480 border
    _xml_set_box(xml, 1, (700, 10, 760, 60))  # entirely right of the image
    out = convert(bccd_subset, "voc", tmp_path / "out")
    probs = _problems(out)
    assert probs[probs.kind == "box_out_of_bounds"].object.tolist() == ["object 1"]
    assert probs[probs.kind == "box_outside_image"].object.tolist() == ["object 2"]
    objs = load_dataset(out).objects
    mine = objs[objs.image_id == xml.stem]
    assert mine.x2.max() <= 640 + 1e-3 and mine.y2.max() <= 480 + 1e-3  # 6-decimal YOLO encoding
    assert ((mine.x1 - 600).abs() < 0.01).sum() == 1


def test_image_without_label_and_label_without_objects_are_distinguished(tmp_path, bccd_subset):
    xmls = sorted((bccd_subset / "Annotations").glob("*.xml"))
    xmls[0].unlink()  # image without label file
    import xml.etree.ElementTree as ET

    tree = ET.parse(xmls[1])
    for obj in list(tree.getroot().iter("object")):
        tree.getroot().remove(obj)
    tree.write(xmls[1])  # a label file with no objects: a negative image
    out = convert(bccd_subset, "voc", tmp_path / "out")
    meta = load_dataset(out).images.set_index("image_id")
    assert not meta.loc[xmls[0].stem, "labelled"] and meta.loc[xmls[0].stem, "label_file"] == ""
    assert meta.loc[xmls[1].stem, "labelled"] and meta.loc[xmls[1].stem, "n_objects"] == 0
    assert (out / "labels" / f"{xmls[1].stem}.txt").read_text() == ""
    assert not (out / "labels" / f"{xmls[0].stem}.txt").exists()
    probs = _problems(out)
    assert probs[probs.kind == "missing_label_file"].file.str.endswith(f"{xmls[0].stem}.jpg").all()


def test_label_without_image_is_reported(tmp_path, bccd_subset):
    img = sorted((bccd_subset / "JPEGImages").glob("*.jpg"))[2]
    img.unlink()
    out = convert(bccd_subset, "voc", tmp_path / "out")
    probs = _problems(out)
    assert probs[probs.kind == "missing_image"].file.str.endswith(f"{img.stem}.xml").all()
    assert len(probs[probs.kind == "missing_image"]) == 1


def test_same_stem_in_two_formats_is_imported_once(tmp_path, bccd_subset):
    jpg = sorted((bccd_subset / "JPEGImages").glob("*.jpg"))[0]
    Image.open(jpg).save(jpg.with_suffix(".png"))
    out = convert(bccd_subset, "voc", tmp_path / "out")
    meta = load_dataset(out).images
    assert len(meta) == 12 and meta.image_id.is_unique
    chosen = meta.set_index("image_id").loc[jpg.stem, "source_image"]
    assert chosen.endswith(".jpg")  # the file the XML's <filename> names, the other one recorded
    probs = _problems(out)
    row = probs[probs.kind == "several_image_formats"]
    assert len(row) == 1 and jpg.with_suffix(".png").name in row.iloc[0].detail


def _raw_from_arrays(tmp_path: Path, arrays: dict[str, np.ndarray]) -> RawDataset:
    images = []
    for name, arr in arrays.items():
        path = tmp_path / "src" / f"{name}.{'tif' if arr.dtype == np.uint16 else 'png'}"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(arr).save(path)
        h, w = arr.shape[:2]
        images.append(RawImage(name, path, [RawObject("cell", 10, 10, w / 2, h / 2)]))
    return RawDataset("test", tmp_path / "src", images)


def test_grey_16bit_and_rgba_images_are_normalised_and_recorded(tmp_path):
    rgb = np.asarray(Image.open(BCCD / "JPEGImages" / "BloodImage_00000.jpg"))
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    grey16 = (grey.astype(np.uint16) * 20 + 600)  # a narrow 16-bit range, as in MNFinder
    rgba = np.dstack([rgb, np.full(grey.shape, 200, np.uint8)])
    raw = _raw_from_arrays(tmp_path, {"grey": grey, "grey16": grey16, "rgba": rgba})
    out = write_canonical(raw, tmp_path / "out", normalisation=Normalisation("percentile", 1, 99))
    meta = load_dataset(out).images.set_index("image_id")
    assert meta.loc["grey", ["channels", "bit_depth", "normalisation"]].tolist() == [1, 8, "none"]
    assert meta.loc["grey16", "bit_depth"] == 16 and "uint16 -> uint8: percentile stretch p1..p99" in meta.loc["grey16", "normalisation"]
    assert meta.loc["rgba", "channels"] == 4 and "alpha channel dropped" in meta.loc["rgba", "normalisation"]
    for image_id in meta.index:  # every stored image is 8-bit and readable by OpenCV (ultralytics' reader)
        stored = cv2.imread(str(out / meta.loc[image_id, "file"]), cv2.IMREAD_UNCHANGED)
        assert stored is not None and stored.dtype == np.uint8
    stretched = cv2.imread(str(out / meta.loc["grey16", "file"]), cv2.IMREAD_UNCHANGED)
    assert stretched.min() == 0 and stretched.max() == 255  # range used, not a >>8 cast to near-black


def test_to_uint8_shift_and_minmax_are_exact():
    arr = np.array([[0, 256, 65535]], dtype=np.uint16)
    out, note = to_uint8(arr, Normalisation("shift"))
    assert out.tolist() == [[0, 1, 255]] and "top 8 bits" in note
    out, _ = to_uint8(np.array([[100, 120, 200]], dtype=np.uint16), Normalisation("minmax"))
    assert out.tolist() == [[0, 51, 255]]
    with pytest.raises(ValueError, match="low < high"):
        Normalisation("percentile", 90, 10)


def test_duplicate_image_ids_keep_the_first_and_report_the_second(tmp_path):
    rgb = np.asarray(Image.open(BCCD / "JPEGImages" / "BloodImage_00001.jpg"))
    raw = _raw_from_arrays(tmp_path, {"a": rgb, "b": rgb})
    raw.images[1].image_id = "a"
    out = write_canonical(raw, tmp_path / "out")
    probs = _problems(out)
    assert probs[probs.kind == "duplicate_name"].action.tolist() == ["skipped image"]
    assert len(load_dataset(out).images) == 1


def test_ids_with_slashes_spaces_and_case_collisions_get_safe_unique_files(tmp_path):
    rgb = np.asarray(Image.open(BCCD / "JPEGImages" / "BloodImage_00002.jpg"))
    raw = _raw_from_arrays(tmp_path, {"x": rgb, "y": rgb})
    raw.images[0].image_id = "train/set A/1.2"
    raw.images[1].image_id = "train/set a/1.2"
    out = write_canonical(raw, tmp_path / "out")
    files = load_dataset(out).images.file.tolist()
    assert len(set(f.lower() for f in files)) == 2
    assert safe_stem("train/set A/1.2") == "train__set_A__1.2"


@pytest.mark.slow
def test_failed_write_leaves_no_output_and_keeps_a_previous_version(tmp_path, bccd_subset, monkeypatch):
    out = convert(bccd_subset, "voc", tmp_path / "out")
    before = checksums(out)
    import workbench.data.canonical as canonical

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(canonical, "save_meta", boom)
    with pytest.raises(RuntimeError):
        convert(bccd_subset, "voc", tmp_path / "out", overwrite=True)
    with pytest.raises(RuntimeError):
        convert(bccd_subset, "voc", tmp_path / "fresh")
    assert checksums(out) == before
    assert not (tmp_path / "fresh").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_yolo_label_parser_names_file_and_line():
    arr = parse_yolo_label("0 0.5 0.5 0.1 0.1\n\n1 0.1 0.1 0.3 0.1 0.3 0.3\n", "x.txt")
    assert arr.shape == (2, 5) and np.allclose(arr[1], [1, 0.2, 0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match=r"x.txt: line 2"):
        parse_yolo_label("0 0.5 0.5 0.1 0.1\n0 0.5 oops 0.1 0.1\n", "x.txt")
    log = ProblemLog()
    parse_yolo_label("1.5 0.5 0.5 0.1 0.1\n", "y.txt", log)
    assert log.items[0].object == "line 1" and log.items[0].kind == "malformed_label_line"
