"""Notebook 05's study: grouping columns, the side-by-side rates table, profiles, cells, classifier reuse."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workbench.studies import independent_test as it


def _gt(counts: dict[str, int]) -> pd.DataFrame:
    rows = [{"image": img, "class": "RBC", "x1": 0, "y1": 0, "x2": 1, "y2": 1}
            for img, n in counts.items() for _ in range(n)]
    return pd.DataFrame(rows, columns=["image", "class", "x1", "y1", "x2", "y2"])


def test_density_groups_are_tertiles_of_objects_per_image():
    meta = pd.DataFrame({"image_id": [f"i{k}" for k in range(6)]})
    gt = _gt({"i0": 1, "i1": 2, "i2": 5, "i3": 6, "i4": 20, "i5": 30})
    groups = it.derive_groups(meta, gt, "density")
    assert groups.tolist() == ["low", "low", "mid", "mid", "high", "high"]


def test_density_of_an_image_without_boxes_is_low():
    meta = pd.DataFrame({"image_id": ["a", "b", "c", "d"]})
    groups = it.derive_groups(meta, _gt({"b": 3, "c": 9, "d": 27}), "density")
    assert groups.iloc[0] == "low" and groups.iloc[3] == "high"


def test_set_group_is_the_folder_of_the_image_id_and_meta_columns_win():
    meta = pd.DataFrame({"image_id": ["val/setA/x", "val/setB/y", "z"], "dose": ["0", "2", "2"]})
    assert it.derive_groups(meta, _gt({}), "set").tolist() == ["val/setA", "val/setB", "(none)"]
    assert it.derive_groups(meta, _gt({}), "dose").tolist() == ["0", "2", "2"]
    with pytest.raises(ValueError, match="neither a meta.csv column"):
        it.derive_groups(meta, _gt({}), "centre")


def test_rates_wide_puts_systems_side_by_side_with_cis():
    rates = pd.DataFrame({"system": ["detector-only", "cascade"], "group": ["all", "all"],
                          "metric": ["fp_rate", "fp_rate"], "value": [0.25, np.nan], "lo": [0.1, np.nan],
                          "hi": [0.4, np.nan], "count": [1, 0], "total": [4, 0], "n_images": [3, 3]})
    wide = it.rates_wide(rates)
    assert wide.columns.tolist() == ["group", "metric", "detector-only", "cascade"]
    assert wide.iloc[0]["detector-only"] == "0.250 [0.100, 0.400]"
    assert wide.iloc[0]["cascade"] == "n/a"  # an undefined rate (no positive predictions) is not shown as 0


def test_profiles():
    assert it.IndependentTestStudy("bccd", profile="smoke").profile.det_epochs == 1
    assert it.PROFILES["full"].cls_arch == "resnet34"  # the published classifier
    cpu = it.PROFILES["cpu"]  # what is known to learn on 2 CPU cores
    assert cpu.det_imgsz >= 416 and cpu.det_batch == 16 and cpu.det_epochs >= 20 and cpu.caps == ()
    assert cpu.tune and cpu.det_pretrained
    with pytest.raises(ValueError, match="unknown profile"):
        it.IndependentTestStudy("bccd", profile="huge")


def test_cpu_profile_fine_tunes_the_detector_from_the_committed_source_model(tmp_path):
    from workbench.core.paths import SOURCE_MODEL

    det, cls, _ = it.IndependentTestStudy("bccd", profile="cpu", out_dir=tmp_path).cells()
    weights = SOURCE_MODEL / "weights" / "best.pt"
    assert det.config["pretrained"] == str(weights) and weights.is_file()
    assert det.key == "detector_yolov8n_ft_416_e30_s0" and cls.config["detector"].endswith(det.key)
    smoke_det = it.IndependentTestStudy("bccd", profile="smoke", out_dir=tmp_path).cells()[0]
    assert smoke_det.config["pretrained"] is None and "_ft_" not in smoke_det.key  # from scratch


def test_cells_are_detector_then_classifier_then_evaluation_and_plain_json(tmp_path):
    study = it.IndependentTestStudy("bccd", profile="smoke", out_dir=tmp_path)
    det, cls, ev = study.cells()
    assert [c.config["step"] for c in (det, cls, ev)] == ["detector", "classifier", "evaluation"]
    assert cls.needs == (det.key,) and ev.needs == (det.key, cls.key)
    # a later cell finds the earlier cells' runs by the folders derived from their keys
    runs = tmp_path / "work" / "runs"
    assert det.config["run"] == cls.config["detector"] == ev.config["detector"] == str(runs / det.key)
    assert cls.config["run"] == ev.config["classifier"] == str(runs / cls.key)
    assert [it.Cell.from_dict(json.loads(json.dumps(c.to_dict()))) for c in (det, cls, ev)] == [det, cls, ev]


def test_given_runs_skip_training_and_both_or_neither_are_needed(tmp_path):
    study = it.IndependentTestStudy("mnfinder", profile="smoke", detector=tmp_path / "d", classifier=tmp_path / "c")
    cls, ev = study.cells()
    assert not cls.config["train"] and cls.config["run"] == str(tmp_path / "c")
    assert ev.config["detector"] == str(tmp_path / "d") and ev.needs == (cls.key,)
    assert study.positive == ["mn"] and study.study_args()["classifier"] == str(tmp_path / "c")
    with pytest.raises(ValueError, match="give both detector= and classifier="):
        it.IndependentTestStudy("bccd", detector=tmp_path / "d")
    with pytest.raises(ValueError, match="give positive="):
        it.IndependentTestStudy(tmp_path / "my_data")


def test_table_rows_round_trip_keeps_columns_dtypes_and_empty_tables():
    tables = {"a": pd.DataFrame({"image": ["x", "y"], "score": [0.5, np.nan], "changed": [True, False],
                                 "pred_id": pd.array([1, pd.NA], dtype="Int64")}),
              "empty": pd.DataFrame(columns=["system", "value"])}
    rows = it.table_rows(tables)
    json.dumps(rows)  # plain rows: another process can send them back
    back = it.tables_from_rows(pd.DataFrame([{"cell": "c", **r} for r in rows]))
    assert list(back) == ["a", "empty"] and back["empty"].columns.tolist() == ["system", "value"]
    assert back["a"].columns.tolist() == ["image", "score", "changed", "pred_id"]
    assert back["a"]["changed"].dtype == bool and np.isnan(back["a"]["score"].iloc[1])


def test_rows_of_several_seeds_keep_every_seed_and_give_the_spread_across_runs():
    """A grid run with --vary seed=0,1 gathers one evaluation per seed: no seed's table may
    replace another's, and the study reports the spread between them."""
    def evaluation(seed: int, det_rate: float, map50: float) -> list[dict]:
        rates = pd.DataFrame([{"system": s, "group": "all", "metric": "detection_rate", "value": det_rate,
                               "lo": det_rate - 0.05, "hi": det_rate + 0.05} for s in it.SYSTEMS])
        det = pd.DataFrame([{"system": s, "map50": map50, "map50_95": map50 / 2, "ap50_WBC": 1.0} for s in it.SYSTEMS])
        return [{"cell": "test_evaluation", "seed": seed, **r}
                for r in it.table_rows({"rates": rates, "detection": det, "empty": pd.DataFrame(columns=["x"])})]

    rows = pd.DataFrame(evaluation(0, 0.78, 0.877) + evaluation(1, 0.70, 0.850) + evaluation(2, 0.74, 0.860))
    assert it.variant_columns(rows) == ["seed"]
    back = it.tables_from_rows(rows)
    assert back["rates"]["seed"].tolist() == [0, 0, 1, 1, 2, 2] and back["rates"].columns[0] == "seed"
    assert back["empty"].columns.tolist() == ["seed", "x"] and back["empty"].empty
    wide = it.rates_wide(back["rates"], by=["seed"])
    assert wide[["seed", "cascade"]].values.tolist() == [[0, "0.780 [0.730, 0.830]"], [1, "0.700 [0.650, 0.750]"],
                                                         [2, "0.740 [0.690, 0.790]"]]
    across = it.across_variants(back)
    r = across["rates_across_runs"].set_index("system").loc["cascade"]
    assert (r["mean"], r["min"], r["max"], r["runs"]) == (pytest.approx(0.74), 0.70, 0.78, 3)
    d = across["detection_across_runs"].set_index("system").loc["detector-only"]
    assert (d["map50_mean"], d["map50_min"], d["map50_max"], d["runs"]) == (pytest.approx(0.862333, abs=1e-6),
                                                                            0.850, 0.877, 3)
    first = it.one_variant(back, ["seed"])
    assert it.variant_label(back["rates"][["seed"]].drop_duplicates()) == "seed 0"
    assert first["rates"]["value"].tolist() == [0.78, 0.78] and "seed" not in first["rates"]


def _fake_run(folder, **record):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def test_finished_classifier_compares_the_resolved_config_detector_and_data(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a.png").write_bytes(b"pixels")
    from workbench.models.runs import dataset_fingerprint

    det = _fake_run(tmp_path / "det", run_id="det", status="finished", finished="2026-01-01T00:00:00+00:00")
    want = dict(arch="resnet18", crop_size=32, crop_pad=0.15, epochs=1, seed=0, detector=det, dataset=data)
    record = {"status": "finished", "model": {"arch": "resnet18"}, "crop": {"size": 32, "pad": 0.15},
              "config": {"epochs": 1, "seed": 0}, "dataset": {"fingerprint": dataset_fingerprint(data)},
              it.CASCADE_DETECTOR: it.detector_identity(det)}
    run = _fake_run(tmp_path / "cls", **record)
    assert it.finished_classifier(run, **want)
    for change in ({"arch": "resnet34"}, {"crop_size": 64}, {"crop_pad": 0.3}, {"epochs": 2}, {"seed": 1}):
        assert not it.finished_classifier(run, **{**want, **change}), change
    (data / "images" / "b.png").write_bytes(b"more")  # other data
    assert not it.finished_classifier(run, **want)
    (data / "images" / "b.png").unlink()
    _fake_run(tmp_path / "det2", run_id="det", status="finished", finished="2026-01-01T00:00:00+00:00")
    assert not it.finished_classifier(run, **{**want, "detector": tmp_path / "det2"})  # another detector
    (det / "run.json").write_text(json.dumps({"run_id": "det", "status": "finished", "finished": "2026-02-01"}))
    assert not it.finished_classifier(run, **want)  # the detector was retrained in the same folder
    assert not it.finished_classifier(tmp_path / "nothing", **want)


def test_worst_images_and_gallery_boxes_flag_missed_cells():
    cells = pd.DataFrame({"image": ["a", "a", "b", "b", "b", "c"],
                          "error": ["missed", "correct", "missed", "spurious", "misclassified", "correct"],
                          "gt_class": ["WBC", "RBC", "RBC", None, "WBC", "RBC"],
                          "x1": 0.0, "y1": 0.0, "x2": 5.0, "y2": 5.0})
    assert it.worst_images(cells, 5) == ["b", "a"]
    cascade = pd.DataFrame({"image": ["a", "b", "c"], "x1": 1.0, "y1": 1.0, "x2": 4.0, "y2": 4.0,
                            "class": "RBC", "score": 0.9, "final_class": "RBC", "changed": [True, False, False]})
    shown, titles = it.gallery_boxes(cells, cascade, ["b", "a"])
    assert len(shown) == 4 and shown["missed"].tolist() == [False, False, True, True]
    assert shown["changed"].tolist() == [True, False, False, False]
    assert titles["b"] == "b: 1 missed, 1 misclassified, 1 spurious"


def test_every_study_names_its_profiles_the_same_way():
    from workbench.studies import large_images, micronuclei, model_size, style_levels
    from workbench.studies.base import pick

    for profiles in (it.PROFILES, model_size.PROFILES, style_levels.PROFILES, large_images.PROFILES,
                     micronuclei.PROFILES):
        assert {"smoke", "cpu", "full"} <= set(profiles) and "modest" not in profiles  # cpu replaced modest
    assert set(it.PROFILES) == {"smoke", "cpu", "demo", "full"}  # demo: make demo's short real model
    for profiles in (it.PROFILES, large_images.PROFILES, micronuclei.PROFILES):
        assert {"smoke", "full"} <= set(profiles)
        assert pick("smoke", profiles) is profiles["smoke"] and pick(profiles["full"], profiles) is profiles["full"]
    with pytest.raises(ValueError, match=r"unknown profile 'fast'; known: \['cpu', 'demo', 'full', 'smoke'\]"):
        pick("fast", it.PROFILES)


def test_map_is_scored_on_the_ranked_tables_and_the_rates_at_the_operating_point():
    """A platelet found only at score 0.05 has AP50 1 (ranked tables), yet counts as missed in the
    rates at the operating point that drops it: mAP is never cut at an operating threshold."""
    from workbench.evaluation.files import GroundTruth
    from workbench.inference.cascade import fuse

    classes = ["Platelets", "RBC", "WBC"]
    gt_boxes = pd.DataFrame([
        {"image": "a", "class": "RBC", "x1": 10, "y1": 10, "x2": 40, "y2": 40},
        {"image": "a", "class": "Platelets", "x1": 60, "y1": 60, "x2": 70, "y2": 70},
        {"image": "b", "class": "WBC", "x1": 20, "y1": 20, "x2": 80, "y2": 80}])
    meta = pd.DataFrame({"image_id": ["a", "b"], "width": [100, 100], "height": [100, 100]}).set_index("image_id")
    gt = GroundTruth(gt_boxes, ["a", "b"], classes, meta, None, "hand-built")

    def cascade(rows: list[tuple]) -> pd.DataFrame:
        det = pd.DataFrame(rows, columns=["image", "x1", "y1", "x2", "y2", "class", "score"])
        probs = np.array([[1.0 if c == k else 0.0 for k in classes] for c in det["class"]])
        return fuse(det, probs, classes, cls_thr=0.5)

    high = [("a", 10, 10, 40, 40, "RBC", 0.9), ("b", 20, 20, 80, 80, "WBC", 0.9)]
    operating = cascade(high)  # the platelet at 0.05 is under det_conf
    ranked = cascade(high + [("a", 60, 60, 70, 70, "Platelets", 0.05)])
    systems = lambda t: {"detector-only": t, "cascade": t}  # noqa: E731 (same boxes, enough here)
    timing = pd.DataFrame([{"system": s, "seconds": 1.0} for s in it.SYSTEMS])
    out = it.score_systems(gt, systems(operating), systems(ranked), timing, positive=["WBC", "Platelets"],
                           normal=["RBC"], preset="chromosome_aberrations", n_boot=20)

    det = out["detection"].set_index("system")
    assert det.loc["cascade", "ap50_Platelets"] == pytest.approx(1.0)
    assert det.loc["cascade", "map50"] == pytest.approx(1.0)
    assert det.loc["cascade", "score_floor"] == pytest.approx(0.05)
    missed = out["error_cells"]
    assert missed.loc[missed["error"] == "missed", "gt_class"].tolist() == ["Platelets"]
    assert len(out["predictions_cascade"]) == 2
    # counting at the operating point, over both images: the platelet under det_conf is not counted
    counts = out["counting"].set_index(["system", "class"])
    assert counts.loc[("cascade", "Platelets"), ["n_true", "n_pred", "mae", "bias"]].tolist() == [1, 0, 0.5, -0.5]
    assert counts.loc[("cascade", "RBC"), ["n_true", "n_pred", "mae", "images"]].tolist() == [1, 1, 0.0, 2]
    assert counts.loc[("detector-only", "all"), ["n_true", "n_pred", "mae", "bias"]].tolist() == [3, 2, 0.5, -0.5]
    figs = it.stats_figures({k[len("stats_"):]: v for k, v in out.items() if k.startswith("stats_")},
                            classes=["WBC", "Platelets", "RBC"], group=None)
    assert [ax.get_title() for ax in figs["class_share"].axes[:2]] == ["ground truth (n=3)", "cascade output (n=2)"]
    assert figs["count_agreement"].axes[1].get_title() == "Platelets: MAE 0.50, bias -0.50"


def test_the_caption_of_a_multi_seed_grid_does_not_call_it_one_seed(tmp_path):
    study = it.IndependentTestStudy("bccd", profile="cpu", out_dir=tmp_path)
    study.test_images, study.group_derived = 52, True  # what prepare() reads from the data
    one = study.caption("count_agreement", {})
    assert "one seed (0)" in one and "runs (" not in one
    seeds = study.caption("count_agreement", {"variants": pd.DataFrame({"seed": [0, 1, 2]})})
    assert "one seed" not in seeds and "3 runs (seed varied): this figure shows seed 0" in seeds
    assert "rates_across_runs" in seeds and seeds.startswith(it.CAPTIONS["count_agreement"])
