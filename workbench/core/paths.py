"""Every path the workbench uses, from one place (no notebook holds a literal path).

``WORKBENCH_OUTPUTS`` overrides where generated runs, tables and figures go.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # workbench/core/paths.py -> project root
DATA_DIR = PROJECT_ROOT / "data"
RAW_DIR = DATA_DIR / "raw"  # vendored real data, read-only
GENERATED_DATA_DIR = DATA_DIR / "generated"  # canonical datasets made from RAW_DIR (git-ignored)
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
MODELS_DIR = DATA_DIR / "models"  # small models the project trained itself, each with run.json + PROVENANCE.md
# yolov8n pretrained on 10 MoNuSeg H&E tiles (the 3 vendored tiles are its test set): the source
# model to fine-tune from offline (data/models/monuseg_yolov8n/PROVENANCE.md)
SOURCE_MODEL = MODELS_DIR / "monuseg_yolov8n"


def outputs_dir() -> Path:
    """Root of generated runs, tables and figures (git-ignored)."""
    return Path(os.environ.get("WORKBENCH_OUTPUTS", PROJECT_ROOT / "outputs")).resolve()


def shared_data_dir() -> Path | None:
    """The fuller datasets beside the checkout (``../shared/data``), if this machine has them."""
    p = PROJECT_ROOT.parent / "shared" / "data"
    return p if p.is_dir() else None


# Vendored datasets (see data/raw/*/PROVENANCE.md), by name.
VENDORED = {
    "bccd": RAW_DIR / "bccd" / "BCCD",
    "monuseg": RAW_DIR / "monuseg" / "MoNuSegTrainingData",
    "mnfinder": RAW_DIR / "mnfinder",
}
# The format each vendored dataset is in (the `convert --format` value).
VENDORED_FORMAT = {"bccd": "voc", "monuseg": "monuseg", "mnfinder": "masks"}
# Each vendored dataset's positive classes: the cells a clinical rate counts as findings, and
# what a training library's minimum positive share counts (every other class is normal).
POSITIVE_CLASSES: dict[str, tuple[str, ...]] = {
    "bccd": ("WBC", "Platelets"),  # against RBC
    "monuseg": ("nucleus",),  # one class: every nucleus
    "mnfinder": ("mn",),  # micronuclei, against nucleus
}
