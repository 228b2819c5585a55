"""Instance masks (MNFinder layout): instance counts checked against the raw mask files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage as ndi

from conftest import MNFINDER, checksums
from workbench.data.canonical import load_dataset
from workbench.data.importers import convert, read_raw
from workbench.data.importers.masks import label_instances, mask_codes


# ----------------------------------------------------------------------------- independent truth

def _mn_count(mask: Path) -> int:
    """Micronuclei: 4-connected components of the alpha channel (MNFinder's own rule)."""
    return ndi.label(np.asarray(Image.open(mask))[..., 3] > 0)[1]


def _nucleus_counts(mask: Path) -> tuple[int, int]:
    """Nuclei: (distinct colours, colour x 4-connected component), one colour at a time."""
    rgba = np.asarray(Image.open(mask))
    rows, cols = np.nonzero(rgba[..., 3] > 0)
    colours, which = np.unique(rgba[rows, cols, :3], axis=0, return_inverse=True)
    which = which.ravel()
    n = 0
    for k in range(len(colours)):
        r, c = rows[which == k], cols[which == k]
        crop = np.zeros((r.max() - r.min() + 1, c.max() - c.min() + 1), dtype=bool)
        crop[r - r.min(), c - c.min()] = True
        n += ndi.label(crop)[1]
    return len(colours), n


def _truth(root: Path) -> pd.DataFrame:
    """Per image id (``<split>/<set>/<stem>``): counts straight from the mask files."""
    rows = []
    for mn in sorted(root.glob("*/*/mn_masks/*.png")):
        set_dir = mn.parent.parent
        colours, nuclei = _nucleus_counts(set_dir / "nucleus_masks" / mn.name)
        rows.append({"image_id": f"{set_dir.parent.name}/{set_dir.name}/{mn.stem}",
                     "split": {"training-data": "train", "validation-data": "val"}[set_dir.parent.name],
                     "mn": _mn_count(mn), "nucleus": nuclei, "nucleus_colours": colours})
    return pd.DataFrame(rows).set_index("image_id").sort_index()


def _counts(objects: pd.DataFrame) -> pd.DataFrame:
    return objects.groupby(["image_id", "class"]).size().unstack(fill_value=0).sort_index()


def _problems(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "problems.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def vendored(tmp_path_factory) -> Path:
    before = checksums(MNFINDER)
    out = convert(MNFINDER, "masks", tmp_path_factory.mktemp("mk") / "mnfinder")
    assert checksums(MNFINDER) == before  # raw data untouched
    return out


# ----------------------------------------------------------------------------- vendored real data

@pytest.mark.slow
def test_vendored_counts_equal_counts_from_the_raw_masks(vendored):
    ds = load_dataset(vendored)
    truth = _truth(MNFINDER)
    assert len(ds.images) == len(truth) == 5
    ours = _counts(ds.objects)
    assert ours["mn"].to_dict() == truth["mn"].to_dict()
    assert ours["nucleus"].to_dict() == truth["nucleus"].to_dict()
    # validation-data is whole here: PROVENANCE gives 183 micronuclei, 234 nucleus colours
    val = truth[truth["split"] == "val"]
    assert val["mn"].sum() == 183 and val["nucleus_colours"].sum() == 234
    notes = ds.info["notes"]
    assert notes["instance_rule"]["mn"].startswith("connected component of the foreground")
    assert notes["instance_rule"]["nucleus"].startswith("colour x connected component")
    assert notes["counts"]["nucleus"]["distinct_colours"] == truth["nucleus_colours"].sum()
    assert notes["counts"]["mn"]["instances"] == truth["mn"].sum() == 341
    # a colour reused for a 6 px speck beside its 377 px nucleus: kept, but reported
    fragments = _problems(vendored).query("kind == 'mask_fragment'")
    assert len(fragments) == 1 and fragments.iloc[0]["severity"] == "warning"
    assert fragments.iloc[0]["file"].endswith("training-data/2022-05-26_RPE1/nucleus_masks/1.png")
    assert fragments.iloc[0]["detail"].startswith("6 px part")


def test_ids_keep_split_and_set_so_recurring_names_stay_apart(vendored):
    meta = load_dataset(vendored).images.set_index("image_id")
    assert sorted(meta.index) == ["training-data/2022-05-26_RPE1/1", "training-data/2022-05-26_RPE1/2",
                                  "validation-data/2022-05-26_RPE1/2198", "validation-data/2022-10-14_U2OS/1",
                                  "validation-data/2023-05-31_misc/4"]
    assert meta["file"].is_unique
    assert meta["split"].to_dict() == {i: ("train" if i.startswith("training") else "val") for i in meta.index}
    assert meta.loc["validation-data/2022-10-14_U2OS/1", "set"] == "2022-10-14_U2OS"


def test_tif_preferred_over_png_and_recorded(vendored):
    meta = load_dataset(vendored).images
    assert meta["source_image"].str.endswith(".tif").all()
    chosen = _problems(vendored).query("kind == 'several_image_formats'")
    assert len(chosen) == 5 and (chosen["severity"] == "info").all()
    assert chosen["action"].str.contains(r"imported \S+\.tif", regex=True).all()


def test_16_bit_images_normalised_and_recorded(vendored):
    meta = load_dataset(vendored).images.set_index("image_id")
    for image_id, row in meta.iterrows():
        raw = np.asarray(Image.open(row["source_image"]))
        assert int(row["bit_depth"]) == 8 * raw.dtype.itemsize
        if raw.dtype == np.uint16:
            assert row["normalisation"].startswith("uint16 -> uint8: percentile stretch")
        else:
            assert "pixels unchanged" in row["normalisation"]
    assert (meta["bit_depth"] == 16).sum() == 4


def test_image_info_csv_joined_by_set_and_image(vendored):
    meta = load_dataset(vendored).images.set_index("image_id")
    for split, name in (("training-data", "training-data_image-info.csv"),
                        ("validation-data", "validation_image-info.csv")):
        raw = (MNFINDER / split / name).read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw  # BOM and CRLF, as shipped
        with open(MNFINDER / split / name, encoding="utf-8-sig", newline="") as fh:
            for row in csv.DictReader(fh):
                image_id = f"{split}/{row['dataset']}/{Path(row['image']).stem}"
                if image_id in meta.index:
                    for col in ("original_obj", "scope", "cell_type", "dna_stain"):
                        assert str(meta.loc[image_id, col]) == row[col]
    assert meta.loc["validation-data/2023-05-31_misc/4", "dna_stain"] == "DAPI"
    unmatched = _problems(vendored).query("kind == 'unmatched_metadata'")
    assert list(unmatched["detail"].str.extract(r"^(\d+) of (\d+)").iloc[0]) == ["28", "30"]


def test_micronuclei_are_tiny_and_kept(vendored):
    mn = load_dataset(vendored).objects.query("`class` == 'mn'")
    w, h = (mn["x2"] - mn["x1"]).round(), (mn["y2"] - mn["y1"]).round()
    assert 4 <= w.median() <= 6 and 4 <= h.median() <= 6
    assert w.min() >= 1 and h.min() >= 1


def test_boxes_are_pixel_edges_and_polygons_share_them(vendored):
    objects = pd.read_csv(vendored / "objects.csv", keep_default_na=False)
    row = objects[objects["image_id"] == "validation-data/2023-05-31_misc/4"].iloc[0]
    rgba = np.asarray(Image.open(MNFINDER / "validation-data/2023-05-31_misc" /
                                 f"{row['class']}_masks" / "4.png"))
    x1, y1, x2, y2 = (int(round(row[k])) for k in ("x1", "y1", "x2", "y2"))
    crop = rgba[y1:y2, x1:x2, 3] > 0
    # the box is tight: every edge row/column of it holds a foreground pixel
    assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
    poly = np.array(json.loads(row["polygon"]), dtype=float)
    assert (poly.min(0) == [x1, y1]).all() and (poly.max(0) == [x2, y2]).all()


# ----------------------------------------------------------------------------- full shared data

@pytest.mark.slow
def test_full_mnfinder_counts_match_raw_masks_and_provenance(shared_data):
    src = shared_data / "mnfinder"
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    before = checksums(src)
    raw = read_raw(src, "masks")
    assert checksums(src) == before
    objects = pd.DataFrame([(im.image_id, o.cls) for im in raw.images for o in im.objects],
                           columns=["image_id", "class"])
    truth = _truth(src)
    assert len(raw.images) == len(truth) == 33
    ours = _counts(objects)
    assert ours["mn"].to_dict() == truth["mn"].to_dict()
    assert ours["nucleus"].to_dict() == truth["nucleus"].to_dict()
    by_split = truth.groupby("split")[["mn", "nucleus", "nucleus_colours"]].sum()
    # PROVENANCE.md: training 1797 MN connected comps / 2366 nucleus colours; validation 183 / 234
    assert by_split.loc["train"].to_dict() == {"mn": 1797, "nucleus": 2389, "nucleus_colours": 2366}
    assert by_split.loc["val"].to_dict() == {"mn": 183, "nucleus": 237, "nucleus_colours": 234}
    by_split_notes = raw.notes["counts_by_split"]
    assert by_split_notes["train"]["nucleus"]["distinct_colours"] == 2366
    assert by_split_notes["train"]["mn"]["instances"] == 1797
    counts = raw.notes["counts"]
    assert counts["nucleus"]["distinct_colours"] == 2600 and counts["nucleus"]["instances"] == 2626
    assert counts["mn"]["instances"] == 1980 and counts["mn"]["colour_components"] == 2165
    assert len({im.image_id for im in raw.images}) == 33
    assert all(im.image_path.suffix == ".tif" for im in raw.images)


# ----------------------------------------------------------------------------- synthetic edge cases

def _set(root: Path, stem: str, image: np.ndarray, masks: dict[str, np.ndarray], *, suffix: str = ".png") -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}{suffix}")
    for cls, mask in masks.items():
        (root / f"{cls}_masks").mkdir(exist_ok=True)
        Image.fromarray(mask).save(root / f"{cls}_masks" / f"{stem}.png")


def _rgba(h: int, w: int, squares: list[tuple[int, int, int, int, tuple[int, int, int]]]) -> np.ndarray:
    out = np.zeros((h, w, 4), dtype=np.uint8)
    for r1, c1, r2, c2, colour in squares:
        out[r1:r2, c1:c2, :3] = colour
        out[r1:r2, c1:c2, 3] = 255
    return out


def _boxes(raw, cls: str | None = None) -> list[tuple[float, ...]]:
    return sorted((o.x1, o.y1, o.x2, o.y2) for im in raw.images for o in (im.objects or [])
                  if cls is None or o.cls == cls)


def test_integer_label_image_with_touching_instances(tmp_path):
    labels = np.zeros((20, 30), dtype=np.uint16)
    labels[2:8, 2:10] = 5       # touches id 9 along a whole edge
    labels[2:8, 10:14] = 9
    labels[15:17, 20:22] = 5    # id 5 again, apart: a second instance
    labels[12, 3] = 300         # a single pixel
    _set(tmp_path, "a", np.zeros((20, 30), np.uint8), {"cell": labels})
    raw = read_raw(tmp_path, "masks")
    assert _boxes(raw) == [(2, 2, 10, 8), (3, 12, 4, 13), (10, 2, 14, 8), (20, 15, 22, 17)]
    refs = sorted(o.ref for o in raw.images[0].objects)
    assert any("(id 300)" in r for r in refs)
    whole = read_raw(tmp_path, "masks", split_components=False)
    assert _boxes(whole) == [(2, 2, 22, 17), (3, 12, 4, 13), (10, 2, 14, 8)]
    merged = read_raw(tmp_path, "masks", instances="component")
    assert _boxes(merged) == [(2, 2, 14, 8), (3, 12, 4, 13), (20, 15, 22, 17)]


def test_touching_colours_connectivity_and_one_pixel_boxes(tmp_path):
    mask = _rgba(10, 10, [(1, 1, 4, 4, (200, 0, 0)), (1, 4, 4, 6, (0, 200, 0)),  # touching colours
                          (6, 6, 7, 7, (0, 0, 9)), (7, 7, 8, 8, (0, 0, 9))])     # diagonal pixels
    _set(tmp_path, "x", np.zeros((10, 10), np.uint8), {"nucleus": mask})
    four = read_raw(tmp_path, "masks")
    assert _boxes(four) == [(1, 1, 4, 4), (4, 1, 6, 4), (6, 6, 7, 7), (7, 7, 8, 8)]
    one = [o for o in four.images[0].objects if o.x1 == 6][0]
    assert one.polygon is not None and sorted(one.polygon) == [(6, 6), (6, 7), (7, 6), (7, 7)]
    assert "colour #000009" in one.ref
    eight = read_raw(tmp_path, "masks", connectivity=8)
    assert _boxes(eight) == [(1, 1, 4, 4), (4, 1, 6, 4), (6, 6, 8, 8)]
    with pytest.raises(ValueError, match="connectivity"):
        read_raw(tmp_path, "masks", connectivity=6)


def test_colour_links_to_another_class_make_it_component_based(tmp_path):
    # most cells have no micronucleus: the third nucleus's colour appears in no mn mask
    nuclei = _rgba(40, 40, [(2, 2, 12, 12, (10, 20, 30)), (20, 20, 30, 30, (40, 50, 60)),
                            (2, 20, 10, 30, (70, 80, 90))])
    # two touching micronuclei painted in two parents' colours, and two apart sharing one colour
    mn = _rgba(40, 40, [(15, 2, 17, 4, (10, 20, 30)), (15, 4, 17, 6, (40, 50, 60)),
                        (33, 33, 35, 35, (40, 50, 60)), (36, 36, 38, 38, (40, 50, 60))])
    _set(tmp_path, "s", np.zeros((40, 40), np.uint8), {"nucleus": nuclei, "mn": mn})
    raw = read_raw(tmp_path, "masks", class_names={"mn": "micronucleus"})
    assert raw.classes == ["micronucleus", "nucleus"]
    assert _boxes(raw, "micronucleus") == [(2, 15, 6, 17), (33, 33, 35, 35), (36, 36, 38, 38)]
    assert len(_boxes(raw, "nucleus")) == 3
    assert raw.notes["linked_colour_fraction"] == {"micronucleus": 1.0, "nucleus": round(2 / 3, 4)}
    assert raw.notes["instance_rule"]["micronucleus"].startswith("connected component")
    assert raw.notes["instance_rule"]["nucleus"].startswith("colour x connected component")
    forced = read_raw(tmp_path, "masks", class_names={"mn": "micronucleus"}, instances={"micronucleus": "colour"})
    assert len(_boxes(forced, "micronucleus")) == 4
    with pytest.raises(ValueError, match="instances names class 'micronucleus'"):
        read_raw(tmp_path, "masks", instances={"micronucleus": "colour"})
    # colours shared both ways equally (e.g. one small palette): neither class is taken for links
    both = tmp_path / "palette"
    _set(both, "p", np.zeros((40, 40), np.uint8), {"nucleus": nuclei[..., :], "mn": nuclei.copy()})
    rules = read_raw(both, "masks").notes["instance_rule"]
    assert all(r.startswith("colour x connected component") for r in rules.values())
    with pytest.raises(ValueError, match="renames"):
        read_raw(tmp_path, "masks", class_names={"nuclei": "x"})


def test_missing_masks_size_mismatch_orphans_and_odd_names(tmp_path):
    root = tmp_path / "src" / "experiment" / "plate 1"  # the output must lie outside the source
    img = np.zeros((16, 16), np.uint8)
    sq = _rgba(16, 16, [(2, 2, 5, 5, (1, 2, 3))])
    name = "MAX_2022-12-29 ATF3 tilescan.lif - BAY"
    _set(root, name, img, {"nucleus": sq, "mn": sq}, suffix=".tif")
    _set(root, "no_mn", img, {"nucleus": sq})
    _set(root, "bad_size", img, {"nucleus": sq, "mn": _rgba(8, 8, [(1, 1, 2, 2, (1, 1, 1))])})
    _set(root, "unlabelled", img, {})
    Image.fromarray(sq).save(root / "mn_masks" / "orphan.png")
    out = convert(tmp_path / "src", "masks", tmp_path / "out")
    meta = load_dataset(out).images.set_index("image_id")
    base = "experiment/plate 1"
    assert sorted(meta.index) == sorted(f"{base}/{s}" for s in (name, "no_mn", "bad_size", "unlabelled"))
    assert meta.loc[f"{base}/{name}", "n_objects"] == 2
    assert meta.loc[f"{base}/no_mn", "missing_classes"] == "mn"
    assert meta.loc[f"{base}/no_mn", "n_objects"] == 1
    assert meta.loc[f"{base}/bad_size", "missing_classes"] == "mn"
    assert not meta.loc[f"{base}/unlabelled", "labelled"]
    problems = _problems(out)
    missing = problems.query("kind == 'missing_label_file'")
    assert set(zip(missing["file"].map(lambda f: Path(f).stem), missing["object"])) == \
        {("no_mn", "mn"), ("unlabelled", "")}
    mismatch = problems.query("kind == 'size_mismatch'")
    assert len(mismatch) == 1 and mismatch.iloc[0]["severity"] == "error"
    assert "8x8" in mismatch.iloc[0]["detail"] and mismatch.iloc[0]["file"].endswith("mn_masks/bad_size.png")
    orphan = problems.query("kind == 'missing_image'")
    assert list(orphan["file"]) == [str(root / "mn_masks" / "orphan.png")]
    assert (meta["split"] == "").all()


def test_splits_from_folder_names_and_set_folder_as_source(tmp_path):
    img = np.zeros((8, 8), np.uint8)
    sq = _rgba(8, 8, [(1, 1, 3, 3, (5, 5, 5))])
    for split in ("train", "val", "test"):
        _set(tmp_path / split / "set A", "1", img, {"cell": sq})
    raw = read_raw(tmp_path, "masks")
    assert {im.image_id: im.meta["split"] for im in raw.images} == \
        {"train/set A/1": "train", "val/set A/1": "val", "test/set A/1": "test"}
    one = read_raw(tmp_path / "val" / "set A", "masks")
    assert [im.image_id for im in one.images] == ["1"] and one.images[0].meta["split"] == ""


def test_mask_codes_and_labelling_units():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 255)      # black with alpha is foreground
    rgba[0, 1] = (1, 2, 3, 255)
    rgba[1, 2] = (9, 9, 9, 0)        # colour without alpha is background
    code = mask_codes(rgba)
    assert code[0, 0] > 0 and code[0, 1] > 0 and code[0, 0] != code[0, 1] and code[1, 2] == 0
    rgb = rgba[..., :3]
    assert (mask_codes(rgb) != 0).sum() == 2  # RGB: black is background
    with pytest.raises(ValueError, match="integers"):
        mask_codes(np.zeros((2, 2), np.float32))
    lab = label_instances(code, rule="colour")
    assert lab.max() == 2
    assert label_instances(code, rule="component").max() == 1
