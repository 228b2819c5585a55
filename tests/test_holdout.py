"""An independent test split carved out of val: seeded, stable, grouped, recorded; raw untouched."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench.data.canonical import read_meta
from workbench.data.holdout import with_test_split
from workbench.data.splits import hold_out

from conftest import checksums


def _meta(n_val: int, n_train: int = 10, groups: list[str] | None = None) -> pd.DataFrame:
    ids = [f"img{i:03d}" for i in range(n_train + n_val)]
    meta = pd.DataFrame({"image_id": ids, "split": ["train"] * n_train + ["val"] * n_val})
    if groups is not None:
        meta["slide"] = ["t"] * n_train + groups
    return meta


@pytest.mark.parametrize("n_val", [1, 2, 7, 87])
def test_exact_hold_out_moves_half_of_val_and_never_touches_train(n_val):
    meta = _meta(n_val)
    split = hold_out(meta, fraction=0.5, seed=0, exact=True)
    assert (split[:10] == "train").all()
    n_test = int((split == "test").sum())
    assert abs(n_test - n_val / 2) <= 0.5  # within half an image of the target
    assert n_test + int((split == "val").sum()) == n_val


def test_hold_out_by_hash_is_stable_when_val_grows():
    small, grown = _meta(40), _meta(80)
    a = hold_out(small, fraction=0.5, seed=0)
    b = hold_out(grown, fraction=0.5, seed=0)
    assert (b[:10] == "train").all()
    assert b[: len(small)].equals(a)  # the first 40 val images keep their fate
    assert abs(int((b == "test").sum()) - 40) <= 3 * (80 * 0.25) ** 0.5  # about half


def test_hold_out_is_deterministic_and_seeded():
    meta = _meta(40)
    a, b = hold_out(meta, seed=0), hold_out(meta, seed=0)
    assert a.equals(b)
    assert not a.equals(hold_out(meta, seed=1))


def test_hold_out_keeps_groups_together():
    groups = [f"slide{i // 3}" for i in range(12)]  # four slides of three val images
    meta = _meta(12, groups=groups)
    split = hold_out(meta, group_by="slide", fraction=0.5)
    per_group = pd.DataFrame({"g": meta["slide"], "s": split})[10:].groupby("g")["s"].nunique()
    assert (per_group == 1).all()
    assert int((split == "test").sum()) == 6


def test_hold_out_refuses_bad_requests():
    with pytest.raises(ValueError, match="fraction"):
        hold_out(_meta(4), fraction=1.0)
    with pytest.raises(ValueError, match="no image is in split 'val'"):
        hold_out(_meta(0))
    already = _meta(4).assign(split=["train"] * 10 + ["val", "val", "test", "test"])
    with pytest.raises(ValueError, match="already has 2 'test'"):
        hold_out(already)
    with pytest.raises(ValueError, match="two different splits"):
        hold_out(_meta(4), source="val", target="val")


def test_with_test_split_on_real_bccd_copies_and_records(bccd_canonical, tmp_path):
    before = checksums(bccd_canonical)
    out = with_test_split(bccd_canonical, tmp_path / "bccd_heldout")
    meta = read_meta(out)
    counts = meta["split"].value_counts().to_dict()
    assert counts == {"train": 205, "val": 35, "test": 52}  # BCCD official: train 205, val 87; hash placement
    original = read_meta(bccd_canonical).set_index("image_id")["split"]
    moved = meta.set_index("image_id")["split"]
    assert (original[moved == "test"] == "val").all()  # test comes only from val
    assert (original[moved == "train"] == "train").all()
    info = json.loads((out / "dataset.json").read_text())
    assert info["hold_out"]["images"]["test"] == 52 and info["hold_out"]["seed"] == 0
    assert "stable" in info["hold_out"]["method"]
    assert (out / "test.txt").read_text().count("\n") == 52
    exact = read_meta(with_test_split(bccd_canonical, tmp_path / "bccd_exact", exact=True))
    assert exact["split"].value_counts().to_dict() == {"train": 205, "val": 43, "test": 44}
    assert checksums(bccd_canonical) == before  # the source dataset is never modified
