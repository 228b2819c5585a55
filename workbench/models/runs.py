"""Run folders: readable unique ids, the ``run.json`` record, fingerprints and metric tables.

A run folder ``outputs/runs/<run_id>/`` describes itself::

    run.json        resolved config, seed, versions, git commit, dataset fingerprint,
                    model size, device, status, final metrics
    metrics.csv     one row per epoch, tidy column names (from ultralytics' results.csv)
    weights/        best.pt, last.pt (ultralytics' own output stays in this folder)
    results.csv, args.yaml   ultralytics' files, untouched

Nothing here imports ultralytics; :mod:`workbench.models.yolo` fills the record.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import re
import subprocess
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from workbench.core.atomic import write_text
from workbench.core.images import file_sha256
from workbench.core.paths import PROJECT_ROOT, outputs_dir

RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
PACKAGES = ("workbench", "torch", "torchvision", "ultralytics", "timm", "numpy", "pandas", "opencv-python")

_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


def runs_dir() -> Path:
    """Default root of run folders (``outputs/runs``)."""
    return outputs_dir() / "runs"


# ----------------------------------------------------------------------------- ids

def make_run_id(dataset: str, model: str, seed: int, *, root: Path,
                now: _dt.datetime | None = None) -> str:
    """``YYYYmmdd-HHMMSS_<dataset>_<model>_s<seed>``, with ``-2``, ``-3`` ... if taken in ``root``."""
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = "_".join([stamp, _slug(dataset), _slug(model), f"s{seed}"])
    run_id, k = base, 2
    while (root / run_id).exists():
        run_id, k = f"{base}-{k}", k + 1
    return run_id


def check_run_name(name: str) -> str:
    """A user-chosen run name must be a plain folder name."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        raise ValueError(f"run name {name!r}: use letters, digits, '.', '-' and '_' only "
                         "(starting with a letter or digit)")
    return name


def _slug(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.") or "x"


# ----------------------------------------------------------------------------- fingerprints

def dataset_fingerprint(root: str | Path) -> dict[str, Any]:
    """sha256 over the sha256 of every file in ``images/`` and ``labels/`` (sorted by path).

    File names are hashed with the bytes, so renaming an image changes the fingerprint.
    ``splits`` hashes the split lists and ``dataset.yaml`` apart: the same data split
    differently keeps ``sha256`` but changes ``splits``.
    """
    root = Path(root)
    h = hashlib.sha256()
    n = 0
    for sub in ("images", "labels"):
        folder = root / sub
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")) \
            if folder.is_dir() else []
        for p in files:
            h.update(f"{p.relative_to(root).as_posix()}\0{file_sha256(p)}\n".encode())
            n += 1
    s = hashlib.sha256()
    for name in ("dataset.yaml", "train.txt", "val.txt", "test.txt"):
        p = root / name
        s.update(name.encode() + b"\0" + (p.read_bytes() if p.is_file() else b"") + b"\0")
    return {"sha256": h.hexdigest(), "files": n, "splits": s.hexdigest()}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions (None where a package is missing)."""
    out: dict[str, str | None] = {}
    for name in names:
        dist = "cell-workbench" if name == "workbench" else name
        try:
            out[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any] | None:
    """Commit and dirty flag of the checkout, or None outside git / without git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


# ----------------------------------------------------------------------------- metrics

def tidy_metric_name(column: str) -> str:
    """``metrics/mAP50-95(B)`` -> ``mAP50_95``; ``train/box_loss`` -> ``train_box_loss``."""
    name = column.strip()
    name = re.sub(r"\((B|M|P)\)$", "", name)
    name = name.removeprefix("metrics/")
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def tidy_metrics(results_csv: str | Path) -> pd.DataFrame:
    """ultralytics' per-epoch ``results.csv`` with tidy names: epoch, time, train_*_loss,
    precision, recall, mAP50, mAP50_95, val_*_loss, lr_pg*."""
    df = pd.read_csv(results_csv)
    df.columns = [tidy_metric_name(c) for c in df.columns]
    if "epoch" in df:
        df["epoch"] = df["epoch"].astype(int)
    return df


# ----------------------------------------------------------------------------- record

def write_run_record(run_dir: str | Path, record: dict[str, Any]) -> Path:
    return write_text(Path(run_dir) / RUN_FILE, json.dumps(record, indent=2, default=str) + "\n")


def read_run_record(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a workbench run folder (no {RUN_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def update_run_record(run_dir: str | Path, **changes: Any) -> dict[str, Any]:
    record = read_run_record(run_dir)
    record.update(changes)
    write_run_record(run_dir, record)
    return record


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The run record, plus ``run_dir``, ``metrics`` (DataFrame or None) and ``weights`` paths."""
    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    metrics_path = run_dir / METRICS_FILE
    record["run_dir"] = str(run_dir.resolve())
    record["metrics"] = pd.read_csv(metrics_path) if metrics_path.is_file() else None
    record["weights"] = {k: str(p) for k in ("best", "last")
                         if (p := run_dir / "weights" / f"{k}.pt").is_file()}
    return record


def run_weights(run_dir: str | Path) -> Path:
    """best.pt of a run, else last.pt (an interrupted run); error naming the folder if neither."""
    run_dir = Path(run_dir)
    for name in ("best.pt", "last.pt"):
        p = run_dir / "weights" / name
        if p.is_file():
            return p
    raise FileNotFoundError(f"{run_dir}: run has no weights/best.pt or weights/last.pt")


def finished_with(run_dir: str | Path, *, model: str, epochs: int, imgsz: int, batch: int | None = None,
                  pretrained: str | Path | None = None, seed: int | None = None,
                  dataset: str | Path | None = None) -> bool:
    """True when ``run_dir`` holds a *finished* run trained with exactly these settings.

    The one run-reuse policy of the studies (:meth:`workbench.studies.base.Study.train_or_reuse`):
    a run made with other settings, another seed, other initial weights, other data or other
    splits (``dataset``: its fingerprint is compared), or an unfinished run, is not reused, so
    changing a profile never silently mixes results. ``None`` leaves that setting unchecked.
    """
    rec = _record_with(run_dir, model=model, epochs=epochs, imgsz=imgsz, batch=batch, pretrained=pretrained,
                       seed=seed, dataset=dataset)
    return rec is not None and rec.get("status") == "finished"


def resumable_with(run_dir: str | Path, *, model: str, epochs: int, imgsz: int, batch: int | None = None,
                   pretrained: str | Path | None = None, seed: int | None = None,
                   dataset: str | Path | None = None) -> bool:
    """True when ``run_dir`` holds an *unfinished* run started with exactly these settings (as
    :func:`finished_with` compares them) that saved at least one epoch (``weights/last.pt``):
    a run stopped by a timeout, a session's end or a lost cluster node continues from there
    instead of starting again."""
    rec = _record_with(run_dir, model=model, epochs=epochs, imgsz=imgsz, batch=batch, pretrained=pretrained,
                       seed=seed, dataset=dataset)
    return (rec is not None and rec.get("status") != "finished"
            and (Path(run_dir) / "weights" / "last.pt").is_file())


def _record_with(run_dir: str | Path, *, model: str, epochs: int, imgsz: int, batch: int | None,
                 pretrained: str | Path | None, seed: int | None,
                 dataset: str | Path | None) -> dict[str, Any] | None:
    """``run.json`` of ``run_dir`` when its resolved config matches these settings, else None."""
    try:
        rec = read_run_record(run_dir)
    except (FileNotFoundError, ValueError):
        return None
    cfg = rec.get("config", {})
    want_pre = str(Path(pretrained).resolve()) if pretrained else None
    got_pre = (rec.get("model") or {}).get("pretrained")
    same_data = True
    if dataset is not None:
        root = Path(dataset)
        root = root.parent if root.is_file() else root
        same_data = (rec.get("dataset") or {}).get("fingerprint") == dataset_fingerprint(root)
    same = (cfg.get("epochs") == epochs and cfg.get("imgsz") == imgsz
            and (batch is None or cfg.get("batch") == batch)
            and (seed is None or cfg.get("seed") == seed)
            and (rec.get("model") or {}).get("spec") == str(model)
            and (got_pre is None if want_pre is None else got_pre is not None and Path(got_pre).resolve() == Path(want_pre))
            and same_data)
    return rec if same else None


def record_training_length(run_dir: str | Path, length: Any) -> dict[str, Any]:
    """Add ``training_length`` (a :class:`workbench.data.library.composition.TrainingLength`) to a run's ``run.json``."""
    return update_run_record(run_dir, training_length=length.to_dict())
