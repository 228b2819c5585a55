"""Aperio ImageScope XML (MoNuSeg): every Region is one box, checked against the raw XML text."""
from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import MONUSEG, checksums
from workbench.data.canonical import load_dataset
from workbench.data.importers import convert, read_raw
from workbench.data.importers.foldersplit import official_splits, split_from_folders, split_of_folder
from workbench.data.importers.imagescope import ImageScopeError, parse_imagescope

REGION = re.compile(rb"<Region[\s/>]")  # not <RegionAttributeHeaders>


def _regions_in_text(xml: Path) -> int:
    return len(REGION.findall(xml.read_bytes()))


def _problems(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "problems.csv", dtype=str, keep_default_na=False)


def _xml_truth(ann_dir: Path) -> pd.DataFrame:
    """Per region, straight from ElementTree: file stem, region id, vertex count, bounds."""
    rows = []
    for xml in sorted(ann_dir.glob("*.xml")):
        for region in ET.parse(xml).getroot().iter("Region"):
            v = np.array([[float(p.get("X")), float(p.get("Y"))] for p in region.iter("Vertex")])
            rows.append({"stem": xml.stem, "id": region.get("Id"), "n": len(v),
                         "xmin": v[:, 0].min(), "ymin": v[:, 1].min(),
                         "xmax": v[:, 0].max(), "ymax": v[:, 1].max()})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def vendored(tmp_path_factory) -> Path:
    before = checksums(MONUSEG)
    out = convert(MONUSEG, "monuseg", tmp_path_factory.mktemp("is") / "monuseg")
    assert checksums(MONUSEG) == before  # raw data untouched
    return out


def test_vendored_object_counts_equal_region_elements_in_the_xml_text(vendored):
    ds = load_dataset(vendored)
    xmls = sorted((MONUSEG / "Annotations").glob("*.xml"))
    assert len(ds.images) == len(xmls) == 3
    per_image = ds.objects.groupby("image_id").size().to_dict()
    expected = {x.stem: _regions_in_text(x) for x in xmls}
    assert per_image == expected
    assert set(ds.objects["class"]) == {"nucleus"}
    assert ds.info["format"] == "monuseg"
    # the source polygons are kept with their Region reference
    objects = pd.read_csv(vendored / "objects.csv", keep_default_na=False)
    assert objects["source_object"].str.fullmatch(r"Region Id \d+").all()
    first = objects.iloc[0]
    poly = np.array(json.loads(first["polygon"]))
    assert len(poly) >= 3 and poly[:, 0].min() == pytest.approx(first["x1"], abs=1e-3)


@pytest.mark.slow
def test_vendored_boxes_are_vertex_min_max_and_mpp_is_recorded(vendored):
    truth = _xml_truth(MONUSEG / "Annotations")
    objects = pd.read_csv(vendored / "objects.csv", keep_default_na=False)
    objects["id"] = objects["source_object"].str.removeprefix("Region Id ")
    merged = objects.merge(truth, left_on=["image_id", "id"], right_on=["stem", "id"], validate="1:1")
    assert len(merged) == len(truth)
    clip = lambda a: np.clip(a, 0, 1000)  # noqa: E731  (tiles are 1000x1000; the writer clips)
    for ours, raw in (("x1", "xmin"), ("y1", "ymin"), ("x2", "xmax"), ("y2", "ymax")):
        assert np.allclose(merged[ours], clip(merged[raw]), atol=1e-6)
    meta = load_dataset(vendored).images.set_index("image_id")
    for xml in sorted((MONUSEG / "Annotations").glob("*.xml")):
        mpp = ET.parse(xml).getroot().get("MicronsPerPixel")
        assert float(meta.loc[xml.stem, "microns_per_pixel"]) == pytest.approx(float(mpp))
    # only a training folder: no official split is claimed (val would be empty)
    assert (meta["split"] == "").all()


@pytest.mark.slow
def test_full_13_tiles_counts_degenerate_and_out_of_bounds(shared_data, tmp_path):
    src = shared_data / "monuseg" / "MoNuSegTrainingData"
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    before = checksums(src)
    out = convert(src, "monuseg", tmp_path / "m")
    assert checksums(src) == before
    ds = load_dataset(out)
    truth = _xml_truth(src / "Annotations")
    assert len(ds.images) == 13 and len(ds.objects) == len(truth) == 4951
    assert ds.objects.groupby("image_id").size().to_dict() == truth.groupby("stem").size().to_dict()

    problems = _problems(out)
    degenerate = problems[problems["kind"] == "degenerate_polygon"]
    found = {(Path(f).stem[:12], o) for f, o in zip(degenerate["file"], degenerate["object"])}
    assert found == {("TCGA-50-5931", "Region Id 180"), ("TCGA-E2-A1B5", "Region Id 460")}
    assert (degenerate["severity"] == "warning").all()

    # the regions reaching outside the 1000x1000 tiles, found independently, are the clipped ones
    outside = truth[(truth[["xmin", "ymin"]] < 0).any(axis=1) | (truth[["xmax", "ymax"]] > 1000).any(axis=1)]
    assert len(outside) == 45
    assert outside[["xmin", "ymin"]].min().min() == pytest.approx(-2.9, abs=0.05)
    assert outside[["xmax", "ymax"]].max().max() == pytest.approx(1002.1, abs=0.05)
    clipped = problems[problems["kind"] == "box_out_of_bounds"]
    assert {(Path(f).stem, o) for f, o in zip(clipped["file"], clipped["object"])} == \
        {(s, f"Region Id {i}") for s, i in zip(outside["stem"], outside["id"])}
    # within the tile, up to the 6-decimal rounding of YOLO labels
    assert ds.objects[["x1", "y1"]].min().min() > -1e-3 and ds.objects[["x2", "y2"]].max().max() < 1000 + 1e-3

    meta = ds.images.set_index("image_id")
    assert meta.loc["TCGA-NH-A8F7-01A-01-TS1", "microns_per_pixel"] == ""
    mpp = pd.to_numeric(meta["microns_per_pixel"].replace("", np.nan)).dropna()
    assert len(mpp) == 12 and mpp.between(0.2456, 0.2527).all()


def _copy_tile(stem: str, dest: Path, *, xml_dir: Path | None = None) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(MONUSEG / "Tissue_Images" / f"{stem}.tif", dest / f"{stem}.tif")
    shutil.copy(MONUSEG / "Annotations" / f"{stem}.xml", (xml_dir or dest) / f"{stem}.xml")


STEMS = sorted(p.stem for p in (MONUSEG / "Annotations").glob("*.xml"))


def test_test_archive_layout_side_by_side(tmp_path):
    src = tmp_path / "MoNuSegTestData"
    for stem in STEMS[:2]:
        _copy_tile(stem, src)
    raw = read_raw(src, "monuseg")
    assert [im.image_id for im in raw.images] == STEMS[:2]
    for im in raw.images:
        assert im.image_path.parent == src and im.label_path.parent == src
        assert len(im.objects) == _regions_in_text(im.label_path)
    assert len(raw.problems.errors) == 0


@pytest.mark.slow
def test_official_archives_side_by_side_give_a_split(tmp_path):
    train = tmp_path / "MoNuSegTrainingData"
    (train / "Annotations").mkdir(parents=True)
    _copy_tile(STEMS[0], train / "Tissue Images", xml_dir=train / "Annotations")
    _copy_tile(STEMS[1], tmp_path / "MoNuSegTestData")
    raw = read_raw(tmp_path, "monuseg")
    assert {im.image_id: im.meta["split"] for im in raw.images} == {STEMS[0]: "train", STEMS[1]: "test"}
    # an image with no XML is imported unlabelled
    shutil.copy(MONUSEG / "Tissue_Images" / f"{STEMS[2]}.tif", tmp_path / "MoNuSegTestData" / "extra.tif")
    raw = read_raw(tmp_path, "monuseg")
    extra = [im for im in raw.images if im.image_id == "extra"]
    assert len(extra) == 1 and extra[0].objects is None


@pytest.mark.slow
def test_malformed_xml_and_foreign_xml_are_errors_naming_the_file(tmp_path):
    src = tmp_path / "tiles"
    for stem in STEMS[:3]:
        _copy_tile(stem, src)
    bad = src / f"{STEMS[0]}.xml"
    bad.write_bytes(bad.read_bytes()[:5000])  # truncated mid-file
    (src / f"{STEMS[1]}.xml").write_text("<annotation><object/></annotation>")
    out = convert(src, "monuseg", tmp_path / "out")
    problems = _problems(out)
    malformed = problems[problems["kind"] == "malformed_label_file"]
    assert set(malformed["file"]) == {str(bad), str(src / f"{STEMS[1]}.xml")}
    assert (malformed["severity"] == "error").all()
    assert malformed["detail"].str.contains("XML parse error|not an ImageScope", regex=True).all()
    ds = load_dataset(out)
    assert list(ds.images["image_id"]) == [STEMS[2]]  # the two bad ones are skipped
    assert len(ds.objects) == _regions_in_text(src / f"{STEMS[2]}.xml")


def test_xml_without_image_is_an_error(tmp_path):
    shutil.copy(MONUSEG / "Annotations" / f"{STEMS[0]}.xml", tmp_path / f"{STEMS[0]}.xml")
    _copy_tile(STEMS[1], tmp_path)
    raw = read_raw(tmp_path, "monuseg")
    assert [im.image_id for im in raw.images] == [STEMS[1]]
    [p] = [p for p in raw.problems if p.kind == "missing_image"]
    assert p.file.endswith(f"{STEMS[0]}.xml") and p.severity == "error"


SYNTHETIC = """<?xml version="1.0"?>
<Annotations MicronsPerPixel="0.5">
 <Annotation Id="1" Name="tumour"><Regions>
  <Region Id="1"><Vertices><Vertex Y="2" X="1"/><Vertex X="5" Y="2"/><Vertex X="5" Y="9.5"/></Vertices></Region>
  <Region Id="2"><Vertices><Vertex X="a" Y="2"/><Vertex X="5" Y="2"/><Vertex X="5" Y="9"/></Vertices></Region>
  <Region Id="3"><Vertices/></Region>
 </Regions></Annotation>
 <Annotation Id="2" Name=""><Regions>
  <Region Id="1"><Vertices><Vertex X='10' Y='10'/><Vertex X='20' Y='30'/></Vertices></Region>
 </Regions></Annotation>
</Annotations>
"""


def test_synthetic_layers_faulty_vertices_and_annotation_names(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "tile.png")
    (tmp_path / "tile.xml").write_text(SYNTHETIC)
    raw = read_raw(tmp_path, "monuseg")
    [im] = raw.images
    # two layers: Region Ids repeat, so the reference names the layer
    assert [o.ref for o in im.objects] == ["Region Id 1 (Annotation 1)", "Region Id 1 (Annotation 2)"]
    a, b = im.objects
    assert (a.x1, a.y1, a.x2, a.y2) == (1, 2, 5, 9.5) and a.polygon == [(1, 2), (5, 2), (5, 9.5)]
    assert (b.x1, b.y1, b.x2, b.y2) == (10, 10, 20, 30)
    assert {o.cls for o in im.objects} == {"nucleus"} and raw.classes == ["nucleus"]
    kinds = {(p.kind, p.object, p.severity) for p in raw.problems}
    assert kinds == {("invalid_polygon", "Region Id 2 (Annotation 1)", "error"),
                     ("invalid_polygon", "Region Id 3 (Annotation 1)", "error"),
                     ("degenerate_polygon", "Region Id 1 (Annotation 2)", "warning")}
    assert im.meta["microns_per_pixel"] == 0.5

    named = read_raw(tmp_path, "monuseg", use_annotation_names=True, class_name="cell")
    assert [o.cls for o in named.images[0].objects] == ["tumour", "cell"]
    with pytest.raises(TypeError):
        read_raw(tmp_path, "monuseg", bogus_option=1)


def test_parser_rejects_foreign_and_broken_xml():
    with pytest.raises(ImageScopeError, match="not <Annotations>"):
        parse_imagescope(b"<annotation/>")
    with pytest.raises(ImageScopeError, match="XML parse error"):
        parse_imagescope(b"<Annotations><Annotation>")
    assert parse_imagescope(b"<Annotations/>").regions == []


@pytest.mark.parametrize("name, split", [
    ("MoNuSegTrainingData", "train"), ("MoNuSegTestData", "test"), ("training-data", "train"),
    ("validation-data", "val"), ("val2017", "val"), ("TEST", "test"), ("Tissue_Images", ""),
    ("2022-05-26_RPE1", ""), ("values", ""), ("contest", "")])
def test_split_words_in_folder_names(name, split):
    assert split_of_folder(name) == split


def test_outermost_folder_wins_and_one_split_alone_is_not_official():
    assert split_from_folders(["data", "train", "test_batch"]) == "train"
    assert split_from_folders(["train"], source_name="test_run") == "train"
    assert split_from_folders(["2022-05-26_RPE1"], source_name="validation-data") == "val"
    assert official_splits(["train", "train"])[0] == ["", ""]
    assert official_splits(["train", "val", ""])[0] == ["train", "val", ""]
