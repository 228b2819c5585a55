"""Independent-test evaluation of the cascade (notebook 05): models, rates, statistics, overlays.

The flow: a canonical dataset with a test split that no model or threshold ever saw
(:func:`workbench.data.holdout.with_test_split` when the dataset has none) -> a detector (from scratch,
or fine-tuned from the committed MoNuSeg source model when the profile says so) and a crop
classifier trained on train, early-stopped on val (or given as run folders) -> thresholds
tuned on val and frozen in the classifier's ``cascade.json`` -> the cascade and the detector
alone run once on the test images -> clinical rates with bootstrap CIs, pass/fail, error
attribution, cell statistics and an overlay gallery of the worst images. Rates, counts and overlays
use the frozen operating point; detection mAP uses the same models' boxes down to
:data:`~workbench.core.tables.MAP_CONF` (the whole precision-recall curve).

Three cells: ``detector_*`` trains the detector, ``classifier_*`` trains the classifier and
freezes the cascade thresholds for that detector (so it needs the detector), ``test_evaluation``
runs both systems on the test split (needs both). Finished runs are reused only when their
resolved config matches (the detector by :meth:`Study.train_or_reuse`, the classifier by
:func:`finished_classifier`, which also checks the detector it was frozen for); the thresholds
are frozen again on every run (one pass over val). Given run folders (``detector=``,
``classifier=``) replace the training, and the given classifier's ``cascade.json`` is rewritten.
A cell returns one row per table it makes (``table``, ``columns``, ``records``), so the
evaluation's many tables travel as plain rows.

Outputs (:meth:`Study.write_outputs`): the tables ``rates``, ``rates_side_by_side``, ``pass_fail``,
``error_attribution``, ``detection``, ``counting``, ``timing``, ``predictions_*``, ``tuning_val`` (when tuned),
``stats_*`` and ``error_cells``; the figures ``class_share``, ``count_agreement``, ``counts_per_image``,
``positive_ratio``, ``cell_size``, ``neighbourhood`` and the ``worst_overlays`` gallery.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.core.paths import POSITIVE_CLASSES
from workbench.core.tables import MAP_CONF
from workbench.data.holdout import DATA_SEED, held_out_dataset
from workbench.studies.base import Cell, Profile, Study, register

if TYPE_CHECKING:
    from workbench.evaluation.files import GroundTruth

SYSTEMS = ("detector-only", "cascade")
CASCADE_DETECTOR = "cascade_detector"  # run.json key: the detector a classifier's thresholds were frozen for
STAT_FIGURES = ("class_share", "count_agreement", "counts_per_image", "positive_ratio", "cell_size", "neighbourhood")


@dataclass(frozen=True)
class TestProfile(Profile):
    """How big the models and the run are (see :data:`PROFILES`)."""

    det_model: str = "yolov8n.yaml"  # detector architecture (ultralytics YAML name)
    det_pretrained: bool = False  # fine-tune the detector from the committed MoNuSeg source model
    #                               (core.paths.SOURCE_MODEL, weights/best.pt); False: from scratch
    det_imgsz: int = 640  # detector training and inference image size (px)
    det_epochs: int = 100  # detector training epochs
    det_batch: int | None = None  # detector training batch (images); None: what fits the device
    det_warmup_epochs: float = 3.0  # ultralytics learning-rate warm-up of the detector (epochs)
    cls_arch: str = "resnet34"  # timm classifier architecture, trained on the GT boxes' crops
    crop_size: int = 96  # side of the square crop the classifier sees (px)
    crop_pad: float = 0.15  # context added around each box, as a fraction of the box size
    cls_epochs: int = 30  # classifier training epochs at most (early stopping on val)
    cls_patience: int = 5  # classifier epochs without a better val score before it stops
    cls_batch: int = 64  # classifier training batch (crops)
    balance: str = "equal"  # class balance of the training crops (workbench.models.balance modes)
    seed: int = 0  # seed of the detector and classifier training and of the bootstrap resamples
    test_fraction: float = 0.5  # share of val held out as test when the dataset ships no test split
    caps: tuple[tuple[str, int], ...] = ()  # (split, at most this many images) pairs; () keeps all
    n_boot: int = 1000  # bootstrap resamples of the test images for the 95 % CIs of the rates
    tune: bool = True  # tune det_conf / cls_thr on val; otherwise use det_conf below and cls_thr 0
    tune_objective: str = "f1"  # what the tuning maximises (workbench.inference.cascade.OBJECTIVES)
    det_conf: float = 0.5  # detector confidence threshold (0-1) when not tuning (the published default)
    gallery: int = 6  # test images with the most errors shown in the overlay gallery


PROFILES = {
    # CI: the whole path on real data in about two minutes on 2 CPU cores (the models learn little)
    "smoke": TestProfile("smoke", det_imgsz=160, det_epochs=1, det_batch=8, det_warmup_epochs=0,
                         cls_arch="resnet18", crop_size=32, cls_epochs=1, cls_patience=1, cls_batch=32,
                         caps=(("train", 16), ("val", 6), ("test", 6)), n_boot=200, gallery=3,
                         # a one-epoch detector scores below 0.01: a low fixed threshold lets boxes
                         # reach the classifier, so CI exercises every stage
                         tune=False, det_conf=0.001),
    # a real CPU run, estimated ~35 min on 2 cores (not yet measured): every training image the data
    # has (BCCD: 205; a seeded half of the official val is held out as test, 52 of BCCD's 87
    # images, the other 35 early-stop and tune) at 416 px, batch 16 (13 optimiser steps an epoch),
    # 30 epochs, the detector fine-tuned from the committed MoNuSeg source model: ~23 min (yolov8n
    # at these settings: ~15 min per 20 epochs); resnet18 on 64-px crops, at most 15 epochs of ~800
    # balanced crops: ~5 min; tuning on val and the test evaluation with 1000 bootstrap resamples:
    # a few minutes. One seed: the headline is the paired cascade vs detector-only comparison on
    # one detector, with CIs over test images (the caption says so).
    "cpu": TestProfile("cpu", det_imgsz=416, det_epochs=30, det_batch=16, det_pretrained=True,
                       cls_arch="resnet18", crop_size=64, cls_epochs=15, cls_patience=4),
    # make demo: a real model in about 10 minutes on 2 CPU cores. The detector is fine-tuned from the
    # committed MoNuSeg source model for 10 epochs at 416 px, batch 16 (the fine-tuned reference run
    # passes val mAP50 0.5 at epoch 7; ~45 s an epoch on idle cores); resnet18 on 64-px crops for at
    # most 6 epochs. Short, so its rates are a demonstration, not a result (the cpu profile is the study).
    "demo": TestProfile("demo", det_imgsz=416, det_epochs=10, det_batch=16, det_pretrained=True,
                        cls_arch="resnet18", crop_size=64, cls_epochs=6, cls_patience=3, n_boot=500),
    # a GPU: the published setting (ResNet34 on 96-px crops), 640 px detector
    "full": TestProfile("full", det_model="yolov8s.yaml", det_imgsz=640, det_epochs=100,
                        cls_arch="resnet34", crop_size=96, cls_epochs=30, cls_patience=5),
}

# What counts as positive / normal, and which quality preset applies, per named dataset.
TASKS: dict[str, dict[str, Any]] = {
    "bccd": {"positive": list(POSITIVE_CLASSES["bccd"]), "normal": ["RBC"], "preset": "chromosome_aberrations"},
    "mnfinder": {"positive": list(POSITIVE_CLASSES["mnfinder"]), "normal": ["nucleus"], "preset": "micronuclei"},
}


@register
class IndependentTestStudy(Study):
    """Cascade vs detector alone on a held-out test split: detector, classifier, evaluation cells."""

    name = "05_independent_test"
    profiles = PROFILES
    headline_tables = ("rates_across_runs", "detection_across_runs", "rates_side_by_side", "detection", "counting")
    profile: TestProfile
    split = "test"

    def __init__(self, dataset: str | Path | None = None, *, detector: str | Path | None = None,
                 classifier: str | Path | None = None, positive: Sequence[str] | None = None,
                 normal: Sequence[str] | None = None, preset: str | None = None,
                 group_by: str | None = "density", **base: Any) -> None:
        super().__init__(dataset, **base)
        task = TASKS.get(Path(self.dataset).name, {})
        self.positive = list(positive or task.get("positive") or [])
        self.normal = list(normal or task.get("normal") or [])
        if not self.positive:
            raise ValueError(f"dataset {self.dataset!r}: give positive= (the classes that count as positive)")
        self.preset = preset or task.get("preset", "chromosome_aberrations")
        self.group_by = group_by or None
        if (detector is None) != (classifier is None):
            raise ValueError("give both detector= and classifier= run folders, or neither (then both are trained)")
        self.given = (Path(detector), Path(classifier)) if detector is not None else None

    def study_args(self) -> dict[str, Any]:
        given = {"detector": str(self.given[0]), "classifier": str(self.given[1])} if self.given else {}
        return {**super().study_args(), **given, "positive": self.positive, "normal": self.normal,
                "preset": self.preset, "group_by": self.group_by}

    # ----------------------------------------------------------------- cells
    def prepare(self) -> None:
        from workbench.evaluation.files import load_ground_truth

        p = self.profile
        self.data = held_out_dataset(self.dataset, self.work_dir / "data", test_fraction=p.test_fraction,
                                     caps=p.caps, tag=p.name, fmt=self.fmt)
        gt = load_ground_truth(self.data, split=self.split)
        if not len(gt.images):
            raise ValueError(f"{self.data}: the {self.split!r} split is empty")
        self.test_images = len(gt.images)
        self.group_derived = bool(self.group_by) and self.group_by not in gt.meta.reset_index().columns

    @property
    def detector_key(self) -> str:
        p = self.profile
        init = "_ft" if p.det_pretrained else ""  # fine-tuned from the source model
        return f"detector_{Path(p.det_model).stem}{init}_{p.det_imgsz}_e{p.det_epochs}_s{p.seed}"

    @property
    def detector_init(self) -> Path | None:
        """The weights the detector starts from: the committed source model's best.pt when the
        profile fine-tunes (``det_pretrained``), else None (random initialisation)."""
        from workbench.core.paths import SOURCE_MODEL

        return SOURCE_MODEL / "weights" / "best.pt" if self.profile.det_pretrained and not self.given else None

    @property
    def classifier_key(self) -> str:
        p = self.profile
        return "classifier_given" if self.given else f"classifier_{p.cls_arch}_{p.crop_size}_e{p.cls_epochs}_s{p.seed}"

    @property
    def detector_run(self) -> Path:
        """The detector evaluated: the given run folder, else the detector cell's run folder."""
        return self.given[0] if self.given else self.work_dir / "runs" / self.detector_key

    @property
    def classifier_run(self) -> Path:
        """The classifier (and its ``cascade.json``): given, else the classifier cell's run folder."""
        return self.given[1] if self.given else self.work_dir / "runs" / self.classifier_key

    def cells(self) -> list[Cell]:
        p = self.profile
        det, cls = str(self.detector_run), str(self.classifier_run)
        trained = [] if self.given else [
            self.cell(self.detector_key, step="detector", model=p.det_model, imgsz=p.det_imgsz, epochs=p.det_epochs,
                      batch=p.det_batch, warmup_epochs=p.det_warmup_epochs, seed=p.seed, run=det,
                      pretrained=str(self.detector_init) if self.detector_init else None)]
        return trained + [
            self.cell(self.classifier_key, needs=[c.key for c in trained], step="classifier", train=not self.given,
                      run=cls, detector=det, arch=p.cls_arch, crop_size=p.crop_size, crop_pad=p.crop_pad,
                      epochs=p.cls_epochs, patience=p.cls_patience, batch=p.cls_batch, balance=p.balance, seed=p.seed,
                      tune=p.tune, objective=p.tune_objective, det_conf=p.det_conf),
            self.cell("test_evaluation", needs=[c.key for c in trained] + [self.classifier_key], step="evaluation",
                      detector=det, classifier=cls, split=self.split)]

    def run_cell(self, cell: Cell) -> list[dict[str, Any]]:
        c = cell.config
        if c["step"] == "detector":
            self.train_or_reuse(c["run"], self.data, model=c["model"], epochs=c["epochs"], imgsz=c["imgsz"],
                                batch=c["batch"], seed=c["seed"], pretrained=c.get("pretrained"),
                                warmup_epochs=c["warmup_epochs"])
            return []
        if c["step"] == "classifier":
            run, detector = Path(c["run"]), Path(c["detector"])
            if c["train"]:
                self.train_classifier_or_reuse(run, detector, c)
            return table_rows({"tuning_val": freeze_thresholds(run, detector, self.data, tune=c["tune"],
                                                                objective=c["objective"], det_conf=c["det_conf"],
                                                                device=self.device, log=self.log)})
        if c["step"] == "evaluation":
            return table_rows(evaluate_systems(
                self.data, Path(c["detector"]), Path(c["classifier"]), positive=self.positive, normal=self.normal,
                preset=self.preset, group_by=self.group_by, split=c["split"], n_boot=self.profile.n_boot,
                seed=self.profile.seed, device=self.device))
        raise ValueError(f"cell {cell.key}: unknown step {c['step']!r}")

    def train_classifier_or_reuse(self, run: Path, detector: Path, c: Mapping[str, Any]) -> Path:
        """The classifier's reuse policy: a finished run with the same architecture, crops, epochs,
        seed, detector and dataset fingerprint is reused (:func:`finished_classifier`), else retrained."""
        import shutil

        from workbench.models.classifier import train_classifier
        from workbench.models.crops import CropSpec
        from workbench.models.runs import update_run_record

        if finished_classifier(run, arch=c["arch"], crop_size=c["crop_size"], crop_pad=c["crop_pad"],
                               epochs=c["epochs"], seed=c["seed"], detector=detector, dataset=self.data):
            self.log(f"[{self.short_name}] reusing {run.name} (finished with the same config)")
            return run
        if run.exists():
            shutil.rmtree(run)
        self.log(f"[{self.short_name}] training the classifier {c['arch']} on {c['crop_size']}-px crops, "
                 f"{c['epochs']} epochs")
        train_classifier(self.data, arch=c["arch"], crop=CropSpec(size=c["crop_size"], pad=c["crop_pad"]),
                         balance=c["balance"], epochs=c["epochs"], patience=c["patience"], batch=c["batch"],
                         seed=c["seed"], device=self.device, run_name=run.name, runs_root=run.parent, verbose=False)
        update_run_record(run, **{CASCADE_DETECTOR: detector_identity(detector)})
        return run

    # ----------------------------------------------------------------- outputs
    def tables(self, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
        got, by = tables_from_rows(rows), variant_columns(rows)
        order = ["rates", "rates_side_by_side", "rates_across_runs", "pass_fail", "error_attribution", "detection",
                 "detection_across_runs", "counting", "timing", "predictions_detector_only", "predictions_cascade",
                 "tuning_val"]
        got["rates_side_by_side"] = rates_wide(got["rates"], by=by)
        if by and len(got["rates"][by].drop_duplicates()) > 1:
            got.update(across_variants(got))
            got["variants"] = got["rates"][by].drop_duplicates().reset_index(drop=True)
        if not len(got.get("tuning_val", ())):
            got.pop("tuning_val", None)  # fixed thresholds: nothing was tuned
        return {name: got[name] for name in order + sorted(set(got) - set(order)) if name in got}

    def figures(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
        from workbench.data.canonical import read_images
        from workbench.report.overlays import overlay_gallery

        # several runs (a grid's --vary): the figures show the first one's images; the caption says which
        tables = one_variant(tables, list(tables["variants"].columns) if "variants" in tables else [])
        figs = stats_figures({k[len("stats_"):]: v for k, v in tables.items() if k.startswith("stats_")},
                             classes=self.positive + self.normal, group=self.group_by)
        worst = worst_images(tables["error_cells"], self.profile.gallery)
        if worst:
            shown, titles = gallery_boxes(tables["error_cells"], tables["predictions_cascade"], worst)
            figs["worst_overlays"] = overlay_gallery(read_images(self.data, worst), shown, positive=self.positive,
                                                     normal=self.normal, image_ids=worst, titles=titles)
        return figs

    def caption(self, name: str, tables: Mapping[str, pd.DataFrame]) -> str:
        derived = " (derived from the data, not a lab label)" if self.group_derived else ""
        p = self.profile
        init = ("given run" if self.given else "fine-tuned from the committed MoNuSeg source model"
                if p.det_pretrained else "trained from scratch")
        chosen = "the thresholds were tuned on val" if p.tune else f"fixed det_conf {p.det_conf:g}, not tuned"
        common = (f"TEST split: {self.test_images} images never used for training, early stopping or threshold "
                  f"tuning (val chose the checkpoints; {chosen}); positive = {', '.join(self.positive)}; "
                  f"groups: {self.group_by or 'none'}{derived}. Detector {self.detector_run.name} ({init}), "
                  f"classifier {self.classifier_run.name}; profile {p.name}")
        if "variants" in tables:  # a grid's --vary: the figure shows one run, the tables hold them all
            v = tables["variants"]
            common += (f"; {len(v)} runs ({', '.join(v.columns)} varied): this figure shows {variant_label(v)}, "
                       f"whose CIs are over test images only; the tables rates_across_runs and "
                       f"detection_across_runs give the spread over all runs.")
        else:
            common += (f", one seed ({p.seed}): both systems share that detector and are compared on the same "
                       f"test images (CIs over images), so the spread between training seeds is not part of "
                       f"these intervals.")
        return CAPTIONS.get(name, "") + " " + common

    def settings(self) -> dict[str, Any]:
        from workbench.inference.cascade import read_cascade
        from workbench.models.runs import dataset_fingerprint

        frozen = read_cascade(self.classifier_run) or {}
        return {"data": str(self.data), "fingerprint": dataset_fingerprint(self.data), "split": self.split,
                "detector": str(self.detector_run), "classifier": str(self.classifier_run),
                "detector_init": str(self.detector_init) if self.detector_init else None,
                "positive": self.positive, "normal": self.normal, "preset": self.preset, "group_by": self.group_by,
                "det_conf": frozen.get("det_conf"), "cls_thr": frozen.get("cls_thr"), "tuned": self.profile.tune,
                "map_conf": MAP_CONF,
                "n_boot": self.profile.n_boot, "test_images": self.test_images, "group_derived": self.group_derived}


CAPTIONS = {
    "class_share": "Class shares of the ground truth (left) and of the cascade's output at the operating "
                   "point (right), summed over the test images.",
    "count_agreement": "Cells per image counted by the cascade at the operating point against the truth, one "
                       "point per test image (jittered by up to 0.15 so equal counts stay visible); the "
                       "diagonal is perfect counting; MAE and bias (predicted minus true) per class in the "
                       "panel titles (the table `counting` has both systems).",
    "counts_per_image": "Cells per image by class (GT), one point per image.",
    "positive_ratio": "Positive share per image (GT).",
    "cell_size": "Box area as a fraction of the image (left) and relative to the mean normal cell of the "
                 "same image (right), per class (GT).",
    "neighbourhood": "Normal cells within k x the mean positive-cell radius of each positive cell "
                     "(radius = sqrt(area/pi)); line = mean over images, band = range.",
    "worst_overlays": "Cascade output on the test images with the most errors; black boxes are GT "
                      "cells no detection matched (IoU < 0.5).",
}


# ----------------------------------------------------------------------------- rows <-> tables

def table_rows(tables: Mapping[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """One plain (JSON-ready) row per table: ``table``, ``columns`` and ``records``."""
    out = []
    for name, df in tables.items():
        records = df.astype(object).where(df.notna(), None).to_dict("records")
        out.append({"table": name, "columns": [str(c) for c in df.columns], "records": records})
    return out


ROW_KEYS = ("cell", "table", "columns", "records")  # what a gathered table row holds besides variant fields


def variant_columns(rows: pd.DataFrame) -> list[str]:
    """The varied profile fields of gathered rows (a grid's ``--vary seed=0,1,2`` adds ``seed``)."""
    return [str(c) for c in rows.columns if c not in ROW_KEYS]


def tables_from_rows(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The tables of :func:`table_rows` rows back (columns in their order, empty tables kept).
    Rows of several variants (a grid run with ``--vary``) give one table each, stacked, with the
    varied fields as the first columns: no variant's table replaces another's."""
    if "table" not in rows.columns:
        return {}
    by = variant_columns(rows)
    frames: dict[str, list[pd.DataFrame]] = {}
    for r in rows.to_dict("records"):
        if not isinstance(r.get("table"), str):
            continue
        df = pd.DataFrame(list(r["records"]), columns=list(r["columns"]))
        for i, col in enumerate(by):
            df.insert(i, col, r[col])
        frames.setdefault(str(r["table"]), []).append(df)
    return {name: pd.concat([f for f in fs if len(f)] or fs[:1], ignore_index=True) for name, fs in frames.items()}


def across_variants(tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Mean, min and max over the variants (e.g. training seeds) of each system's rates (per group
    and metric) and detection scores: the spread between runs that the per-run intervals omit."""
    out = {}
    rates = tables["rates"]
    out["rates_across_runs"] = (rates.groupby(["system", "group", "metric"], sort=False)["value"]
                                .agg(mean="mean", min="min", max="max", runs="count").reset_index())
    det = tables["detection"]
    scores = [c for c in det.columns if c == "map50" or c == "map50_95" or c.startswith("ap50_")]
    agg = det.groupby("system", sort=False)[scores].agg(["mean", "min", "max"])
    agg.columns = [f"{m}_{stat}" for m, stat in agg.columns]
    out["detection_across_runs"] = agg.assign(runs=det.groupby("system", sort=False).size()).reset_index()
    return out


def variant_label(variants: pd.DataFrame) -> str:
    """The first variant of a ``variants`` table (what the figures show), e.g. ``seed 0``."""
    return ", ".join(f"{k} {v}" for k, v in variants.iloc[0].items())


def one_variant(tables: Mapping[str, pd.DataFrame], by: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The tables of the first variant only (what the figures show), ``by`` columns dropped."""
    if not by:
        return dict(tables)
    first = tables["rates"][list(by)].iloc[0]
    keep = {}
    for name, t in tables.items():
        if set(by) <= set(t.columns):
            t = t[(t[list(by)].astype(str) == first.astype(str).to_numpy()).all(axis=1)].drop(columns=list(by))
        keep[name] = t.reset_index(drop=True)
    return keep


# ----------------------------------------------------------------------------- data

def derive_groups(meta: pd.DataFrame, gt: pd.DataFrame, column: str) -> pd.Series:
    """A grouping column for ``meta`` (one value per image), taken or derived.

    An existing meta column is used as is. Derived (public data has no treatment or centre):
    ``"set"`` = the folder part of the image id (MNFinder's acquisition set, e.g.
    ``val/2022-05-26_RPE1``); ``"density"`` = tertile of GT objects per image
    (``low``/``mid``/``high``, cut points from these images).
    """
    if column in meta.columns:
        return meta[column].astype(str)
    ids = meta["image_id"].astype(str)
    if column == "set":
        return ids.map(lambda i: i.rsplit("/", 1)[0] if "/" in i else "(none)").rename("set")
    if column == "density":
        n = gt["image"].astype(str).value_counts().reindex(ids, fill_value=0).to_numpy(dtype=float)
        if len(n) < 3 or np.unique(n).size < 3:
            return pd.Series(np.where(n > np.median(n), "high", "low"), index=meta.index, name="density")
        cuts = np.quantile(n, [1 / 3, 2 / 3])
        return pd.Series(np.select([n <= cuts[0], n <= cuts[1]], ["low", "mid"], "high"),
                         index=meta.index, name="density")
    raise ValueError(f"group_by {column!r} is neither a meta.csv column ({list(meta.columns)}) "
                     "nor a derived grouping ('set', 'density')")


# ----------------------------------------------------------------------------- models

def detector_identity(run: str | Path) -> dict[str, Any]:
    """What names one trained detector: its folder, run id and finish time (a retrain at the same
    folder changes the finish time)."""
    from workbench.models.runs import read_run_record

    rec = read_run_record(run)
    return {"run": str(Path(run).resolve()), "run_id": rec.get("run_id"), "finished": rec.get("finished")}


def finished_classifier(run: str | Path, *, arch: str, crop_size: int, crop_pad: float, epochs: int, seed: int,
                        detector: str | Path, dataset: str | Path) -> bool:
    """True when ``run`` is a *finished* classifier trained with exactly these settings, for this
    detector (as recorded by the study) and on this data (fingerprint compared), like
    :func:`workbench.models.runs.finished_with` for detectors."""
    from workbench.models.runs import dataset_fingerprint, read_run_record

    try:
        rec = read_run_record(run)
        det = detector_identity(detector)
    except (FileNotFoundError, ValueError):
        return False
    cfg, crop = rec.get("config") or {}, rec.get("crop") or {}
    return (rec.get("status") == "finished" and (rec.get("model") or {}).get("arch") == arch
            and crop.get("size") == crop_size and crop.get("pad") == crop_pad
            and cfg.get("epochs") == epochs and cfg.get("seed") == seed
            and rec.get(CASCADE_DETECTOR) == det
            and (rec.get("dataset") or {}).get("fingerprint") == dataset_fingerprint(dataset))


def freeze_thresholds(classifier: Path, detector: Path, data: Path, *, tune: bool, objective: str,
                      det_conf: float, device: str | None = None, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Freeze the cascade thresholds in ``classifier/cascade.json``: tuned on val (returns the
    grid, every objective per point) or the fixed ``det_conf`` with ``cls_thr`` 0 (empty table)."""
    from workbench.inference.cascade import tune_thresholds, write_cascade

    if not tune:
        write_cascade(classifier, detector=detector, det_conf=det_conf, cls_thr=0.0)
        return pd.DataFrame()
    chosen, grid = tune_thresholds(classifier, data, detector=detector, split="val", objective=objective,
                                   device=device)
    log(f"[independent_test] tuned on val: det_conf {chosen['det_conf']}, cls_thr {chosen['cls_thr']} "
        f"({objective} {chosen['value']:.3f})")
    return grid


# ----------------------------------------------------------------------------- evaluation

def detection_table(gt: pd.DataFrame, preds: Mapping[str, pd.DataFrame], classes: Sequence[str]) -> pd.DataFrame:
    """mAP50, mAP50-95 and AP50 per class of each system, by the pycocotools-equal engine.

    ``preds`` should be ranked predictions (a low score floor, see :func:`run_systems`); the
    lowest score each table holds is recorded as ``score_floor``."""
    from workbench.evaluation import metrics

    rows = []
    for name, pred in preds.items():
        r = metrics.evaluate(gt, pred, classes=list(classes))
        rows.append({"system": name, "map50": r.map50, "map50_95": r.map50_95, "n_pred": len(pred),
                     "score_floor": float(pred["score"].min()) if len(pred) else float("nan"),
                     **{f"ap50_{c}": v["ap50"] for c, v in r.per_class.items()}})
    return pd.DataFrame(rows)


def counting_table(gt: pd.DataFrame, preds: Mapping[str, pd.DataFrame], classes: Sequence[str],
                   images: Sequence[str]) -> pd.DataFrame:
    """Per-image counts against the truth, per system and class (and all listed classes together):
    totals, MAE, bias (mean predicted minus true), mean relative error and Pearson r over ``images``
    (every test image, so an image with no cell and no box is an exact zero). ``preds`` are the
    operating-point tables: every box in them counts, as a lab would read it off the image."""
    from workbench.evaluation import metrics

    rows = []
    for name, pred in preds.items():
        for cls in [*classes, "all"]:
            keep = list(classes) if cls == "all" else [cls]
            r = metrics.count_metrics(gt[gt["class"].isin(keep)], pred[pred["class"].isin(keep)],
                                      score_thr=-np.inf, images=images)
            rows.append({"system": name, "class": cls, "n_true": int(r.table["n_gt"].sum()),
                         "n_pred": int(r.table["n_pred"].sum()), "mae": r.mae, "bias": r.mean_error,
                         "mean_rel_error": r.mean_rel_error, "pearson_r": r.pearson_r, "images": r.n_images})
    return pd.DataFrame(rows)


def run_systems(data: Path, detector: Path, classifier: Path, *, split: str, device: str | None = None
                ) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame], pd.DataFrame]:
    """The detector alone and the cascade (thresholds from ``cascade.json``) on ``split``, each timed
    once over the whole split after loading and warming the models on one image.

    Returns (operating-point tables, ranked tables, timing table). Both dicts have the keys
    "detector-only" and "cascade" (same boxes within a dict). The operating-point tables are
    predicted at the frozen ``det_conf``: rates, counts, overlays. The ranked tables are predicted
    at :data:`workbench.core.tables.MAP_CONF`, untimed: mAP needs the whole precision-recall curve,
    and boxes below an operating threshold tuned for F1 would cut it short (a class found only at
    low scores, such as platelets early in training, would score AP 0).
    """
    from workbench.evaluation.files import load_ground_truth
    from workbench.inference.cascade import cascade_predict, detector_only, read_cascade
    from workbench.inference.predict import predict
    from workbench.models.classifier import load_classifier

    frozen = read_cascade(classifier) or {}
    conf, cls_thr = float(frozen.get("det_conf", 0.5)), float(frozen.get("cls_thr", 0.0))
    meta = load_ground_truth(data, split=split).meta
    clf = load_classifier(classifier, device=device)
    predict(detector, data / str(meta["file"].iloc[0]), conf=conf, device=device)  # warm-up, not timed
    t0 = time.perf_counter()
    det_alone = predict(detector, data, split=split, conf=conf, device=device)
    t_det = time.perf_counter() - t0
    t0 = time.perf_counter()
    cas = cascade_predict(clf, data, detector=detector, split=split, device=device, det_conf=conf, cls_thr=cls_thr)
    t_cascade = time.perf_counter() - t0
    timing = pd.DataFrame([
        {"system": "detector-only", "seconds": t_det, "images": len(meta), "boxes": len(det_alone)},
        {"system": "cascade", "seconds": t_cascade, "images": len(meta), "boxes": len(cas)}])
    timing["s_per_image"] = timing["seconds"] / timing["images"]
    timing["ratio_vs_detector"] = timing["seconds"] / t_det
    ranked = cascade_predict(clf, data, detector=detector, split=split, device=device,
                             det_conf=min(conf, MAP_CONF), cls_thr=cls_thr)
    # the cascade's detections relabelled back to the detector's classes: identical boxes
    return ({"detector-only": detector_only(cas), "cascade": cas},
            {"detector-only": detector_only(ranked), "cascade": ranked}, timing)


def evaluate_systems(data: Path, detector: Path, classifier: Path, *, positive: Sequence[str],
                     normal: Sequence[str], preset: str, group_by: str | None = None, split: str = "test",
                     n_boot: int = 1000, seed: int = 0, device: str | None = None) -> dict[str, pd.DataFrame]:
    """Run detector-only and the cascade on ``split`` and score both (:func:`score_systems`)."""
    from workbench.evaluation.files import load_ground_truth

    gt = load_ground_truth(data, split=split)
    preds, ranked, timing = run_systems(data, detector, classifier, split=split, device=device)
    return score_systems(gt, preds, ranked, timing, positive=positive, normal=normal, preset=preset,
                         group_by=group_by, n_boot=n_boot, seed=seed)


def score_systems(gt: GroundTruth, preds: Mapping[str, pd.DataFrame], ranked: Mapping[str, pd.DataFrame],
                  timing: pd.DataFrame, *, positive: Sequence[str], normal: Sequence[str], preset: str,
                  group_by: str | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Score each system against ``gt`` (with its per-image meta): rates with CIs (per group),
    pass/fail, error attribution (summary and per cell) and the cell statistics of the GT and of the
    cascade on the operating-point tables ``preds``; detection mAP on the ranked tables ``ranked``
    (see :func:`run_systems`)."""
    from workbench.evaluation.clinical import compare_systems, pass_fail
    from workbench.inference.cascade import attribute_errors

    meta = gt.meta.reset_index()  # image_id as a column
    if group_by:
        meta[group_by] = derive_groups(meta, gt.boxes, group_by).to_numpy()
    rates = compare_systems(gt.boxes, preds, positive=list(positive), group_by=group_by, meta=meta,
                            n_boot=n_boot, seed=seed)
    attributed = {name: attribute_errors(gt.boxes, p, images=gt.images) for name, p in preds.items()}
    images = meta.rename(columns={"image_id": "image"})[["image", "width", "height"] + ([group_by] if group_by else [])]
    stats = cell_statistics({"truth": gt.boxes, "cascade": preds["cascade"]}, images, positive=positive,
                            normal=normal, group=group_by, known_classes=gt.classes)
    return {"rates": rates, "pass_fail": pass_fail(rates, preset),
            "error_attribution": pd.concat([summary.assign(system=name) for name, (_, summary) in attributed.items()],
                                           ignore_index=True),
            "detection": detection_table(gt.boxes, ranked, gt.classes),
            "counting": counting_table(gt.boxes, preds, list(positive) + list(normal), gt.images), "timing": timing,
            **{f"predictions_{name.replace('-', '_')}": p for name, p in preds.items()},
            **{f"stats_{name}": df for name, df in stats.items()},
            "error_cells": attributed["cascade"][0]}


def cell_statistics(boxes_by_source: Mapping[str, pd.DataFrame], images: pd.DataFrame, *, positive: Sequence[str],
                    normal: Sequence[str], group: str | None = None,
                    known_classes: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """Cell statistics (counts, positive ratio, sizes, neighbourhood) of each box table, e.g. the
    GT and the cascade's output: ``{"counts_truth": .., "ratio_truth": .., ...}``. ``known_classes``
    (the dataset's classes): a listed class absent from a table (no platelet predicted) is no typo."""
    from workbench.analysis import stats

    classes = list(positive) + list(normal)
    groups = [group] if group else []
    known = {"known_classes": known_classes}
    out: dict[str, pd.DataFrame] = {}
    for source, boxes in boxes_by_source.items():
        boxes = boxes[boxes["class"].isin(classes)]
        out[f"counts_{source}"] = stats.per_image_counts(boxes, images, classes=classes, groups=groups)
        out[f"ratio_{source}"] = stats.positive_ratio(boxes, images, positive=positive, normal=normal, groups=groups,
                                                      **known)
        out[f"sizes_{source}"] = stats.cell_sizes(boxes, images, normal=normal, groups=groups, **known)
        out[f"neighbourhood_{source}"] = stats.neighbourhood_counts(boxes, images, positive=positive,
                                                                    normal=normal, groups=groups, **known)
    return out


def rates_wide(rates: pd.DataFrame, *, by: Sequence[str] = ()) -> pd.DataFrame:
    """Systems side by side: one row per group and rate (and per variant ``by``, e.g. seed),
    ``value [lo, hi]`` per system."""
    cell = rates.assign(text=[f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(v) else "n/a"
                              for v, lo, hi in zip(rates["value"], rates["lo"], rates["hi"])])
    return cell.pivot_table(index=[*by, "group", "metric"], columns="system", values="text", aggfunc="first",
                            sort=False)[[s for s in SYSTEMS if s in set(rates["system"])]].reset_index()


# ----------------------------------------------------------------------------- figures

def stats_figures(st: Mapping[str, pd.DataFrame], *, classes: Sequence[str], group: str | None) -> dict[str, Any]:
    """The cell-statistics figures (``st``: :func:`cell_statistics` tables): of the ground truth,
    with the cascade's class shares and per-image counts set against it."""
    from workbench.report import stats_plots

    return {
        "class_share": class_share_figure(st, classes),
        "count_agreement": stats_plots.count_agreement(st["counts_truth"], st["counts_cascade"], list(classes),
                                                       label="cascade"),
        "counts_per_image": stats_plots.class_count_boxplot(st["counts_truth"], list(classes), group=group),
        "positive_ratio": stats_plots.per_image_boxplot(st["ratio_truth"], "positive_fraction", group=group),
        "cell_size": stats_plots.cell_size_violins(st["sizes_truth"], group=group),
        "neighbourhood": stats_plots.neighbourhood_curves(st["neighbourhood_truth"], group=group),
    }


def class_share_figure(st: Mapping[str, pd.DataFrame], classes: Sequence[str]) -> Any:
    """Class shares of the truth beside those of the cascade's output (when ``st`` has it)."""
    from workbench.report import stats_plots

    sources = [(k, label) for k, label in (("truth", "ground truth"), ("cascade", "cascade output"))
               if f"counts_{k}" in st]
    both = pd.concat([st[f"counts_{k}"].assign(source=label) for k, label in sources], ignore_index=True)
    return stats_plots.class_share_pie(both, list(classes), group="source", order=[label for _, label in sources])


def worst_images(error_cells: pd.DataFrame, n: int) -> list[str]:
    """The ``n`` images with the most errors (missed, misclassified, spurious), most first."""
    per_image = (error_cells[error_cells["error"] != "correct"].groupby("image").size()
                 .sort_values(ascending=False, kind="stable"))
    return [str(i) for i in per_image.index[:n]]


def gallery_boxes(error_cells: pd.DataFrame, cascade: pd.DataFrame,
                  worst: Sequence[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The boxes of the overlay gallery (the cascade's output plus the missed GT cells, flagged
    ``missed``) and one title per image with its error counts."""
    err = error_cells[error_cells["image"].astype(str).isin(worst)]
    missed = err[err["error"] == "missed"]
    shown = pd.concat([cascade[cascade["image"].astype(str).isin(worst)],
                       missed[["image", "x1", "y1", "x2", "y2"]].assign(
                           **{"class": missed["gt_class"], "final_class": missed["gt_class"], "missed": True})],
                      ignore_index=True)
    for col in ("missed", "changed"):
        shown[col] = shown[col].astype("boolean").fillna(False).astype(bool)
    counts = err.groupby(["image", "error"]).size().unstack(fill_value=0)
    titles = {i: f"{i}: " + ", ".join(f"{int(counts.loc[i].get(k, 0))} {k}" for k in
                                       ("missed", "misclassified", "spurious")) for i in worst}
    return shown, titles
