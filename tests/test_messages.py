"""Messages tell the truth: no spelling warning for a class merely absent from predictions,
counts in the inspect log that match what was predicted, no internal tracker references in
user-facing text, one kernelspec (the project's) in every notebook."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pandas as pd
import pytest

from workbench.analysis import stats
from workbench.cli.inspect import prediction_line
from workbench.core.paths import NOTEBOOKS_DIR
from workbench.studies.notebooks import KERNEL

ROOT = Path(__file__).resolve().parent.parent
# "issue #8", "issue 12", "#15": references to the project's tracker mean nothing to a reader
TRACKER_REF = re.compile(r"\bissues? #?\d+\b|(?<![\w&])#\d+\b", re.IGNORECASE)


def _boxes(classes: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"image": ["a"] * len(classes), "class": classes,
                         "x1": 0.0, "y1": 0.0, "x2": 10.0, "y2": 10.0})


def test_a_known_class_absent_from_predictions_gets_no_spelling_warning():
    pred = _boxes(["RBC", "RBC", "WBC"])  # no platelet predicted: legitimate, not a typo
    images = pd.DataFrame({"image": ["a"], "width": [100], "height": [100]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ratio = stats.positive_ratio(pred, images, positive=["WBC", "Platelets"], normal="RBC",
                                     known_classes=["Platelets", "RBC", "WBC"])
        stats.neighbourhood_counts(pred, images, positive=["WBC", "Platelets"], normal="RBC",
                                   known_classes=["Platelets", "RBC", "WBC"])
        stats.cell_sizes(pred, images, normal="RBC", known_classes=["Platelets", "RBC", "WBC"])
    assert ratio["n_positive"].tolist() == [1] and ratio["n_normal"].tolist() == [2]
    # a real typo is still named, against the dataset's classes
    with pytest.warns(UserWarning, match=r"\['Platelet'\] are not classes of the dataset"):
        stats.positive_ratio(pred, images, positive=["WBC", "Platelet"], normal="RBC",
                             known_classes=["Platelets", "RBC", "WBC"])


def test_the_inspect_log_counts_every_predicted_image():
    table = pd.DataFrame({"image": ["a", "a", "b"], "class": "RBC", "x1": 0.0, "y1": 0.0, "x2": 1.0,
                          "y2": 1.0, "score": 0.9})
    line = prediction_line(table, 87, conf=0.25, out=Path("pred.csv"))
    assert line.startswith("predicted 3 boxes (score >= 0.25) on 87 images, 2 of them with boxes -> pred.csv")
    empty = prediction_line(table.iloc[:0], 87, conf=0.25, out=Path("pred.csv"))
    assert "predicted 0 boxes (score >= 0.25) on 87 images, 0 of them with boxes" in empty


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


def test_every_notebook_runs_on_the_projects_kernel():
    """One kernelspec, the one `make env` registers: Lab starts the right environment and does not
    mark a notebook modified by switching its kernel on opening."""
    for path in _notebooks():
        spec = json.loads(path.read_text(encoding="utf-8"))["metadata"].get("kernelspec", {})
        assert spec == {"display_name": "Cell Workbench (.venv)", "language": "python", "name": KERNEL}, path.name
    make = (ROOT / "Makefile").read_text()
    assert f"--name $(KERNEL) --display-name \"Cell Workbench (.venv)\"" in make and f"KERNEL := {KERNEL}" in make


def test_no_tracker_references_and_no_backend_stop_gaps_in_user_facing_text():
    texts = {"README.md": (ROOT / "README.md").read_text(encoding="utf-8")}
    for path in _notebooks():
        nb = json.loads(path.read_text(encoding="utf-8"))
        for k, cell in enumerate(nb["cells"]):
            texts[f"{path.name} cell {k}"] = "".join(cell["source"])
            # figures display through IPython's formatters (workbench.report.inline), not a magic
            assert "%matplotlib" not in texts[f"{path.name} cell {k}"], f"{path.name} cell {k}"
    found = {where: TRACKER_REF.findall(text) for where, text in texts.items()}
    assert not {k: v for k, v in found.items() if v}


def test_the_tracker_reference_pattern_catches_what_it_should():
    assert TRACKER_REF.findall("Against the goal of issue #8 (recall)") == ["issue #8"]
    assert TRACKER_REF.findall("see #15") == ["#15"]
    assert not TRACKER_REF.findall("colour &#9632; 5x5 px, 95 % agreement, step 2 of 3")
