"""Publishing a study's results into outputs/results/<notebook>/ (what `make results` commits)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from workbench.report.figures import save_figure
from workbench.studies.results import markdown_table, publish


@pytest.mark.slow
def test_publish_copies_tables_small_figures_and_writes_readme_and_provenance(tmp_path):
    src = tmp_path / "notebook" / "results"
    src.mkdir(parents=True)
    summary = pd.DataFrame({"arm": ["scratch", "fine-tune"], "seed": [0, 0], "fraction": [1.0, 1.0],
                            "split": ["test", "test"], "map50": [0.55, 0.83], "map50_95": [0.3, 0.5]})
    summary.to_csv(src / "summary.csv", index=False)
    from workbench.core.paths import PROJECT_ROOT

    runs = [str(PROJECT_ROOT / "outputs" / "notebooks" / "x" / "work" / "runs" / f"r{i}") for i in range(10)]
    own = [str(tmp_path / "notebook" / "work" / "runs" / f"r{i}") for i in range(10)]  # this study's runs
    pd.DataFrame({"x": range(10), "run_dir": runs, "own_run": own}).to_csv(src / "other.csv", index=False)
    fig = Figure(figsize=(4, 3))
    fig.subplots().plot([0, 1], [0, 1])
    save_figure(fig, src / "test_map50", caption="Test mAP50 per arm.", provenance={"runs": ["a"]})
    (src / "study.json").write_text(json.dumps({
        "study": "04_model_size", "dataset": "bccd", "profile": {"name": "cpu"}, "device": "cpu",
        "fingerprint": {"sha256": "abc"}, "tables": ["summary", "other"], "figures": ["test_map50"],
        "captions": {"test_map50": "Test mAP50 per arm."}, "cells": []}))
    out = publish(src, "04_model_size", wall_s=125.0, params={"profile": "cpu"}, out=tmp_path / "published")
    names = {p.name for p in out.iterdir()}
    assert {"summary.csv", "other.csv", "test_map50.png", "test_map50.pdf",
            "study.json", "provenance.json", "README.md"} <= names and "test_map50.caption.txt" not in names
    assert pd.read_csv(out / "summary.csv").equals(summary)
    # committed results name no machine's folders: paths in the checkout become relative to it
    assert pd.read_csv(out / "other.csv")["run_dir"].iloc[3] == str(Path("outputs", "notebooks", "x", "work", "runs", "r3"))  # not the study's
    assert pd.read_csv(out / "other.csv")["own_run"].iloc[3] == "runs/r3"  # the study's: below its work folder
    assert (out / "test_map50.png").stat().st_size < (src / "test_map50.png").stat().st_size  # smaller PNG
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["wall_time_s"] == 125.0 and prov["fingerprints"] == {"fingerprint": {"sha256": "abc"}}
    readme = (out / "README.md").read_text()
    assert "`cpu` profile" in readme and "2.1 min" in readme and "![test_map50](test_map50.png)" in readme
    assert "| fine-tune | 0 | 1.000 | test | 0.830 | 0.500 |" in readme  # the headline table


def test_markdown_table_escapes_pipes_and_rounds():
    md = markdown_table(pd.DataFrame({"a|b": ["x|y"], "v": [0.12345]}), digits=2)
    assert md.splitlines() == ["| a|b | v |", "|---|---|", "| x\\|y | 0.12 |"]


@pytest.mark.slow  # cells run as processes
def test_publish_grid_labels_a_partial_grid_and_trains_nothing(tmp_path, monkeypatch):
    """A long profile run cell by cell (python -m workbench grid) is published as it grows: the
    README says how many cells are done and names the others."""
    import _grid_fake
    from workbench.studies import results
    from workbench.studies.grid import read_grid, run_grid

    monkeypatch.setenv("WORKBENCH_OUTPUTS", str(tmp_path / "outputs"))
    tests = str(Path(__file__).resolve().parent)  # the cell processes import the fake study's module
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    monkeypatch.setattr(results, "RESULT_JOBS", (results.ResultJob("99_fake_grid"),))
    assert results.publish_grid(profile="partial", log=lambda m: None) == []  # no grid yet: nothing published
    study = _grid_fake.FakeStudy(profile="partial", log=lambda m: None)  # cells a (ok) and b (fails)
    run_grid(study, progress=False)
    before = read_grid(study.grid_dir)[["cell", "state", "start", "attempts"]]

    [out] = results.publish_grid(profile="partial", log=lambda m: None)
    assert out == tmp_path / "outputs" / "results" / "99_fake_grid"
    readme = (out / "README.md").read_text()
    assert "**Partial result: 1 of 2 cells finished.**" in readme and "`b` (failed)" in readme
    assert "--only 99_fake_grid --from-grid`" in readme
    assert "summed cell time" in readme and "wall time" not in readme  # a grid's time is not a wall time
    grid = json.loads((out / "provenance.json").read_text())["grid"]
    assert grid["done"] == 1 and grid["cells"] == 2 and grid["not_done"] == {"b": "failed"}
    assert pd.read_csv(out / "fake.csv")["cell"].tolist() == ["a"]
    pd.testing.assert_frame_equal(read_grid(study.grid_dir)[before.columns], before)  # publishing ran no cell


@pytest.mark.slow  # cells run as processes
def test_a_result_job_with_varied_fields_runs_every_variant_as_a_grid_and_publishes_them(tmp_path, monkeypatch):
    """make results reproduces a multi-seed study (05: 3 seeds) the way it was published: as a grid
    with --vary, every variant's rows in the published tables."""
    import _grid_fake
    from workbench.studies import results

    monkeypatch.setenv("WORKBENCH_OUTPUTS", str(tmp_path / "outputs"))
    tests = str(Path(__file__).resolve().parent)  # the cell processes import the fake study's module
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    monkeypatch.setattr(results, "RESULT_JOBS", (results.ResultJob("99_fake_grid", vary={"level": (0, 1)}),))
    [out] = results.run_results(profile="two", log=lambda m: None)
    table = pd.read_csv(out / "fake.csv")
    assert sorted(zip(table["level"], table["cell"])) == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    grid = json.loads((out / "provenance.json").read_text())["grid"]
    assert grid["done"] == grid["cells"] == 4
    assert "--from-grid`" in (out / "README.md").read_text()
    assert _grid_fake.FakeStudy(profile="two", log=lambda m: None).grid_dir.is_dir()  # resumable where it ran


def test_summary_is_the_first_headline_table_when_the_study_has_no_summary_table(tmp_path):
    """08 has no ``summary`` table: summary.csv and the README lead with its headline table
    (mn_study), not with whichever table happens to be written first."""
    src = tmp_path / "notebook" / "results"
    src.mkdir(parents=True)
    clinical = pd.DataFrame({"metric": ["fn_rate"], "value": [0.2], "approach": ["dense"]})
    study = pd.DataFrame({"approach": ["native", "dense"], "mn_recall_centre3": [0.0, 0.765]})
    clinical.to_csv(src / "mn_clinical.csv", index=False)
    study.to_csv(src / "mn_study.csv", index=False)
    (src / "study.json").write_text(json.dumps({
        "study": "08_micronuclei", "dataset": "mnfinder", "profile": {"name": "cpu"}, "device": "cpu",
        "tables": ["mn_clinical", "mn_study"], "figures": [], "captions": {}, "cells": []}))
    out = publish(src, "08_micronuclei", wall_s=60.0, params={"profile": "cpu"}, out=tmp_path / "published")
    assert pd.read_csv(out / "summary.csv").equals(study)
    readme = (out / "README.md").read_text()
    assert "## mn_study" in readme and "## mn_clinical" not in readme
