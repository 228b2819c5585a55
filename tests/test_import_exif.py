"""EXIF orientation: a real BCCD image stored sideways with orientation 6 imports upright, with
its boxes on the cells, and the exports agree with ultralytics' loader (which turns it too).

The sideways copy holds the original's pixels turned 90 degrees counter-clockwise; orientation
6 ("turn 90 degrees clockwise to show") makes the displayed image equal the original again.
As PNG the pixels are exact (crops compared for equality); as JPEG (what phones write) they
carry re-encoding noise (crops compared within a few grey levels, against ~50 for the wrong frame).
"""
from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import BCCD, checksums
from workbench.core.images import orient_array, orient_points, read_image
from workbench.data.canonical import load_dataset, read_images
from workbench.data.exporters import export_coco, export_labelme, export_yolo
from workbench.data.importers import convert

IMAGE = "BloodImage_00001"  # 640x480, RBC, WBC and platelets
W, H = 640, 480


def original() -> np.ndarray:
    return np.asarray(Image.open(BCCD / "JPEGImages" / f"{IMAGE}.jpg").convert("RGB"))


def xml_boxes(xml: Path) -> list[tuple[str, float, float, float, float]]:
    root = ET.parse(xml).getroot()
    return [(o.findtext("name"), *(float(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")))
            for o in root.iter("object")]


def save_sideways(pixels: np.ndarray, path: Path, **options) -> None:
    """Store ``pixels`` turned 90 degrees counter-clockwise with EXIF orientation 6."""
    im = Image.fromarray(np.ascontiguousarray(np.rot90(pixels, 1)))
    exif = im.getexif()
    exif[274] = 6
    im.save(path, exif=exif, **options)


def sideways_voc(dest: Path, suffix: str, *, stored_frame: bool = False) -> Path:
    """A VOC folder with the sideways copy; the XML as the annotation tool wrote it (upright
    frame, <size> 640x480) or, ``stored_frame``, drawn on the stored pixels (480x640)."""
    (dest / "Annotations").mkdir(parents=True)
    (dest / "JPEGImages").mkdir()
    save_sideways(original(), dest / "JPEGImages" / f"{IMAGE}{suffix}", **({"quality": 95} if suffix == ".jpg" else {}))
    tree = ET.parse(BCCD / "Annotations" / f"{IMAGE}.xml")
    root = tree.getroot()
    root.find("filename").text = f"{IMAGE}{suffix}"
    if stored_frame:  # the stored frame: (x, y) upright -> (y, W - x) stored
        root.find("size").find("width").text, root.find("size").find("height").text = str(H), str(W)
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            x1, y1, x2, y2 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (y1, W - x2, y2, W - x1)):
                bb.find(tag).text = f"{v:g}"
    tree.write(dest / "Annotations" / f"{IMAGE}.xml")
    return dest


def crops(image: np.ndarray, boxes) -> list[np.ndarray]:
    return [image[int(round(y1)):int(round(y2)), int(round(x1)):int(round(x2))].astype(int)
            for x1, y1, x2, y2 in boxes]


def ordered(boxes) -> np.ndarray:
    """Boxes in a fixed order (by rounded x1, y1, x2, y2), to compare two lists of the same boxes."""
    a = np.asarray(boxes, dtype=float).reshape(-1, 4)
    return a[np.lexsort(np.round(a, 1).T[::-1])]


def imported(out: Path) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    ds = load_dataset(out)
    image = read_images(out, [IMAGE])[IMAGE]
    return image, ds.objects, ds.problems


def reference_boxes() -> list[tuple[float, float, float, float]]:
    return [b[1:] for b in xml_boxes(BCCD / "Annotations" / f"{IMAGE}.xml")]


def test_orientation_helpers_agree_with_pil_for_all_eight_values(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (5, 7, 3)).astype(np.uint8)
    from PIL import ImageOps

    for o in range(1, 9):
        im = Image.fromarray(a)
        exif = im.getexif()
        exif[274] = o
        im.save(tmp_path / f"o{o}.png", exif=exif)
        ref = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / f"o{o}.png")))
        arr, info = read_image(tmp_path / f"o{o}.png")
        assert (arr == ref).all() and (orient_array(a, o) == ref).all() and info.orientation == o
        assert info.stored_size == (7, 5) and (info.width, info.height) == (ref.shape[1], ref.shape[0])
        for c, r in ((0, 0), (6, 1), (3, 4)):  # a one-pixel box lands on the same pixel
            marked = np.zeros((5, 7), bool)
            marked[r, c] = True
            rr, cc = np.argwhere(orient_array(marked, o))[0]
            xy = orient_points([(c, r), (c + 1, r + 1)], o, (7, 5))
            assert (xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()) == (cc, rr, cc + 1, rr + 1)


@pytest.mark.parametrize("stored_frame", [False, True], ids=["tool-frame", "stored-frame"])
def test_exif_rotated_png_imports_upright_with_every_crop_equal_to_the_original(tmp_path, stored_frame):
    src = sideways_voc(tmp_path / "voc", ".png", stored_frame=stored_frame)
    before = checksums(src)
    image, objects, problems = imported(convert(src, "voc", tmp_path / "out"))
    assert checksums(src) == before  # the raw file keeps its sideways pixels and its tag
    orig = original()
    assert image.shape == orig.shape and (image == orig).all()  # stored upright, pixel-exact
    boxes = objects[["x1", "y1", "x2", "y2"]].to_numpy()
    assert len(boxes) == len(reference_boxes())
    assert np.abs(ordered(boxes) - ordered(reference_boxes())).max() < 0.01
    for got, want in zip(crops(image, boxes), crops(orig, boxes)):
        assert got.shape == want.shape and (got == want).all()
    kinds = set(problems["kind"])
    assert "exif_orientation" in kinds or "exif_frame" in kinds
    if stored_frame:  # the 480x640 <size> is explained by the EXIF turn: resolved and recorded
        row = problems[problems["kind"] == "exif_frame"].iloc[0]
        assert "480x640" in row["detail"] and "orientation 6" in row["detail"] and "turned" in row["action"]
        assert "size_mismatch" not in kinds
    meta = load_dataset(tmp_path / "out").images.iloc[0]
    assert int(meta["exif_orientation"]) == 6 and (meta["width"], meta["height"]) == (W, H)
    assert "EXIF orientation 6 applied" in meta["normalisation"] and meta["file"].endswith(".png")


def test_a_size_the_exif_turn_does_not_explain_is_reported(tmp_path):
    src = sideways_voc(tmp_path / "voc", ".png")
    xml = src / "Annotations" / f"{IMAGE}.xml"
    tree = ET.parse(xml)
    tree.getroot().find("size").find("width").text = "100"
    tree.write(xml)
    _, _, problems = imported(convert(src, "voc", tmp_path / "out"))
    row = problems[problems["kind"] == "size_mismatch"]
    assert len(row) == 1 and "100x480" in row.iloc[0]["detail"] and "640x480" in row.iloc[0]["detail"]


@pytest.fixture(scope="module")
def jpeg_import(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("exif_jpeg")
    src = sideways_voc(tmp / "voc", ".jpg")
    return src, convert(src, "voc", tmp / "canon")


def test_exif_rotated_jpeg_boxes_lie_on_the_cells(jpeg_import):
    src, out = jpeg_import
    image, objects, _ = imported(out)
    orig = original()
    boxes = objects[["x1", "y1", "x2", "y2"]].to_numpy()
    right = [np.abs(g - w).mean() for g, w in zip(crops(image, boxes), crops(orig, boxes))]
    assert max(right) < 3  # JPEG re-encoding noise only
    # read as before (the stored pixels, boxes unturned): the boxes would miss the cells
    stored = np.asarray(Image.open(src / "JPEGImages" / f"{IMAGE}.jpg")).astype(int)
    wrong = [np.abs(g - w).mean() for g, w in zip(crops(stored, boxes), crops(orig, boxes)) if g.shape == w.shape]
    assert np.mean(wrong) > 10 * np.mean(right)


def test_exports_agree_with_ultralytics_loader(jpeg_import, tmp_path):
    from ultralytics.data.utils import exif_size
    from ultralytics.utils.patches import imread

    src, out = jpeg_import
    raw = src / "JPEGImages" / f"{IMAGE}.jpg"
    loaded = imread(str(raw))[..., ::-1]  # ultralytics' loader (BGR), EXIF applied
    assert loaded.shape[:2] == (H, W) and exif_size(Image.open(raw)) == (W, H)
    canon = read_images(out, [IMAGE])[IMAGE]
    assert np.abs(loaded.astype(int) - canon.astype(int)).mean() < 1  # the same upright pixels
    ds = load_dataset(out)
    want = ordered(ds.objects[["x1", "y1", "x2", "y2"]].to_numpy())

    coco = json.loads(export_coco(out, tmp_path / "coco.json").path.read_text())
    assert (coco["images"][0]["width"], coco["images"][0]["height"]) == (W, H)
    got = ordered([(x, y, x + w, y + h) for x, y, w, h in (a["bbox"] for a in coco["annotations"])])
    assert np.abs(got - want).max() < 0.01
    on_loaded = [np.abs(g - w).mean() for g, w in zip(crops(loaded, got), crops(original(), got))]
    assert max(on_loaded) < 3  # COCO boxes on ultralytics' pixels lie on the cells

    export_labelme(out, tmp_path / "lm")
    doc = json.loads((tmp_path / "lm" / f"{IMAGE}.json").read_text())
    assert (doc["imageWidth"], doc["imageHeight"]) == (W, H)
    pts = ordered([(*s["points"][0], *s["points"][1]) for s in doc["shapes"]])
    assert np.abs(pts - want).max() < 0.01
    assert Image.open(tmp_path / "lm" / doc["imagePath"]).size == (W, H)

    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    export_yolo(out, tmp_path / "yolo")
    data = check_det_dataset(str(tmp_path / "yolo" / "data.yaml"))
    labels = YOLODataset(img_path=data["train"], data=data, task="detect", augment=False, imgsz=160).labels
    assert labels[0]["shape"] == (H, W)
    xywh = labels[0]["bboxes"] * [W, H, W, H]
    xyxy = np.c_[xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2]
    assert np.abs(ordered(xyxy) - want).max() < 0.01


def test_labelme_and_labelstudio_boxes_on_an_exif_rotated_image(tmp_path):
    """Both tools show the upright image: boxes in its frame, sizes 640x480 (percent of it)."""
    folder = tmp_path / "src"
    folder.mkdir()
    save_sideways(original(), folder / f"{IMAGE}.png")
    objs = xml_boxes(BCCD / "Annotations" / f"{IMAGE}.xml")
    lm = {"version": "5.5.0", "flags": {}, "imagePath": f"{IMAGE}.png", "imageData": None,
          "imageWidth": W, "imageHeight": H,
          "shapes": [{"label": c, "points": [[x1, y1], [x2, y2]], "shape_type": "rectangle", "flags": {}}
                     for c, x1, y1, x2, y2 in objs]}
    (folder / f"{IMAGE}.json").write_text(json.dumps(lm))
    ls = [{"id": 1, "data": {"image": f"/data/upload/1/{IMAGE}.png"}, "annotations": [{"id": 1, "result": [
        {"id": f"r{k}", "type": "rectanglelabels", "original_width": W, "original_height": H,
         "value": {"x": x1 / W * 100, "y": y1 / H * 100, "width": (x2 - x1) / W * 100,
                   "height": (y2 - y1) / H * 100, "rotation": 0, "rectanglelabels": [c]}}
        for k, (c, x1, y1, x2, y2) in enumerate(objs)]}]}]
    ls_json = tmp_path / "ls.json"
    ls_json.write_text(json.dumps(ls))
    orig = original()
    for out in (convert(folder, "labelme", tmp_path / "lm_out"),
                convert(ls_json, "labelstudio", tmp_path / "ls_out", images=folder)):
        image, objects, problems = imported(out)
        assert (image == orig).all() and "size_mismatch" not in set(problems["kind"])
        boxes = objects[["x1", "y1", "x2", "y2"]].to_numpy()
        assert len(boxes) == len(objs)
        for got, want in zip(crops(image, boxes), crops(orig, boxes)):
            assert (got == want).all()


def test_masks_drawn_on_the_stored_pixels_are_turned_with_the_image(tmp_path):
    """A mask of the stored (sideways) frame: its objects follow the image when it is turned."""
    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    (root / "cell_masks").mkdir()
    orig = original()
    save_sideways(orig, root / "images" / "a.png")
    mask = np.zeros((H, W), np.uint8)
    mask[100:140, 200:260] = 1  # a 60x40 object in the upright frame
    Image.fromarray(np.ascontiguousarray(np.rot90(mask, 1))).save(root / "cell_masks" / "a.png")  # stored frame
    out = convert(root, "masks", tmp_path / "out")
    ds = load_dataset(out)
    box = ds.objects[["x1", "y1", "x2", "y2"]].to_numpy()
    assert np.abs(box - [[200, 100, 260, 140]]).max() < 0.01
    assert "exif_frame" in set(ds.problems["kind"])
