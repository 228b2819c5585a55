"""Splits survive a re-import of a grown raw folder, and copies never straddle splits.

The user's ordinary path, on real BCCD images through the command line: convert 60 images,
``split --seed 7``, add 12 images to the raw folder, convert again (into a new folder, and over
the old one with ``--overwrite``), ``split --seed 7``: no earlier image changes split. Before,
placement depended on which other images existed and 22 of 60 moved; ``--exact`` still works
that way and is shown to move images, which is why it is not the default.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import BCCD, checksums
from workbench.cli.main import main
from workbench.data.canonical import read_classes, read_meta, save_meta
from workbench.data.splits import assign_splits, split_dataset, straddling_duplicates, unit_keys

ALL = sorted(p.stem for p in (BCCD / "Annotations").glob("*.xml"))
FIRST = ALL[:80:4] + ALL[100:140]  # 60 images
GROWTH = ALL[1:48:4]  # 12 more, interleaved by name with the first ones


def add_images(raw: Path, ids: list[str]) -> Path:
    """Copy real BCCD images and their XML into a VOC folder (no official split)."""
    (raw / "Annotations").mkdir(parents=True, exist_ok=True)
    (raw / "JPEGImages").mkdir(exist_ok=True)
    for i in ids:
        shutil.copy(BCCD / "Annotations" / f"{i}.xml", raw / "Annotations")
        shutil.copy(BCCD / "JPEGImages" / f"{i}.jpg", raw / "JPEGImages")
    return raw


def cli(*args: str) -> None:
    assert main([str(a) for a in args]) == 0


def add_slides(root: Path) -> None:
    """A user column joined after import: four consecutive BCCD numbers per slide."""
    meta = read_meta(root)
    number = meta["image_id"].str.extract(r"(\d+)$")[0].astype(int)
    save_meta(root, meta.assign(slide=(number // 4).map("slide{:03d}".format)), read_classes(root))


def split_of(root: Path) -> pd.Series:
    meta = read_meta(root)
    return meta.set_index("image_id")["split"]


@pytest.mark.parametrize("group_by", [None, "slide"])
@pytest.mark.slow
def test_reimport_after_growth_moves_no_existing_image(tmp_path, capsys, group_by):
    raw = add_images(tmp_path / "raw", FIRST)
    extra = ["--group-by", group_by] if group_by else []

    def convert_and_split(out: Path, *more: str) -> pd.Series:
        cli("convert", raw, "--format", "voc", "--out", out, *more)
        if group_by:
            add_slides(out)
        cli("split", out, "--seed", "7", *extra)
        return split_of(out)

    first = convert_and_split(tmp_path / "v1")
    assert len(first) == 60 and set(first) == {"train", "val", "test"}
    add_images(raw, GROWTH)
    before = checksums(raw)
    again = convert_and_split(tmp_path / "v2")  # a new folder
    over = convert_and_split(tmp_path / "v1", "--overwrite")  # over the old one
    assert checksums(raw) == before
    for grown in (again, over):
        assert len(grown) == 72
        moved = (grown[first.index] != first).sum()
        assert moved == 0, f"{moved} of 60 images changed split"
    if group_by:
        per_slide = pd.DataFrame({"split": again, "slide": read_meta(tmp_path / "v2").set_index("image_id")["slide"]})
        assert (per_slide.groupby("slide")["split"].nunique() == 1).all()
    printed = capsys.readouterr().out
    assert "off" in printed and "a few images off" in printed  # achieved vs target, said plainly


@pytest.mark.slow
def test_exact_placement_is_not_stable_across_reimports(tmp_path):
    """Why hash placement is the default: exact counts move images when the folder grows."""
    raw = add_images(tmp_path / "raw", FIRST)
    cli("convert", raw, "--format", "voc", "--out", tmp_path / "v1")
    cli("split", tmp_path / "v1", "--seed", "7", "--exact")
    add_images(raw, GROWTH)
    cli("convert", raw, "--format", "voc", "--out", tmp_path / "v2")
    cli("split", tmp_path / "v2", "--seed", "7", "--exact")
    first, again = split_of(tmp_path / "v1"), split_of(tmp_path / "v2")
    assert (again[first.index] != first).sum() > 0


@pytest.mark.slow
def test_exact_duplicates_never_straddle_splits(tmp_path):
    """Byte copies and a lossless re-encoding under new names share their original's split."""
    raw = add_images(tmp_path / "raw", FIRST[:40])
    copies = FIRST[:12]
    for k, i in enumerate(copies):
        name = f"copy_{k:02d}"
        shutil.copy(BCCD / "Annotations" / f"{i}.xml", raw / "Annotations" / f"{name}.xml")
        if k % 2:  # same pixels, another file format
            Image.open(BCCD / "JPEGImages" / f"{i}.jpg").save(raw / "JPEGImages" / f"{name}.png")
        else:
            shutil.copy(BCCD / "JPEGImages" / f"{i}.jpg", raw / "JPEGImages" / f"{name}.jpg")
    cli("convert", raw, "--format", "voc", "--out", tmp_path / "c")
    meta = read_meta(tmp_path / "c")
    assert meta["pixel_sha256"].nunique() == 40  # 12 exact duplicates found by their pixels
    for seed in range(6):
        for exact in (False, True):
            split = assign_splits(meta, seed=seed, exact=exact)
            per_copy = pd.DataFrame({"px": meta["pixel_sha256"], "split": split}).groupby("px")["split"].nunique()
            assert (per_copy == 1).all(), (seed, exact)
    # a copy that arrives later joins its original's split, in a new folder too
    cli("split", tmp_path / "c", "--seed", "3")
    split = split_of(tmp_path / "c")
    for k, i in enumerate(copies):
        assert split[f"copy_{k:02d}"] == split[i]


@pytest.mark.slow
def test_duplicates_already_straddling_through_kept_splits_are_reported(tmp_path, bccd_canonical):
    root = shutil.copytree(bccd_canonical, tmp_path / "c")
    meta = read_meta(root)
    # a copy of an official image listed in the other split (as a careless merge would do)
    other = "val" if meta["split"].iloc[0] == "train" else "train"
    copy = meta.iloc[[0]].assign(image_id="copy_of_first", split=other)
    save_meta(root, pd.concat([meta, copy], ignore_index=True), read_classes(root))
    summary = split_dataset(root)
    assert summary["moved"].sum() == 0  # kept assignments win
    notes = " ".join(summary.attrs["notes"])
    assert "1 set(s) of exact duplicates lie in different splits" in notes and "--reassign" in notes
    grown = read_meta(root)
    assert len(straddling_duplicates(grown, grown["split"])) == 1


@pytest.mark.slow
def test_unit_keys_join_duplicates_groups_and_near_duplicates_when_asked(bccd_canonical):
    meta = read_meta(bccd_canonical).assign(split="")
    # BCCD 00037 and 00038: the same field at another focus, 4 perceptual-hash bits apart
    pair = meta["image_id"].isin(["BloodImage_00037", "BloodImage_00038"])
    keys = unit_keys(meta)
    assert keys[pair].nunique() == 2 and keys.nunique() == len(meta)
    near = unit_keys(meta, near_duplicates=6)
    assert near[pair].nunique() == 1
    apart = [s for s in range(20) if assign_splits(meta, seed=s)[pair].nunique() == 2]
    assert apart  # without the option some seed separates them ...
    for s in apart:  # ... with it, never
        assert assign_splits(meta, seed=s, near_duplicates=6)[pair].nunique() == 1
    # a group and a copy outside it: one unit, so the copy cannot leak the group
    df = meta.head(6).assign(slide=["a", "a", "b", "b", "", ""])
    df.loc[df.index[4], "pixel_sha256"] = df.loc[df.index[0], "pixel_sha256"]
    k = unit_keys(df, group_by="slide")
    assert k.iloc[0] == k.iloc[1] == k.iloc[4] == "group:a" and k.iloc[2] == "group:b"
    assert k.iloc[5].startswith("pixels:")
    assert np.unique(k).size == 3
