"""Nested training subsets and the pretrain-vs-scratch study's bookkeeping (real BCCD)."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import checksums
from workbench.data.canonical import load_dataset, read_meta
from workbench.data.subsets import choose, subset_dataset
from workbench.studies.pretrain_vs_scratch import (
    EQUAL, FINETUNE, PROFILES, SCRATCH, TransferProfile, TransferResult, equal_compute_epochs, headline)


def test_subsets_are_nested_deterministic_and_leave_the_source_alone(bccd_canonical, tmp_path):
    before = checksums(bccd_canonical)
    meta = read_meta(bccd_canonical)
    small = choose(meta, keep={"train": 0.1}, seed=3)
    large = choose(meta, keep={"train": 0.5}, seed=3)
    assert (small <= large).all()  # nested
    assert small.equals(choose(meta, keep={"train": 0.1}, seed=3))
    assert not small.equals(choose(meta, keep={"train": 0.1}, seed=4))
    assert int((small & (meta["split"] == "train")).sum()) == round(0.1 * 205)
    assert (small[meta["split"] == "val"]).all()  # other splits whole
    out = subset_dataset(bccd_canonical, tmp_path / "sub", keep={"train": 20, "val": 10}, seed=0)
    ds = load_dataset(out)
    assert ds.images["split"].value_counts().to_dict() == {"train": 20, "val": 10}
    full = load_dataset(bccd_canonical).objects
    expect = full[full.image_id.isin(set(ds.images.image_id))]
    assert len(ds.objects) == len(expect)
    assert checksums(bccd_canonical) == before
    with pytest.raises(ValueError, match="fraction"):
        choose(meta, keep={"train": 1.5}, seed=0)
    with pytest.raises(ValueError, match="no images in split 'test'"):
        choose(meta, keep={"test": 0.5}, seed=0)


def test_equal_compute_counts_pretraining_in_target_images_seen():
    prof = TransferProfile("t", pretrain_epochs=8, finetune_epochs=5)
    # 8 pretraining epochs over 60 source tiles = 480 images = 10 epochs over 48 target images
    assert equal_compute_epochs(prof, 60, 48) == 5 + 10
    assert equal_compute_epochs(prof, 61, 48) == 5 + 11  # rounded up: never less compute
    with pytest.raises(ValueError):
        equal_compute_epochs(prof, 60, 0)


def test_headline_is_fine_tune_minus_scratch_per_seed():
    runs = pd.DataFrame([
        {"arm": SCRATCH, "seed": 0, "fraction": 1.0, "map50": 0.30, "map50_95": 0.10},
        {"arm": FINETUNE, "seed": 0, "fraction": 1.0, "map50": 0.45, "map50_95": 0.20},
        {"arm": EQUAL, "seed": 0, "fraction": 1.0, "map50": 0.40, "map50_95": 0.15},
        {"arm": FINETUNE, "seed": 0, "fraction": 0.5, "map50": 0.99, "map50_95": 0.99},
    ])
    h = headline(TransferResult(PROFILES["smoke"], runs, pd.DataFrame()))
    assert h.loc[0, "map50: fine-tune - scratch"] == pytest.approx(0.15)
    assert h.loc[0, "map50: fine-tune - equal-compute scratch"] == pytest.approx(0.05)
    assert h.loc[0, "map50_95: fine-tune - scratch"] == pytest.approx(0.10)
