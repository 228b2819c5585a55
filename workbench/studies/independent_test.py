"""Independent-test evaluation of the cascade (notebook 05): models, rates, statistics, overlays.

The flow: a canonical dataset with a test split that no model or threshold ever saw
(:func:`workbench.data.holdout.with_test_split` when the dataset has none) -> a detector and a crop
classifier trained on train, early-stopped on val (or given as run folders) -> thresholds
tuned on val and frozen in the classifier's ``cascade.json`` -> the cascade and the detector
alone run once on the test images -> clinical rates with bootstrap CIs, pass/fail, error
attribution, cell statistics and an overlay gallery of the worst images.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from workbench.data import datasets
from workbench.core.atomic import write_text

SYSTEMS = ("detector-only", "cascade")


@dataclass(frozen=True)
class TestProfile:
    """How big the models and the run are (see :data:`PROFILES`)."""

    name: str
    det_model: str = "yolov8n.yaml"
    det_imgsz: int = 640
    det_epochs: int = 100
    det_batch: int | None = None
    det_warmup_epochs: float = 3.0
    cls_arch: str = "resnet34"
    crop_size: int = 96
    crop_pad: float = 0.15
    cls_epochs: int = 30
    cls_patience: int = 5
    cls_batch: int = 64
    balance: str = "equal"
    test_fraction: float = 0.5  # share of val held out as test when the dataset ships no test split
    caps: tuple[tuple[str, int], ...] = ()  # per split, at most this many images (smoke)
    n_boot: int = 1000
    tune: bool = True  # tune det_conf / cls_thr on val; otherwise use det_conf below and cls_thr 0
    det_conf: float = 0.5  # the published default, used when not tuning
    gallery: int = 6


PROFILES = {
    # CI: the whole path on real data in about two minutes on 2 CPU cores (the models learn little)
    "smoke": TestProfile("smoke", det_imgsz=160, det_epochs=1, det_batch=8, det_warmup_epochs=0,
                         cls_arch="resnet18", crop_size=32, cls_epochs=1, cls_patience=1, cls_batch=32,
                         caps=(("train", 16), ("val", 6), ("test", 6)), n_boot=200, gallery=3,
                         # a one-epoch detector scores below 0.01: a low fixed threshold lets boxes
                         # reach the classifier, so CI exercises every stage
                         tune=False, det_conf=0.001),
    # a real CPU run (~1 h on 2 cores): BCCD's 205 training images at 320 px
    "modest": TestProfile("modest", det_imgsz=320, det_epochs=25, det_batch=16, det_warmup_epochs=1,
                          cls_arch="resnet18", crop_size=64, cls_epochs=6, cls_patience=3),
    # a GPU: the published setting (ResNet34 on 96-px crops), 640 px detector
    "full": TestProfile("full", det_model="yolov8s.yaml", det_imgsz=640, det_epochs=100,
                        cls_arch="resnet34", crop_size=96, cls_epochs=30, cls_patience=5),
}

# What counts as positive / normal, and which quality preset applies, per named dataset.
TASKS: dict[str, dict[str, Any]] = {
    "bccd": {"positive": ["WBC", "Platelets"], "normal": ["RBC"], "preset": "chromosome_aberrations"},
    "mnfinder": {"positive": ["mn"], "normal": ["nucleus"], "preset": "micronuclei"},
}


def profile_of(profile: str | TestProfile, **changes: Any) -> TestProfile:
    """A named profile (optionally changed field by field)."""
    from workbench.studies.base import pick

    prof = pick(profile, PROFILES)
    return replace(prof, **changes) if changes else prof


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


def prepare_data(dataset: str | Path, prof: TestProfile, work: Path, *, fmt: str | None = None) -> Path:
    """The dataset with an independent test split (and the profile's caps), under ``work``."""
    from workbench.data.holdout import with_test_split
    from workbench.data.subsets import subset_dataset

    base = datasets.prepare(dataset, fmt=fmt)
    name = Path(str(dataset)).name
    held = with_test_split(base, work / f"{name}_heldout", fraction=prof.test_fraction)
    if not prof.caps:
        return held
    capped = work / f"{name}_heldout_{prof.name}"
    if not (capped / "meta.csv").exists():
        subset_dataset(held, capped, keep=dict(prof.caps), seed=0, overwrite=True)
    return capped


# ----------------------------------------------------------------------------- models

def _finished_classifier(run: Path, prof: TestProfile) -> bool:
    from workbench.models.runs import read_run_record

    try:
        rec = read_run_record(run)
    except (FileNotFoundError, ValueError):
        return False
    cfg = rec.get("config", {})
    return (rec.get("status") == "finished" and (rec.get("model") or {}).get("arch") == prof.cls_arch
            and (rec.get("crop") or {}).get("size") == prof.crop_size and cfg.get("epochs") == prof.cls_epochs)


def train_models(data: Path, prof: TestProfile, runs_root: Path, *, device: str | None = None,
                 log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Detector and classifier for ``data`` (finished runs with the same settings are reused)."""
    from workbench.models.classifier import train_classifier
    from workbench.models.crops import CropSpec
    from workbench.models.runs import finished_with
    from workbench.models.yolo import train

    stem = data.name
    det_run = runs_root / f"{stem}_{Path(prof.det_model).stem}_{prof.det_imgsz}_e{prof.det_epochs}"
    if finished_with(det_run, model=prof.det_model, epochs=prof.det_epochs, imgsz=prof.det_imgsz,
                     batch=prof.det_batch):
        log(f"detector: reusing {det_run}")
    else:
        log(f"detector: training {prof.det_model} {prof.det_epochs} epochs at {prof.det_imgsz} px")
        det_run = train(data / "dataset.yaml", model=prof.det_model, epochs=prof.det_epochs, imgsz=prof.det_imgsz,
                        batch=prof.det_batch, seed=0, device=device, run_name=det_run.name, runs_root=runs_root,
                        warmup_epochs=prof.det_warmup_epochs)
    cls_run = runs_root / f"{stem}_cls_{prof.cls_arch}_{prof.crop_size}_e{prof.cls_epochs}"
    if _finished_classifier(cls_run, prof):
        log(f"classifier: reusing {cls_run}")
    else:
        log(f"classifier: training {prof.cls_arch} on {prof.crop_size}-px crops, {prof.cls_epochs} epochs")
        cls_run = train_classifier(data, arch=prof.cls_arch, crop=CropSpec(size=prof.crop_size, pad=prof.crop_pad),
                                   balance=prof.balance, epochs=prof.cls_epochs, patience=prof.cls_patience,
                                   batch=prof.cls_batch, seed=0, device=device, run_name=cls_run.name,
                                   runs_root=runs_root, verbose=False)
    return Path(det_run), Path(cls_run)


# ----------------------------------------------------------------------------- evaluation

@dataclass
class TestResult:
    """Everything notebook 05 shows; tables are tidy pandas frames."""

    settings: dict[str, Any]
    rates: pd.DataFrame  # compare_systems: system, group, metric, value, lo, hi, count, total, n_images
    pass_fail: pd.DataFrame
    errors: pd.DataFrame  # attribute_errors summary per system
    error_cells: pd.DataFrame  # attribute_errors table of the cascade: one row per GT cell / spurious box
    detection: pd.DataFrame  # per system: map50, map50_95, per-class AP50
    timing: pd.DataFrame  # per system: seconds, images, s/image
    gt: pd.DataFrame
    predictions: dict[str, pd.DataFrame]
    meta: pd.DataFrame  # test images with the grouping column
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)


def detection_table(gt: pd.DataFrame, preds: dict[str, pd.DataFrame], classes: Sequence[str]) -> pd.DataFrame:
    """mAP50, mAP50-95 and AP50 per class of each system, by the pycocotools-equal engine."""
    from workbench.evaluation import metrics

    rows = []
    for name, pred in preds.items():
        r = metrics.evaluate(gt, pred, classes=list(classes))
        rows.append({"system": name, "map50": r.map50, "map50_95": r.map50_95, "n_pred": len(pred),
                     **{f"ap50_{c}": v["ap50"] for c, v in r.per_class.items()}})
    return pd.DataFrame(rows)


def evaluate_models(data: Path, detector: Path, classifier: Path, *, positive: Sequence[str],
                    preset: str, group_by: str | None = None, split: str = "test", tune: bool = True,
                    det_conf: float = 0.5, n_boot: int = 1000, device: str | None = None,
                    log: Callable[[str], None] = print) -> TestResult:
    """Tune on val (optional), then run detector-only and the cascade on ``split`` and score both."""
    from workbench.inference.cascade import (
        attribute_errors, cascade_predict, detector_only, read_cascade, tune_thresholds)
    from workbench.evaluation.clinical import compare_systems, pass_fail
    from workbench.evaluation.files import load_ground_truth

    tuning = pd.DataFrame()
    if tune:
        chosen, tuning = tune_thresholds(classifier, data, detector=detector, split="val", objective="f1",
                                         device=device)
        log(f"tuned on val: det_conf {chosen['det_conf']}, cls_thr {chosen['cls_thr']} (F1 {chosen['value']:.3f})")
    else:
        from workbench.inference.cascade import write_cascade

        write_cascade(classifier, detector=detector, det_conf=det_conf, cls_thr=0.0)
    frozen = read_cascade(classifier) or {}
    gt = load_ground_truth(data, split=split)
    if not len(gt.images):
        raise ValueError(f"{data}: the {split!r} split is empty")
    from workbench.models.classifier import load_classifier
    from workbench.inference.predict import predict

    # models loaded once and warmed on one image, so the times compare inference, not loading
    clf = load_classifier(classifier, device=device)
    conf = float(frozen.get("det_conf", 0.5))
    first = gt.meta.iloc[:1]
    predict(detector, data / str(first["file"].iloc[0]), conf=conf, device=device)
    t0 = time.perf_counter()
    det_alone = predict(detector, data, split=split, conf=conf, device=device)
    t_det = time.perf_counter() - t0
    t0 = time.perf_counter()
    cas = cascade_predict(clf, data, detector=detector, split=split, device=device,
                          det_conf=conf, cls_thr=float(frozen.get("cls_thr", 0.0)))
    t_cascade = time.perf_counter() - t0
    # the cascade's detections relabelled back to the detector's classes: identical boxes
    det = detector_only(cas)
    preds = {"detector-only": det, "cascade": cas}
    meta = gt.meta.reset_index()  # image_id as a column
    group_col = None
    if group_by:
        meta[group_by] = derive_groups(meta, gt.boxes, group_by).to_numpy()
        group_col = group_by
    rates = compare_systems(gt.boxes, preds, positive=list(positive), group_by=group_col, meta=meta,
                            n_boot=n_boot, seed=0)
    pf = pass_fail(rates, preset)
    attributed = {name: attribute_errors(gt.boxes, p, images=gt.images) for name, p in preds.items()}
    errors = pd.concat([summary.assign(system=name) for name, (_, summary) in attributed.items()],
                       ignore_index=True)
    timing = pd.DataFrame([
        {"system": "detector-only", "seconds": t_det, "images": len(gt.images), "boxes": len(det_alone)},
        {"system": "cascade", "seconds": t_cascade, "images": len(gt.images), "boxes": len(cas)}])
    timing["s_per_image"] = timing["seconds"] / timing["images"]
    timing["ratio_vs_detector"] = timing["seconds"] / t_det
    settings = {"dataset": str(data), "split": split, "detector": str(detector), "classifier": str(classifier),
                "positive": list(positive), "preset": preset, "group_by": group_by,
                "det_conf": frozen.get("det_conf"), "cls_thr": frozen.get("cls_thr"), "tuned": tune,
                "n_boot": n_boot, "test_images": len(gt.images),
                "group_derived": bool(group_by) and group_by not in gt.meta.reset_index().columns}
    return TestResult(settings=settings, rates=rates, pass_fail=pf, errors=errors,
                      error_cells=attributed["cascade"][0],
                      detection=detection_table(gt.boxes, preds, gt.classes), timing=timing, gt=gt.boxes,
                      predictions=preds, meta=meta, tuning=tuning)


def default_work_dir(name: str, prof: TestProfile) -> Path:
    """Where data copies and runs of a dataset and profile live (reused between runs)."""
    from workbench.core.paths import outputs_dir

    return outputs_dir() / "independent_test" / f"{name}_{prof.name}"


def run_study(dataset: str | Path = "bccd", *, profile: str | TestProfile = "smoke", out_dir: Path,
              detector: str | Path | None = None, classifier: str | Path | None = None,
              positive: Sequence[str] | None = None, normal: Sequence[str] | None = None,
              preset: str | None = None, group_by: str | None = "density", fmt: str | None = None,
              device: str | None = None, work_dir: Path | None = None,
              log: Callable[[str], None] = print) -> TestResult:
    """The notebook's whole job: data, models (trained or given), evaluation on the test split."""
    prof = profile_of(profile)
    name = Path(str(dataset)).name
    task = TASKS.get(name, {})
    positive = list(positive or task.get("positive") or [])
    normal = list(normal or task.get("normal") or [])
    if not positive:
        raise ValueError(f"dataset {name!r}: give positive= (the classes that count as positive)")
    preset = preset or task.get("preset", "chromosome_aberrations")
    work = Path(work_dir) if work_dir is not None else default_work_dir(name, prof)
    work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(dataset, prof, work, fmt=fmt)
    if (detector is None) != (classifier is None):
        raise ValueError("give both detector= and classifier= run folders, or neither (then both are trained)")
    if detector is None:
        detector, classifier = train_models(data, prof, work / "runs", device=device, log=log)
    result = evaluate_models(data, Path(detector), Path(classifier), positive=positive, preset=preset,
                             group_by=group_by, tune=prof.tune, det_conf=prof.det_conf, n_boot=prof.n_boot, device=device, log=log)
    result.settings.update(profile=asdict(prof), normal=normal)
    return result


# ----------------------------------------------------------------------------- outputs

def rates_wide(rates: pd.DataFrame) -> pd.DataFrame:
    """Systems side by side: one row per group and rate, ``value [lo, hi]`` per system."""
    cell = rates.assign(text=[f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(v) else "n/a"
                              for v, lo, hi in zip(rates["value"], rates["lo"], rates["hi"])])
    return cell.pivot_table(index=["group", "metric"], columns="system", values="text", aggfunc="first",
                            sort=False)[[s for s in SYSTEMS if s in set(rates["system"])]].reset_index()


def statistics(result: TestResult, *, normal: Sequence[str], positive: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Cell statistics of the GT and of the cascade's output on the test images (per image, per group)."""
    from workbench.analysis import stats

    group = result.settings.get("group_by")
    images = result.meta.rename(columns={"image_id": "image"})
    keep = ["image", "width", "height"] + ([group] if group else [])
    images = images[keep]
    out: dict[str, pd.DataFrame] = {}
    for source, boxes in (("truth", result.gt), ("cascade", result.predictions["cascade"])):
        boxes = boxes[boxes["class"].isin(list(positive) + list(normal))]
        groups = [group] if group else []
        out[f"counts_{source}"] = stats.per_image_counts(boxes, images, classes=list(positive) + list(normal),
                                                         groups=groups)
        out[f"ratio_{source}"] = stats.positive_ratio(boxes, images, positive=positive, normal=normal, groups=groups)
        out[f"sizes_{source}"] = stats.cell_sizes(boxes, images, normal=normal, groups=groups)
        out[f"neighbourhood_{source}"] = stats.neighbourhood_counts(boxes, images, positive=positive,
                                                                    normal=normal, groups=groups)
    return out


def write_outputs(result: TestResult, out: Path, *, normal: Sequence[str], n_gallery: int = 6) -> list[Path]:
    """Tables (CSV/JSON), figures (PNG+PDF with captions) and the overlay gallery under ``out``."""
    from workbench.report import stats_plots
    from workbench.report.figures import save_figure
    from workbench.data.canonical import read_images
    from workbench.report.overlays import overlay_gallery

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    positive = result.settings["positive"]
    written = []

    def table(df: pd.DataFrame, name: str) -> None:
        path = out / f"{name}.csv"
        df.to_csv(path, index=False)
        written.append(path)

    table(result.rates, "rates")
    table(rates_wide(result.rates), "rates_side_by_side")
    table(result.pass_fail, "pass_fail")
    table(result.errors, "error_attribution")
    table(result.detection, "detection")
    table(result.timing, "timing")
    for name, p in result.predictions.items():
        table(p, f"predictions_{name.replace('-', '_')}")
    if len(result.tuning):
        table(result.tuning, "tuning_val")
    group = result.settings.get("group_by")
    derived = " (derived from the data, not a lab label)" if result.settings.get("group_derived") else ""
    cap = (f"{result.settings['test_images']} test images never used for training or tuning; "
           f"positive = {', '.join(positive)}; groups: {group or 'none'}{derived}. "
           f"Detector {Path(result.settings['detector']).name}, classifier {Path(result.settings['classifier']).name}.")
    st = statistics(result, normal=normal, positive=positive)
    for name, df in st.items():
        table(df, f"stats_{name}")
    figs = {
        "class_share": (stats_plots.class_share_pie(st["counts_truth"], list(positive) + list(normal)),
                        "Class shares of the ground truth. " + cap),
        "counts_per_image": (stats_plots.class_count_boxplot(st["counts_truth"], list(positive) + list(normal),
                                                             group=group), "Cells per image by class (GT), one point per image. " + cap),
        "positive_ratio": (stats_plots.per_image_boxplot(st["ratio_truth"], "positive_fraction", group=group),
                           "Positive share per image (GT). " + cap),
        "cell_size": (stats_plots.cell_size_violins(st["sizes_truth"], group=group),
                      "Box area as a fraction of the image (left) and relative to the mean normal cell of the "
                      "same image (right), per class (GT). " + cap),
        "neighbourhood": (stats_plots.neighbourhood_curves(st["neighbourhood_truth"], group=group),
                          "Normal cells within k x the mean positive-cell radius of each positive cell "
                          "(radius = sqrt(area/pi)); line = mean over images, band = range. " + cap),
    }
    cascade = result.predictions["cascade"]
    table_err = result.error_cells
    err_per_image = (table_err[table_err["error"] != "correct"].groupby("image").size()
                     .sort_values(ascending=False, kind="stable"))
    worst = [str(i) for i in err_per_image.index[:n_gallery]]
    if worst:
        missed = table_err[(table_err["error"] == "missed") & table_err["image"].isin(worst)]
        shown = pd.concat([cascade[cascade["image"].astype(str).isin(worst)],
                           missed[["image", "x1", "y1", "x2", "y2"]].assign(
                               **{"class": missed["gt_class"], "final_class": missed["gt_class"], "missed": True})],
                          ignore_index=True)
        shown["missed"] = shown["missed"].astype("boolean").fillna(False).astype(bool)
        shown["changed"] = shown["changed"].astype("boolean").fillna(False).astype(bool)
        arrays = read_images(result.settings["dataset"], worst)
        counts = table_err[table_err["image"].isin(worst)].groupby(["image", "error"]).size().unstack(fill_value=0)
        titles = {i: f"{i}: " + ", ".join(f"{int(counts.loc[i].get(k, 0))} {k}" for k in
                                           ("missed", "misclassified", "spurious")) for i in worst}
        figs["worst_overlays"] = (overlay_gallery(arrays, shown, positive=positive, normal=normal, image_ids=worst,
                                                  titles=titles),
                                  "Cascade output on the test images with the most errors; black boxes are GT "
                                  "cells no detection matched (IoU < 0.5). " + cap)
    for name, (fig, caption) in figs.items():
        written += save_figure(fig, out / name, caption=caption)
    written.append(write_text(out / "settings.json", json.dumps(result.settings, indent=2, default=str) + "\n"))
    return written
