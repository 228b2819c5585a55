"""`make demo` machinery: jobs run, the index links what they wrote, a failing job is shown."""
from __future__ import annotations

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
