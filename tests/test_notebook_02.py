"""Notebook 02 (style levels) executes end to end with papermill on real BCCD (smoke profile)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench.studies.notebooks import error_names, run_notebook
from workbench.studies.style_levels import PROFILES


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
    runs = pd.read_csv(out / "runs.csv")
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

    modest = [c.key for c in StyleLevelsStudy("bccd", profile="modest", out_dir=tmp_path).cells()]
    assert modest == ["lv_0_s0", "lv_0-1_s0", "lv_0-2_s0", "lv_0_s1", "lv_0-1_s1", "lv_0-2_s1",  # seeds 0, 1
                      "inc_base_s0", "inc_base_b1_s0", "inc_base_b1_b2_s0"]  # incremental: seed 0 only
    study = StyleLevelsStudy("bccd", profile="smoke", out_dir=tmp_path, seeds=[3, 4])
    cells = study.cells()
    assert [c.key for c in cells] == ["lv_0_s3", "lv_0-2_s3", "lv_0_s4", "lv_0-2_s4",
                                      "inc_base_s3", "inc_base_b1_s3", "inc_base_s4", "inc_base_b1_s4"]
    assert cells[5].config == {"experiment": "incremental", "library": "base+b1", "seed": 3, "train_subset": None,
                               "step": 1}
    again = study_class("02_style_levels")(**study.study_args())  # how a worker process rebuilds it
    assert [c.to_dict() for c in again.cells()] == [c.to_dict() for c in cells]
    assert json.loads(json.dumps([c.to_dict() for c in cells])) == [c.to_dict() for c in cells]
    assert run_key(LEVELS, "0,2", 1) == "lv_0_2_s1"  # a valid run folder name
