"""`make demo` machinery: jobs run, the index links what they wrote, a failing job is shown."""
from __future__ import annotations

import pandas as pd
import pytest

from workbench.studies.demo import Job, demo_jobs, run_demo


@pytest.mark.slow
def test_demo_index_links_notebooks_figures_and_tables(tmp_path):
    index = run_demo(out_dir=tmp_path, jobs=[Job("01_dataset_audit", {"dataset": "bccd", "profile": "smoke",
                                                                      "examples": 2}, "BCCD audit")])
    html = index.read_text()
    assert "BCCD audit" in html
    assert "01_dataset_audit.html" in html and "class_counts.png" in html and "audit.json" in html
    for href in ("01_dataset_audit__bccd_2/01_dataset_audit.html",):
        assert (tmp_path / href).exists()


@pytest.mark.slow
def test_a_failing_job_is_reported_and_fails_the_demo(tmp_path):
    with pytest.raises(RuntimeError, match="demo jobs failed"):
        run_demo(out_dir=tmp_path, jobs=[Job("01_dataset_audit", {"dataset": "no-such-dataset", "profile": "smoke"})])
    assert "unknown dataset" in (tmp_path / "index.html").read_text() or "no-such-dataset" in (tmp_path / "index.html").read_text()


def test_demo_covers_every_study_notebook():
    from workbench.core.paths import NOTEBOOKS_DIR

    planned = {j.notebook for j in demo_jobs("smoke")}
    assert planned == {p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb")}


def test_the_default_demo_runs_one_real_model_and_inspects_its_own_test_images(tmp_path):
    """make demo (profile demo): audits, notebook 05 fine-tuning from the committed source model,
    and notebook 06 on that detector's held-out test images; no smoke-trained model is shown."""
    from workbench.core.paths import SOURCE_MODEL
    from workbench.studies.demo import DEMO
    from workbench.studies.independent_test import PROFILES

    jobs = demo_jobs(DEMO, tmp_path)
    assert [j.notebook for j in jobs] == ["01_dataset_audit"] * 3 + ["05_independent_test", "06_inspect_hard_cases"]
    held_out = jobs[3]
    assert held_out.params["profile"] == DEMO and PROFILES[DEMO].det_pretrained
    assert (SOURCE_MODEL / "weights" / "best.pt").is_file()
    hard = jobs[4].params
    assert hard["split"] == "test" and hard["run"].startswith(str(tmp_path / held_out.slug / "work" / "runs"))
    assert "test" in set(pd.read_csv(f"{hard['dataset']}/meta.csv")["split"])  # the held-out copy 05 scores
    assert hard["screenshot"] is True and "napari" in jobs[4].shows  # its hardest image as napari draws it
    assert "True" not in jobs[4].slug
