"""Nested training subsets and the pretrain-vs-scratch study's bookkeeping (real BCCD)."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import checksums
from workbench.data.canonical import load_dataset, read_meta
from workbench.data.subsets import choose, subset_dataset
from workbench.studies.pretrain_vs_scratch import (
    EQUAL, FINETUNE, PRETRAIN, SCRATCH, SUMMARY_COLUMNS, TransferProfile, by_arm, epoch_table, equal_compute_epochs,
    headline, summary)


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


def test_equal_compute_counts_pretraining_in_target_pixels_seen():
    prof = TransferProfile("t", pretrain_epochs=8, finetune_epochs=5)
    # 8 pretraining epochs over 60 source tiles = 480 images = 10 epochs over 48 target images
    assert equal_compute_epochs(prof, 60, 48) == 5 + 10
    assert equal_compute_epochs(prof, 61, 48) == 5 + 11  # rounded up: never less compute
    with pytest.raises(ValueError):
        equal_compute_epochs(prof, 60, 0)
    # pixels, not images: source patches at half the target side cost a quarter each
    prof = TransferProfile("t", imgsz=640, pretrain_epochs=8, finetune_epochs=5)
    assert equal_compute_epochs(prof, 60, 48, source_imgsz=320) == 5 + 3  # 480 / 4 / 48 = 2.5 -> 3
    assert equal_compute_epochs(prof, 60, 48, source_imgsz=640) == 5 + 10


def test_cells_run_the_headline_first_and_respect_the_seed_subsets(tmp_path):
    from workbench.studies.pretrain_vs_scratch import PretrainVsScratchStudy

    study = PretrainVsScratchStudy("bccd", profile="cpu", out_dir=tmp_path, device="cpu")
    cells = [(c.config["arm"], c.config["seed"], c.config["fraction"]) for c in study.cells()]
    assert cells[0] == (PRETRAIN, 0, 1.0)  # the one shared pretraining first
    cells = cells[1:]
    assert cells[:6] == [(arm, seed, 1.0) for seed in (0, 1, 2) for arm in (SCRATCH, FINETUNE)]
    assert [c for c in cells if c[0] == EQUAL] == [(EQUAL, seed, 1.0) for seed in (0, 1, 2)]  # a headline arm
    below = [c for c in cells if c[2] < 1.0]
    assert {c[1] for c in below} == {0} and len(below) == 6
    assert cells.index(below[0]) > cells.index((EQUAL, 2, 1.0))


def test_headline_adds_the_spread_over_seeds():
    runs = pd.DataFrame([{"arm": arm, "seed": seed, "fraction": 1.0, "map50": m, "map50_95": m / 2}
                         for seed, (a, b) in enumerate([(0.5, 0.8), (0.6, 0.8), (0.55, 0.9)])
                         for arm, m in ((SCRATCH, a), (FINETUNE, b))])
    h = headline(runs).set_index("seed")
    assert h.loc["mean", "map50: fine-tune - scratch"] == pytest.approx((0.3 + 0.2 + 0.35) / 3)
    assert h.loc["min", "map50: fine-tune - scratch"] == pytest.approx(0.2)
    assert h.loc["max", "map50: fine-tune - scratch"] == pytest.approx(0.35)


def test_cpu_profile_shares_one_pretraining_on_all_monuseg_tiles_across_seeds(tmp_path):
    from workbench.studies.pretrain_vs_scratch import PretrainVsScratchStudy

    study = PretrainVsScratchStudy("bccd", profile="cpu", out_dir=tmp_path)
    cells = study.cells()
    pre = [c for c in cells if c.config["arm"] == PRETRAIN]
    assert [(c.key, c.config["seed"]) for c in pre] == [("pretrain_f100_s0", 0)]  # once, shared
    assert cells[0] is pre[0]  # the fine-tunes wait for it: it runs first
    full = [c for c in cells if c.config["fraction"] == 1.0 and c.config["arm"] != PRETRAIN]
    assert sorted({c.config["seed"] for c in full}) == [0, 1, 2]
    assert {c.config["arm"] for c in full} == {SCRATCH, FINETUNE, EQUAL}
    assert {c.config["seed"] for c in cells if c.config["fraction"] < 1.0} == {0}  # label efficiency: seed 0
    fine = [c for c in cells if c.config["arm"] == FINETUNE]
    assert {c.needs for c in fine} == {("pretrain_f100_s0",)}
    assert study.source_weights(fine[-1]) == study.run_dir("pretrain_f100_s0") / "weights" / "best.pt"
    p = study.profile
    assert (p.imgsz, p.batch, p.finetune_epochs) == (416, 16, 20)
    assert (p.full_source, p.source_tile, p.pretrain_imgsz, p.pretrain_epochs) == (True, 320, 320, 30)
    assert study.source_imgsz() == 320  # equal compute counts the source's pixels at the size it trained at


def test_headline_is_fine_tune_minus_scratch_per_seed():
    runs = pd.DataFrame([
        {"arm": SCRATCH, "seed": 0, "fraction": 1.0, "map50": 0.30, "map50_95": 0.10},
        {"arm": FINETUNE, "seed": 0, "fraction": 1.0, "map50": 0.45, "map50_95": 0.20},
        {"arm": EQUAL, "seed": 0, "fraction": 1.0, "map50": 0.40, "map50_95": 0.15},
        {"arm": FINETUNE, "seed": 0, "fraction": 0.5, "map50": 0.99, "map50_95": 0.99},
    ])
    h = headline(runs)
    assert h.loc[0, "map50: fine-tune - scratch"] == pytest.approx(0.15)
    assert h.loc[0, "map50: fine-tune - equal-compute scratch"] == pytest.approx(0.05)
    assert h.loc[0, "map50_95: fine-tune - scratch"] == pytest.approx(0.10)


def test_summary_and_epoch_table_are_flat_tables_over_seeds():
    runs = pd.DataFrame([
        {"arm": PRETRAIN, "seed": 0, "fraction": 1.0, "map50": 0.9, "map50_95": 0.5, "duration_s": 9.0, "run_id": "p"},
        {"arm": SCRATCH, "seed": 0, "fraction": 1.0, "map50": 0.2, "map50_95": 0.1, "duration_s": 2.0, "run_id": "a"},
        {"arm": SCRATCH, "seed": 1, "fraction": 1.0, "map50": 0.4, "map50_95": 0.3, "duration_s": 4.0, "run_id": "b"},
    ])
    s = by_arm(runs.assign(ap50_nucleus=[0.9, None, None], ap50_RBC=[None, 0.5, 0.7]))
    assert s["arm"].tolist() == [SCRATCH]  # pretraining is not an arm of the comparison
    assert "ap50_RBC_mean" in s and not any("nucleus" in c for c in s.columns)  # no column of the source's class
    assert s.loc[0, ["map50_mean", "map50_min", "map50_max"]].tolist() == pytest.approx([0.3, 0.2, 0.4])
    assert s.loc[0, "n_seeds"] == 2
    per_run = summary(runs.assign(split="test"))
    assert per_run["run_id"].tolist() == ["a", "b"] and (per_run["split"] == "test").all()
    curves = runs.assign(curve=[[{"epoch": 1, "mAP50": 0.1, "mAP50_95": 0.0}, {"epoch": 2, "mAP50": 0.2, "mAP50_95": 0.1}],
                                [], [{"epoch": 1, "mAP50": 0.3, "mAP50_95": 0.2}]])
    ep = epoch_table(curves)
    assert ep["run_id"].tolist() == ["p", "p", "b"] and ep["epoch"].tolist() == [1, 2, 1]
    assert ep.loc[2, "arm"] == SCRATCH and ep.loc[2, "mAP50"] == pytest.approx(0.3)
    assert list(epoch_table(runs.assign(curve=[[], [], []])).columns) == list(ep.columns)


def test_cells_one_per_arm_seed_and_fraction_fine_tune_needs_its_seeds_pretraining(tmp_path):
    import json

    from workbench.studies.pretrain_vs_scratch import PretrainVsScratchStudy

    prof = TransferProfile("t", seeds=(0, 1), fractions=(0.5, 1.0))
    study = PretrainVsScratchStudy("bccd", profile=prof, out_dir=tmp_path)
    cells = study.cells()
    keys = [c.key for c in cells]
    assert len(keys) == len(set(keys)) == 2 * (1 + 2 * 2 + 1)  # per seed: pretrain, 2 arms x 2 fractions, equal
    assert keys[:8] == ["pretrain_f100_s0", "pretrain_f100_s1", "scratch_f100_s0", "fine-tune_f100_s0",
                        "scratch_f100_s1", "fine-tune_f100_s1", "scratch-eq_f100_s0", "scratch-eq_f100_s1"]
    for c in cells:
        json.dumps(c.to_dict())  # plain JSON, runnable elsewhere
        assert c.needs == ((f"pretrain_f100_s{c.config['seed']}",) if c.config["arm"] == FINETUNE else ())
    assert study.run_dir("pretrain_f100_s1") == tmp_path / "work" / "runs" / "pretrain_f100_s1"


def test_curve_legends_say_how_many_seeds_each_point_has():
    from workbench.report.study_plots import metric_curves

    t = pd.DataFrame({"arm": [FINETUNE] * 4, "fraction": [0.5, 1.0, 1.0, 1.0], "map50": [0.5, 0.8, 0.85, 0.9],
                      "seed": [0, 0, 1, 2]})
    fig = metric_curves(t, x="fraction", y="map50")
    assert [x.get_text() for x in fig.axes[0].get_legend().get_texts()] == [f"{FINETUNE} (n=1-3 per point)"]
