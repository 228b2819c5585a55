"""Notebook 02 (style levels) executes end to end with papermill on real BCCD (smoke profile)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench.data import datasets
from workbench.studies.notebooks import error_names, missing_figures, run_notebook
from workbench.studies.style_levels import PROFILES, SCORE_GRID


@pytest.mark.slow
def test_style_levels_notebook_smoke(tmp_path):
    executed = run_notebook("02_style_levels", {"dataset": "bccd", "profile": "smoke"}, out_dir=tmp_path)
    assert not error_names(executed)
    prof = PROFILES["smoke"]
    out = tmp_path / "results"
    heat = pd.read_csv(out / "heatmap_map50.csv", dtype={"train_subset": str})
    assert heat["train_subset"].tolist() == ["0", "0-2"]  # the profile's level subsets, in order
    assert {"all", "0", "1", "2"} <= set(heat.columns)
    values = heat.drop(columns="train_subset").to_numpy(float)
    assert ((values >= 0) & (values <= 1)).all()
    per_level = pd.read_csv(out / "per_level.csv", dtype={"test_level": str})
    lv = per_level[(per_level["experiment"] == "level subsets") & (per_level["test_level"] != "all")]
    assert lv.groupby("run_id")["test_images"].sum().eq(prof.test_images).all()  # levels partition the test split
    inc = pd.read_csv(out / "incremental.csv")
    assert inc["step"].tolist() == list(range(len(prof.batch_images) + 1))
    assert inc["train_images"].tolist() == [prof.base_images + sum(prof.batch_images[:k])
                                            for k in range(len(prof.batch_images) + 1)]
    # the fixed test split is the same for every run
    assert per_level[per_level["test_level"] == "all"]["test_images"].nunique() == 1
    caption = (out / "heatmap_map50.caption.txt").read_text()
    assert "DERIVED" in caption and "sharpness" in caption and "Fixed test split" in caption
    assert f"val ({prof.val_images} images) chose each run's best.pt and threshold" in caption
    runs = pd.read_csv(out / "runs.csv")
    # the clinical rates' threshold is chosen on val, per run; the scores come from the test split only,
    # the same official-val images in every library (never training images)
    assert (runs["score_thr_from"] == "val (best F1)").all() and runs["score_thr"].isin(SCORE_GRID).all()
    bccd = pd.read_csv(datasets.prepare("bccd") / "meta.csv")
    official_val = set(bccd.loc[bccd["split"] == "val", "image_id"])
    tests = []
    for lib in runs["library_dir"]:
        m = pd.read_csv(f"{lib}/meta.csv")
        tests.append(set(m.loc[m["split"] == "test", "image_id"]))
        assert tests[-1] <= official_val and not tests[-1] & set(m.loc[m["split"] != "test", "image_id"])
    assert all(t == tests[0] for t in tests) and len(tests[0]) == prof.test_images
    assert (runs["epochs"] == prof.epochs).all() and (runs["epochs_rule"] >= 1).all()
    rec = json.loads((tmp_path / "work" / "runs" / runs["run_id"].iloc[0] / "run.json").read_text())
    assert rec["training_length"]["overridden"] is True and rec["training_length"]["epochs"] == prof.epochs
    assert rec["style_study"]["levels_rule"]["derived"] is True
    comp = pd.read_csv(out / "composition.csv")
    assert set(comp["item"]) == {"good", "dense", "sparse", "positive"}
    assert comp["achieved_n"].iloc[:3].sum() == prof.base_images
    for fig in ("heatmap_map50", "incremental_map50"):
        assert (out / f"{fig}.png").exists() and (out / f"{fig}.pdf").exists()
    study = json.loads((out / "study.json").read_text())
    assert study["study"] == "02_style_levels" and study["levels_rule"]["derived"] is True
    assert study["test_images"] == prof.test_images and len(study["cells"]) == len(runs)
    assert not missing_figures(executed, len(list(out.glob("*.pdf"))))


def test_fixed_split_roles_and_result_tables_on_constructed_data():
    from workbench.studies.style_levels import INCREMENTAL, LEVELS, StyleProfile, fixed_splits, heatmap, incremental

    meta = pd.DataFrame({"image_id": [f"t{k}" for k in range(10)] + [f"v{k}" for k in range(8)],
                         "split": ["train"] * 10 + ["val"] * 8})
    prof = StyleProfile("t", val_images=3)
    role = fixed_splits(meta, prof)
    assert role[:10].eq("train").all() and role[10:].value_counts().to_dict() == {"test": 5, "val": 3}
    assert role.equals(fixed_splits(meta, prof))  # the same fixed split every time
    with pytest.raises(ValueError, match="val/test images"):
        fixed_splits(meta, StyleProfile("t", val_images=8))
    rows = []
    for seed, bump in ((0, 0.0), (1, 0.2)):
        for subset in ("0", "0-2"):
            for level in ("all", "0", "1"):
                rows.append({"experiment": LEVELS, "key": subset, "train_subset": subset, "seed": seed, "step": None,
                             "test_level": level, "map50": 0.1 + bump + (0.3 if subset == "0-2" else 0.0)})
    for step, size in enumerate((30, 60)):
        rows.append({"experiment": INCREMENTAL, "key": ["base", "base+b1"][step], "train_subset": None, "seed": 0,
                     "step": step, "test_level": "all", "train_images": size, "map50": 0.2 * (step + 1),
                     "map50_95": 0.1, "detection_rate": 0.5, "fn_rate": 0.5, "fp_rate": 0.1, "classification_rate": 1.0})
    per_level = pd.DataFrame(rows)
    heat = heatmap(per_level, "map50")
    assert heat.index.tolist() == ["0", "0-2"] and heat.loc["0-2", "all"] == pytest.approx(0.5)  # mean over seeds
    inc = incremental(per_level)
    assert inc["library"].tolist() == ["base", "base+b1"] and inc["map50"].tolist() == pytest.approx([0.2, 0.4])


def test_cells_one_per_library_and_seed_and_the_seeds_override_travels_with_the_study(tmp_path):
    from workbench.studies.base import study_class
    from workbench.studies.style_levels import LEVELS, StyleLevelsStudy, run_key

    cpu = [c.key for c in StyleLevelsStudy("bccd", profile="cpu", out_dir=tmp_path).cells()]
    # the longest runs first (incremental, largest library first): on few cores the grid ends sooner
    assert cpu == ["inc_base_b1_b2_s0", "inc_base_b1_s0", "inc_base_s0",  # incremental: seed 0 only
                   "lv_0_s0", "lv_0-2_s0", "lv_0_s1", "lv_0-2_s1", "lv_0_s2", "lv_0-2_s2"]  # seeds 0, 1, 2
    study = StyleLevelsStudy("bccd", profile="smoke", out_dir=tmp_path, seeds=[3, 4])
    cells = study.cells()
    assert [c.key for c in cells] == ["inc_base_b1_s3", "inc_base_s3", "inc_base_b1_s4", "inc_base_s4",
                                      "lv_0_s3", "lv_0-2_s3", "lv_0_s4", "lv_0-2_s4"]
    assert cells[0].config == {"experiment": "incremental", "library": "base+b1", "seed": 3, "train_subset": None,
                               "step": 1}
    again = study_class("02_style_levels")(**study.study_args())  # how a worker process rebuilds it
    assert [c.to_dict() for c in again.cells()] == [c.to_dict() for c in cells]
    assert json.loads(json.dumps([c.to_dict() for c in cells])) == [c.to_dict() for c in cells]
    assert run_key(LEVELS, "0,2", 1) == "lv_0_2_s1"  # a valid run folder name


def test_operating_threshold_is_the_best_f1_on_the_given_split_ties_to_the_higher():
    from workbench.studies.style_levels import choose_score_thr

    box = {"x1": 0.0, "y1": 0.0, "x2": 10.0, "y2": 10.0}
    gt = pd.DataFrame([{"image": "a", "class": "RBC", **box}, {"image": "b", "class": "RBC", **box}])
    junk = {"x1": 50.0, "y1": 50.0, "x2": 60.0, "y2": 60.0}
    pred = pd.DataFrame([{"image": "a", "class": "RBC", "score": 0.9, **box},
                         {"image": "b", "class": "RBC", "score": 0.6, **box},
                         {"image": "a", "class": "RBC", "score": 0.7, **junk},
                         {"image": "b", "class": "RBC", "score": 0.3, **junk}])
    # F1: 0.667 up to 0.3 (2 TP, 2 FP), 0.8 from 0.35 to 0.6 (2 TP, 1 FP), 0.5 at 0.65-0.7, 0.667 above
    thr, f1 = choose_score_thr(gt, pred)
    assert thr == pytest.approx(0.6) and f1 == pytest.approx(0.8)
    assert choose_score_thr(gt, pred.iloc[:2])[0] == pytest.approx(0.6)  # all right up to 0.6: the highest wins
    assert choose_score_thr(gt, pred.iloc[:0])[0] == max(SCORE_GRID)  # no prediction: every threshold ties
    with pytest.raises(ValueError, match="at least one threshold"):
        choose_score_thr(gt, pred, grid=())


def test_run_length_follows_the_rule_and_raises_short_runs_to_min_iterations():
    from dataclasses import replace

    from workbench.studies.style_levels import run_length

    cpu = PROFILES["cpu"]
    short = run_length(69, cpu)  # 5 steps an epoch: the rule's 28 epochs give 140 < 260 steps
    assert (short.epochs, short.epochs_rule, short.overridden) == (52, 28, True)
    full = run_length(205, cpu)  # 13 steps x the rule's 32 epochs = 416 >= 260: the rule stands
    assert (full.epochs, full.overridden) == (32, False)
    assert run_length(69, replace(cpu, min_iterations=0)).epochs == 28
    assert run_length(69, PROFILES["smoke"]).epochs == PROFILES["smoke"].epochs  # the override, no floor
