"""The box-table schema shared by every layer, and its file I/O.

A *prediction table* has one row per box: ``image`` (image id), ``x1 y1 x2 y2`` (pixels of the
original image), ``class`` (name) and ``score``; an image without detections has no rows. A
ground-truth table is the same without ``score``. Files are CSV or Parquet (by suffix), written
atomically.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Sequence

import pandas as pd

from workbench.core.atomic import new_file, write_text

PREDICTION_COLUMNS = ["image", "x1", "y1", "x2", "y2", "class", "score"]
BOX_COLUMNS = ["x1", "y1", "x2", "y2", "class", "score"]  # one image's detections (no ``image``)
# Most boxes a detector may return per image (or per tile / canvas): above the densest images
# here (MoNuSeg tiles hold 300-800 nuclei); ultralytics' own default of 300 would truncate them.
MAX_DET = 1000
# Per whole large image after tiles are merged (many tiles' worth of boxes).
MAX_DET_LARGE = 3000
# Score floor of the predictions mAP is computed from: the whole precision-recall curve (ultralytics'
# val uses the same), never an operating threshold.
MAP_CONF = 0.001


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second (for records and provenance)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def empty_predictions() -> pd.DataFrame:
    """A prediction table with no rows and the schema's dtypes."""
    return pd.DataFrame({"image": pd.Series(dtype=str), **{c: pd.Series(dtype=float) for c in PREDICTION_COLUMNS[1:5]},
                         "class": pd.Series(dtype=str), "score": pd.Series(dtype=float)})


def empty_boxes() -> pd.DataFrame:
    """One image's box table with no rows (:data:`BOX_COLUMNS`, no ``image`` column)."""
    return empty_predictions()[BOX_COLUMNS]


def require_columns(df: object, name: str, required: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the table and the missing columns unless ``df`` has them all."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{name} table is missing column(s) {missing}; it has {list(df.columns)}")


def write_predictions(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a prediction table as CSV or Parquet (by suffix), atomically."""
    path = Path(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"prediction table lacks columns {missing} (needs {PREDICTION_COLUMNS})")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return write_text(path, df.to_csv(index=False))
    if suffix != ".parquet":
        raise ValueError(f"{path}: write predictions as .csv or .parquet")
    try:
        with new_file(path) as tmp:
            df.to_parquet(tmp, index=False)
    except ImportError as exc:
        raise ImportError(f"{path}: writing Parquet needs pyarrow (pip install pyarrow), "
                          f"or write .csv ({exc})") from None
    return path


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_predictions` (image names stay strings)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prediction table not found")
    if path.suffix.lower() == ".parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path, dtype={"image": str, "class": str}, keep_default_na=False)
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a prediction table, lacks columns {missing}")
    return df
