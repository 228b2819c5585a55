"""Composition builder on constructed pools with known compositions, and the training-length rule."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench.models.runs import record_training_length
from workbench.data.library.composition import (
    apportion, compose, parse_ratios, training_length)

GROUPS = ("good", "dense", "sparse")


def pool(counts: dict[str, int], *, positive_every: int | None = None, levels: int = 1) -> pd.DataFrame:
    """A pool with ``counts`` images per group; every ``positive_every``-th image positive."""
    rows = []
    for g, n in counts.items():
        for k in range(n):
            rows.append({"image_id": f"{g}_{k:03d}", "group": g, "style_level": k % levels,
                         "positive": positive_every is not None and k % positive_every == 0})
    return pd.DataFrame(rows)


def test_apportion_is_exact_and_largest_remainder():
    assert apportion(10, {"good": 6, "dense": 2, "sparse": 2}) == {"good": 6, "dense": 2, "sparse": 2}
    assert apportion(7, {"a": 1, "b": 1, "c": 1}) == {"a": 3, "b": 2, "c": 2}  # tie: first group
    assert sum(apportion(101, {"a": 6, "b": 2, "c": 2}).values()) == 101
    assert parse_ratios("6:2:2", GROUPS) == {"good": 6.0, "dense": 2.0, "sparse": 2.0}
    with pytest.raises(ValueError, match="3 groups"):
        parse_ratios("6:2", GROUPS)
    with pytest.raises(ValueError, match="positive sum"):
        apportion(5, {"a": 0, "b": 0})


def test_ample_pool_meets_6_2_2_and_positive_share_exactly():
    p = pool({"good": 100, "dense": 50, "sparse": 50}, positive_every=10)  # 10 % positives
    c = compose(p, n=50, ratios=parse_ratios("6:2:2", GROUPS), by="group", min_positive=0.2, seed=1)
    assert c.ok and c.warnings == []
    assert c.selected["group"].value_counts().to_dict() == {"good": 30, "dense": 10, "sparse": 10}
    assert c.selected["positive"].sum() >= 10  # at least one positive in every 5 images
    rep = c.report.set_index("item")
    assert rep.loc["good", "achieved_share"] == pytest.approx(0.6)
    assert rep.loc["positive", "target_n"] == 10 and bool(rep["met"].all())
    assert c.selected["image_id"].is_unique


def test_deterministic_by_seed_and_nested_without_positive_swaps():
    p = pool({"good": 60, "dense": 20, "sparse": 20})
    a = compose(p, n=20, ratios={"good": 6, "dense": 2, "sparse": 2}, by="group", seed=3)
    b = compose(p, n=20, ratios={"good": 6, "dense": 2, "sparse": 2}, by="group", seed=3)
    big = compose(p, n=40, ratios={"good": 6, "dense": 2, "sparse": 2}, by="group", seed=3)
    other = compose(p, n=20, ratios={"good": 6, "dense": 2, "sparse": 2}, by="group", seed=4)
    assert a.selected["image_id"].tolist() == b.selected["image_id"].tolist()
    assert set(a.selected["image_id"]) <= set(big.selected["image_id"])
    assert set(a.selected["image_id"]) != set(other.selected["image_id"])


def test_short_group_warns_and_library_shrinks_or_fills():
    p = pool({"good": 100, "dense": 3, "sparse": 50})
    c = compose(p, n=50, ratios=parse_ratios("6:2:2", GROUPS), by="group", seed=0)
    assert not c.ok and any("'dense'" in w and "pool has 3" in w for w in c.warnings)
    assert len(c.selected) == 43  # 7 short of 10 dense: dense gives what it has; no silent top-up
    rep = c.report.set_index("item")
    assert rep.loc["dense", "achieved_n"] == 3 and not rep.loc["dense", "met"]
    assert rep.loc["dense", "available"] == 3
    filled = compose(p, n=50, ratios=parse_ratios("6:2:2", GROUPS), by="group", seed=0, fill=True)
    assert len(filled.selected) == 50
    assert filled.selected["group"].value_counts()["good"] == 37  # largest-ratio group fills first
    assert any("fill the shortfall" in w for w in filled.warnings)


def test_positive_share_enforced_by_swaps_within_groups():
    p = pool({"good": 60, "dense": 20, "sparse": 20}, positive_every=15)  # few positives
    plain = compose(p, n=20, ratios=parse_ratios("6:2:2", GROUPS), by="group", seed=0)
    c = compose(p, n=20, ratios=parse_ratios("6:2:2", GROUPS), by="group", seed=0, min_positive=0.2)
    assert c.selected["group"].value_counts().to_dict() == plain.selected["group"].value_counts().to_dict()
    assert plain.selected["positive"].sum() < 4 <= c.selected["positive"].sum()  # the swaps made the difference
    assert c.ok
    kept = set(plain.selected["image_id"]) & set(c.selected["image_id"])
    assert len(kept) == 20 - (c.selected["positive"].sum() - plain.selected["positive"].sum())  # one out per one in


def test_pool_without_enough_positives_warns_with_numbers():
    p = pool({"good": 30, "dense": 10, "sparse": 10}, positive_every=30)  # 3 positives in all
    c = compose(p, n=40, ratios=parse_ratios("6:2:2", GROUPS), by="group", seed=0, min_positive=0.2)
    assert c.selected["positive"].sum() == 3
    assert any("3 of 40" in w and "needs 8" in w for w in c.warnings)
    rep = c.report.set_index("item")
    assert not rep.loc["positive", "met"] and rep.loc["positive", "achieved_n"] == 3


def test_level_and_metadata_filters():
    p = pool({"good": 30, "dense": 30, "sparse": 30}, levels=6).assign(colour=lambda d: ["grey", "colour"] * 45)
    c = compose(p, n=12, ratios={"good": 1, "dense": 1, "sparse": 1}, by="group", levels=[0, 1, 2],
                where={"colour": "colour"}, seed=0)
    assert c.selected["style_level"].isin([0, 1, 2]).all() and (c.selected["colour"] == "colour").all()
    assert c.settings["after_filter"] == int((p["style_level"].isin([0, 1, 2]) & (p["colour"] == "colour")).sum())
    with pytest.raises(ValueError, match="no column 'stain'"):
        compose(p, n=5, ratios={"good": 1}, by="group", where={"stain": "he"})
    with pytest.raises(ValueError, match="min_positive"):
        compose(p, n=5, ratios={"good": 1}, by="group", min_positive=1.5)


def test_training_length_rule_of_thumb_and_override(tmp_path):
    t = training_length(100, batch=4, factor=2.0)
    assert t.iterations == 200 and t.epochs_rule == 8 and t.epochs == 8 and not t.overridden
    t = training_length(90, batch=16, factor=1.5)  # 6 steps per epoch, 135 iterations -> 23 epochs
    assert (t.iterations, t.epochs_rule) == (135, 23)
    o = training_length(90, batch=16, epochs=5)
    assert o.epochs == 5 and o.epochs_rule == 30 and o.overridden
    with pytest.raises(ValueError, match="at least one"):
        training_length(0, batch=4)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"run_id": "run", "status": "finished"}))
    rec = record_training_length(run, o)
    saved = json.loads((run / "run.json").read_text())
    assert saved["training_length"]["epochs_rule"] == 30 and saved["training_length"]["overridden"] is True
    assert saved["status"] == "finished" and rec["training_length"]["rule"].startswith("iterations")
