"""Duplicate / near-duplicate images across and within splits, on real images."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BCCD, MNFINDER
from workbench.data.canonical import read_meta
from workbench.data.importers import convert
from workbench.data.leakage import COLUMNS, find_duplicates, hamming_pairs, leakage_summary, phash_array


def test_hamming_pairs_hand_computed_and_chunked():
    h = np.array([0b0000, 0b0001, 0b0111, 0xFFFF_FFFF_FFFF_FFFF, 0b0011], dtype=np.uint64)
    i, j, d = hamming_pairs(h, 2)
    got = sorted(zip(i.tolist(), j.tolist(), d.tolist()))
    assert got == [(0, 1, 1), (0, 4, 2), (1, 2, 2), (1, 4, 1), (2, 4, 1)]
    # tiny blocks (many chunks) give exactly the brute-force answer
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, 40).astype(np.uint64)
    h = np.concatenate([base, base ^ flips, rng.integers(0, 2**63, 200, dtype=np.uint64)])
    i, j, d = hamming_pairs(h, 6, block_elems=97)
    full = np.bitwise_count(h[:, None] ^ h[None, :])
    bi, bj = np.nonzero(np.triu(full <= 6, k=1))
    assert sorted(zip(i.tolist(), j.tolist())) == sorted(zip(bi.tolist(), bj.tolist()))
    assert (d == full[i, j]).all() and len(i) >= 40


def test_phash_parsing_skips_missing_hashes():
    vals, valid = phash_array(["c33081ee32bee633", "", "not-hex", "ff"])
    assert valid.tolist() == [True, False, False, True]
    assert vals[0] == np.uint64(0xC33081EE32BEE633) and vals[3] == 255


def test_bccd_official_split_has_one_near_duplicate_across_val_and_train(bccd_canonical):
    meta = read_meta(bccd_canonical)
    pairs = find_duplicates(meta)
    assert list(pairs.columns) == COLUMNS
    # BloodImage_00037 (val) and 00038 (train): the same field at another focus, 4 bits apart
    assert pairs.to_dict(orient="records") == [{
        "image_a": "BloodImage_00037", "image_b": "BloodImage_00038", "split_a": "val",
        "split_b": "train", "kind": "near", "distance": 4, "cross_split": True}]
    # why 6 is a safe default: unrelated BCCD images are never closer than 14 bits
    assert len(find_duplicates(meta, threshold=13)) == 1
    assert len(find_duplicates(meta, threshold=14)) > 1
    assert find_duplicates(meta, threshold=-1).empty  # near search off, no exact duplicates


def _voc_with_copies(dest: Path) -> Path:
    """Six real BCCD images + a byte copy, a PNG (lossless) copy and a JPEG re-encode of three."""
    stems = [f"BloodImage_0000{k}" for k in range(6)]
    (dest / "Annotations").mkdir(parents=True)
    (dest / "JPEGImages").mkdir()
    (dest / "ImageSets" / "Main").mkdir(parents=True)
    for s in stems:
        shutil.copy(BCCD / "Annotations" / f"{s}.xml", dest / "Annotations" / f"{s}.xml")
        shutil.copy(BCCD / "JPEGImages" / f"{s}.jpg", dest / "JPEGImages" / f"{s}.jpg")
    a, b, c = stems[0], stems[1], stems[2]
    shutil.copy(BCCD / "JPEGImages" / f"{a}.jpg", dest / "JPEGImages" / "copy_A.jpg")
    with Image.open(BCCD / "JPEGImages" / f"{b}.jpg") as im:
        im.save(dest / "JPEGImages" / "png_B.png")  # other file, same decoded pixels
    with Image.open(BCCD / "JPEGImages" / f"{c}.jpg") as im:
        im.save(dest / "JPEGImages" / "reencoded_C.jpg", quality=70)  # near duplicate
    for src, new in ((a, "copy_A"), (b, "png_B"), (c, "reencoded_C")):
        shutil.copy(BCCD / "Annotations" / f"{src}.xml", dest / "Annotations" / f"{new}.xml")
    (dest / "ImageSets/Main/train.txt").write_text("\n".join(stems[:4] + ["png_B"]) + "\n")
    (dest / "ImageSets/Main/val.txt").write_text("\n".join(stems[4:] + ["copy_A", "reencoded_C"]) + "\n")
    return dest


def test_real_copies_under_new_ids_are_found(tmp_path):
    root = convert(_voc_with_copies(tmp_path / "voc"), "voc", tmp_path / "canon")
    meta = read_meta(root)
    pairs = find_duplicates(meta).set_index(["image_a", "image_b"])
    assert len(pairs) == 3
    a = pairs.loc[("BloodImage_00000", "copy_A")]
    assert (a["kind"], a["distance"], a["split_a"], a["split_b"], a["cross_split"]) == \
        ("exact", 0, "train", "val", True)
    b = pairs.loc[("BloodImage_00001", "png_B")]  # a PNG: other bytes, equal pixels
    assert (b["kind"], b["cross_split"]) == ("exact", False)
    c = pairs.loc[("BloodImage_00002", "reencoded_C")]
    assert c["kind"] == "near" and c["distance"] <= 2 and c["cross_split"]
    summary = leakage_summary(find_duplicates(meta))
    assert summary[summary["cross_split"]]["pairs"].sum() == 2


@pytest.mark.skipif(importlib.util.find_spec("workbench.data.importers.masks") is None,
                    reason="the masks importer (MNFinder format) is not in this checkout")
@pytest.mark.slow
def test_mnfinder_16bit_image_imported_twice_is_an_exact_cross_split_duplicate(tmp_path):
    # MNFinder's source had a test image pixel-identical to training 2022-05-26_RPE1/1.tif.
    src = MNFINDER / "training-data" / "2022-05-26_RPE1"
    for split, name in (("training-data", "setA"), ("validation-data", "setB")):
        for sub in ("images", "nucleus_masks", "mn_masks"):
            (tmp_path / "src" / split / name / sub).mkdir(parents=True)
        shutil.copy(src / "images" / "1.tif", tmp_path / "src" / split / name / "images" / "1.tif")
        for sub in ("nucleus_masks", "mn_masks"):
            shutil.copy(src / sub / "1.png", tmp_path / "src" / split / name / sub / "1.png")
    shutil.copy(src / "images" / "2.tif", tmp_path / "src" / "training-data" / "setA" / "images" / "2.tif")
    for sub in ("nucleus_masks", "mn_masks"):
        shutil.copy(src / sub / "2.png", tmp_path / "src" / "training-data" / "setA" / sub / "2.png")
    root = convert(tmp_path / "src", "masks", tmp_path / "canon")
    meta = read_meta(root)
    assert set(meta["bit_depth"]) == {16}
    pairs = find_duplicates(meta)
    assert pairs[["image_a", "image_b", "kind", "cross_split"]].to_dict(orient="records") == [
        {"image_a": "training-data/setA/1", "image_b": "validation-data/setB/1", "kind": "exact",
         "cross_split": True}]
