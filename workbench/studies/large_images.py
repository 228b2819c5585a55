"""The large-image study: time against accuracy for ways of detecting cells in large images.

Rows (one per method and setting), scored on whole held-out MoNuSeg tiles (1000x1000 H&E,
~300-700 nuclei each) with a nuclei detector trained on native-resolution patches of the
other tiles:

* ``one-stage tiled`` – :func:`workbench.inference.tiled_inference.tiled_predict_image` at full
  resolution (batched tiles, cross-tile merge);
* ``two-stage`` – :func:`workbench.inference.twostage.two_stage_predict_image` with several settings
  (stage-1 scale, score threshold, margin);
* ``whole image`` – one ultralytics call on the whole image at ``imgsz`` (the image is
  resized to fit; at ``imgsz`` >= the image side this is native resolution).

Columns: ``stage1_s`` / ``stage2_s`` / ``total_s`` (per image the median over ``repeats``
runs, after a warm-up, in this process, methods taking turns; summed over the test images), ``map50`` (workbench.evaluation.metrics, COCO
AP at IoU 0.5), ``recall`` and ``precision`` at ``count_thr`` and IoU 0.5, ``n_pred``
(boxes with score >= ``count_thr``, summed over the test images) against ``n_true``,
``speedup`` and ``map50_delta`` (points) against one-stage tiled, ``area_share`` (pixels run
through the full-resolution detector / image pixels: tiles overlap, so one-stage tiling
reads ~1.6x the image), the canvases used and ``cells_in_regions`` (share of true cells
inside a stage-2 region: an upper bound on the two-stage recall). One-pass rows have no
stage 1 (NaN); their single pass is reported as stage 2.

Held-out images are the vendored tiles the detector never saw: ``smoke`` trains on two
vendored tiles and tests on the third; ``modest``/``full`` train on the 10 other tiles of
``../shared/data/monuseg`` and test on all three vendored ones (falling back to the smoke
split, with a note, when that folder is absent).
"""
from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from workbench.data import datasets
from workbench.studies.base import pick
from workbench.inference.twostage import TwoStageSettings

VENDORED_TILES = ("TCGA-B0-5698-01Z-00-DX1", "TCGA-B0-5710-01Z-00-DX1", "TCGA-CH-5767-01Z-00-DX1")


@dataclass(frozen=True)
class LargeProfile:
    name: str
    full_source: bool = True  # train on ../shared/data/monuseg when present
    model: str = "yolov8n.yaml"
    epochs: int = 40
    patch: int = 256  # training patch = inference tile = detector imgsz (native resolution)
    patch_overlap: float = 0.25
    overlap: float = 0.2  # inference tile overlap
    batch: int = 16  # tiles / canvases per detector call
    conf: float = 0.01  # detector score floor (low, for mAP)
    count_thr: float = 0.25  # score threshold for recall, precision and counts
    repeats: int = 3
    whole_sizes: tuple[int, ...] = (512, 1024)
    two_stage: tuple[TwoStageSettings, ...] = field(default_factory=tuple)
    seed: int = 0


def _two_stage_grid() -> tuple[TwoStageSettings, ...]:
    """Stage-1 scale x proposal threshold x margin x region merging (canvas = the profile's patch)."""
    b = TwoStageSettings()
    return (replace(b, coarse_scale=0.5, region_conf=0.25, margin=12, region_merge=0.0),  # union of overlaps
            replace(b, coarse_scale=0.5, region_conf=0.25, margin=12, region_merge=None),  # a crop per cell
            replace(b, coarse_scale=0.5, region_conf=0.1, margin=16, region_merge=0.5),
            replace(b, coarse_scale=0.25, region_conf=0.25, margin=12, region_merge=None),
            replace(b, coarse_scale=0.25, region_conf=0.1, margin=16, region_merge=0.5),
            replace(b, coarse_scale=0.25, region_conf=0.05, margin=24, region_merge=0.0))


PROFILES = {
    # CI: proves the pipeline on the 3 vendored tiles in a couple of minutes on 2 CPU cores
    "smoke": LargeProfile("smoke", full_source=False, epochs=2, repeats=1, whole_sizes=(1024,),
                          two_stage=_two_stage_grid()[:1]),
    # a real CPU study: detector trained on 10 shared tiles (~25 min), 3 test tiles
    "modest": LargeProfile("modest", epochs=40, repeats=5, two_stage=_two_stage_grid()),
    # a GPU: longer training
    "full": LargeProfile("full", epochs=200, repeats=5, two_stage=_two_stage_grid()),
}


# ----------------------------------------------------------------------------- data and detector

def split_images(prof: LargeProfile) -> tuple[Path, list[str], list[str], str]:
    """(canonical MoNuSeg folder, training image ids, test image ids, note)."""
    from workbench.data.canonical import read_meta

    note = ""
    base = datasets.prepare("monuseg", full=prof.full_source)
    ids = read_meta(base)["image_id"].astype(str).tolist()
    if prof.full_source and len(ids) > len(VENDORED_TILES):
        test = [i for i in ids if i in VENDORED_TILES]
    else:
        if prof.full_source:
            note = "../shared/data/monuseg absent: trained on 2 vendored tiles, tested on the third"
        test = [VENDORED_TILES[-1]]
    train = [i for i in ids if i not in test]
    return base, train, test, note


def prepare_patches(prof: LargeProfile, work: Path) -> Path:
    """Native-resolution training patches of the training tiles (8:2 train/val by patch);
    patches of test tiles are marked ``test`` and never trained or validated on."""
    from workbench.data.canonical import read_classes, read_meta, save_meta
    from workbench.data.splits import assign_splits
    from workbench.data.tiling import tile_dataset

    base, train, test, _ = split_images(prof)
    out = work / "data" / f"monuseg_patches{prof.patch}{'_full' if prof.full_source else ''}"
    if (out / "meta.csv").exists():
        return out
    tile_dataset(base, out, tile=prof.patch, overlap=prof.patch_overlap, min_visibility=0.5, overwrite=True)
    meta = read_meta(out)
    is_test = meta["tile_of"].astype(str).isin(test)
    split = pd.Series("test", index=meta.index, dtype=str)
    split[~is_test] = assign_splits(meta[~is_test].drop(columns="split"), ratios=(8, 2), seed=prof.seed,
                                    keep_existing=False)
    save_meta(out, meta.assign(split=split), read_classes(out))
    return out


def train_detector(profile: str | LargeProfile = "smoke", *, work_dir: Path | None = None,
                   device: str | None = None, log: Callable[[str], None] = print) -> Path:
    """The profile's nuclei detector (trained once into ``work_dir/runs``, then reused)."""
    from workbench.models.runs import load_run
    from workbench.models.yolo import train

    prof = pick(profile, PROFILES)
    work = Path(work_dir) if work_dir else default_work_dir(prof)
    patches = prepare_patches(prof, work)
    name = f"nuclei_{Path(prof.model).stem}_p{prof.patch}_e{prof.epochs}_s{prof.seed}"
    run_dir = work / "runs" / name
    if (run_dir / "run.json").exists() and load_run(run_dir).get("status") == "finished":
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished attempt: start again cleanly
    t0 = time.perf_counter()
    train(patches, model=prof.model, epochs=prof.epochs, imgsz=prof.patch, batch=16, seed=prof.seed,
          device=device, run_name=name, runs_root=work / "runs", max_det=1000)
    log(f"[large-images] trained {name} in {time.perf_counter() - t0:.0f} s")
    return run_dir


def default_work_dir(prof: LargeProfile) -> Path:
    from workbench.core.paths import outputs_dir

    return outputs_dir() / "large_images" / prof.name


# ----------------------------------------------------------------------------- the study

ONE_STAGE, TWO_STAGE, WHOLE = "one-stage tiled", "two-stage", "whole image"
TABLE_COLUMNS = ["method", "setting", "stage1_s", "stage2_s", "total_s", "speedup", "map50", "map50_delta",
                 "recall", "precision", "n_pred", "n_true", "count_mae", "area_share", "canvases", "cells_in_regions"]


@dataclass
class LargeResult:
    profile: Any  # the study's profile (LargeProfile, or the micronucleus study's)
    table: pd.DataFrame  # one row per method and setting (TABLE_COLUMNS)
    per_image: pd.DataFrame  # one row per method, setting and test image
    info: dict[str, Any] = field(default_factory=dict)


def load_test_images(prof: LargeProfile, normalisation=None) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """(8-bit RGB test images by id, their ground-truth boxes)."""
    from workbench.data.canonical import read_meta
    from workbench.evaluation.files import load_ground_truth
    from workbench.core.images import read_image, to_uint8

    base, _, test, _ = split_images(prof)
    meta = read_meta(base).set_index("image_id")
    kwargs = {"norm": normalisation} if normalisation is not None else {}
    images = {i: to_uint8(read_image(base / meta.at[i, "file"])[0], **kwargs)[0] for i in test}
    gt = load_ground_truth(base).boxes
    return images, gt[gt["image"].isin(test)].reset_index(drop=True)


def run_study(profile: str | LargeProfile = "smoke", *, work_dir: Path | None = None, device: str | None = None,
              log: Callable[[str], None] = print) -> LargeResult:
    """Train (or reuse) the detector, then time and score every method on the test images."""
    from workbench.core.device import describe_device, device_name, pick_device
    from workbench.inference.tiled_inference import TileSettings, YoloDetector, tiled_predict_image
    from workbench.inference.twostage import two_stage_predict_image

    prof = pick(profile, PROFILES)
    dev = pick_device(device)
    work = Path(work_dir) if work_dir else default_work_dir(prof)
    run_dir = train_detector(prof, work_dir=work, device=dev, log=log)
    det = YoloDetector(run_dir, conf=prof.conf, imgsz=prof.patch, max_det=1000, device=dev)
    images, gt = load_test_images(prof, det.normalisation)
    tiles = TileSettings(tile=prof.patch, overlap=prof.overlap, batch=prof.batch)

    def one_stage(img):
        return tiled_predict_image(img, det, settings=tiles), {"area_share": tiled_share(img.shape[:2], tiles)}

    methods: list[Method] = [
        (ONE_STAGE, f"tile {prof.patch}, overlap {prof.overlap:g}, batch {prof.batch}", one_stage)]
    side = max(max(img.shape[:2]) for img in images.values())
    for s in prof.two_stage:
        # stage 1 sees the whole small image in one pass (one tile, native pixels of the small image)
        coarse_tile = imgsz_for(side, s.coarse_scale)
        s = replace(s, canvas=prof.patch, coarse_tile=coarse_tile, batch=prof.batch, tile_overlap=prof.overlap)
        coarse = YoloDetector(det.model, conf=prof.conf, imgsz=coarse_tile, max_det=3000, device=dev)
        methods.append((TWO_STAGE, s.label(),
                        lambda img, s=s, coarse=coarse: two_stage_predict_image(img, coarse, det, settings=s)))
    for size in prof.whole_sizes:
        whole = YoloDetector(det.model, conf=prof.conf, imgsz=size, max_det=3000, device=dev)

        methods.append((WHOLE, f"imgsz {size}", lambda img, whole=whole: (whole([img])[0], {})))

    per_image, pred = time_methods(methods, images, repeats=prof.repeats, log=log)
    per_image["cells_in_regions"] = [cells_covered(gt[gt["image"] == i], r)
                                     for i, r in zip(per_image["image"], per_image.pop("region_boxes"))]
    table = score_methods(per_image, pred, gt, count_thr=prof.count_thr)
    from workbench.models.runs import read_run_record

    _, train, test, note = split_images(prof)

    info = {"profile": asdict(prof), "run": str(run_dir), "run_id": run_dir.name, "train_images": train,
            "test_images": test, "n_true": int(len(gt)), "note": note, "device": describe_device(dev),
            "dataset_fingerprint": (read_run_record(run_dir).get("dataset", {}).get("fingerprint") or {}).get("sha256", "")[:12]}
    info["caption"] = (f"Time vs mAP50 on {len(test)} held-out MoNuSeg tiles ({len(gt)} nuclei), detector "
                       f"{run_dir.name} trained on {len(train)} other tiles; profile {prof.name}, median of "
                       f"{prof.repeats} runs on {device_name(info['device'])}. {note}").strip()
    return LargeResult(prof, table, per_image, info)


Method = tuple[str, str, Callable[[np.ndarray], tuple[pd.DataFrame, dict[str, Any]]]]


def time_methods(methods: list[Method], images: dict[str, np.ndarray], *, repeats: int,
                 log: Callable[[str], None] = print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every ``(method, setting, fn)`` on every image ``repeats`` times after one warm-up
    pass; ``fn(image) -> (box table, info)`` with optional ``stage1_s``/``stage2_s`` (else its
    whole time counts as stage 2), ``area_share``, ``canvases``, ``regions``, ``region_boxes``.

    Returns (one row per method, setting and image: median stage and total seconds and the
    last run's info; the predictions of the last run, with ``image method setting``).
    """
    first = next(iter(images.values()))
    for _, _, fn in methods:  # warm-up: first calls pay for allocation and thread start-up
        fn(first)
    # methods take turns within each repeat, so load from other processes on a shared
    # machine falls on all of them alike (blocks of one method each drifted by 3x here)
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
    last: dict[tuple[int, str], pd.DataFrame] = {}
    for r in range(max(1, repeats)):
        for name, img in images.items():
            for m, (_, _, fn) in enumerate(methods):
                t0 = time.perf_counter()
                table, info = fn(img)
                elapsed = time.perf_counter() - t0
                if "stage2_s" not in info:
                    info = {**info, "stage1_s": float("nan"), "stage2_s": elapsed}
                runs.setdefault((m, name), []).append(info)
                last[(m, name)] = table
        log(f"[large-images] repeat {r + 1}/{max(1, repeats)} done")
    rows, preds = [], []
    for m, (method, setting, _) in enumerate(methods):
        for name in images:
            times = runs[(m, name)]
            info = times[-1]
            preds.append(last[(m, name)].assign(image=name, method=method, setting=setting))
            rows.append({"method": method, "setting": setting, "image": name,
                         "stage1_s": statistics.median(t["stage1_s"] for t in times),
                         "stage2_s": statistics.median(t["stage2_s"] for t in times),
                         "total_s": statistics.median((0 if np.isnan(t["stage1_s"]) else t["stage1_s"]) + t["stage2_s"]
                                                      for t in times),
                         "area_share": info.get("area_share", 1.0), "canvases": info.get("canvases", np.nan),
                         "regions": info.get("regions", np.nan), "region_boxes": info.get("region_boxes")})
        log(f"[large-images] {method} ({setting}): {statistics.median(r['total_s'] for r in rows[-len(images):]):.2f} s/image")
    return pd.DataFrame(rows), pd.concat(preds, ignore_index=True)


def imgsz_for(side: int, factor: float) -> int:
    """The ultralytics ``imgsz`` that shows an image of longer side ``side`` at ``factor`` x
    (rounded up to the network stride, 32)."""
    return max(32, int(np.ceil(side * factor / 32)) * 32)


def tiled_share(shape: tuple[int, int], tiles: Any) -> float:
    """Pixels read by tiling an image of ``shape`` (height, width) with ``tiles`` (a
    ``TileSettings``) / image pixels: above 1 where tiles overlap."""
    from workbench.inference.tiled_inference import tile_windows

    win = tile_windows(*shape, tile=tiles.tile, overlap=tiles.overlap)
    return float(((win[:, 2] - win[:, 0]) * (win[:, 3] - win[:, 1])).sum()) / float(shape[0] * shape[1])


def cells_covered(gt: pd.DataFrame, regions: np.ndarray | None) -> float:
    """Share of true cells lying wholly inside some stage-2 region (NaN for one-pass methods):
    an upper bound on the two-stage recall."""
    if regions is None:
        return float("nan")
    if not len(gt):
        return 1.0
    if not len(regions):
        return 0.0
    b = gt[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)[:, None, :]
    r = np.asarray(regions, dtype=float)[None, :, :]
    inside = (b[..., 0] >= r[..., 0]) & (b[..., 1] >= r[..., 1]) & (b[..., 2] <= r[..., 2]) & (b[..., 3] <= r[..., 3])
    return float(inside.any(axis=1).mean())


def score_methods(per_image: pd.DataFrame, pred: pd.DataFrame, gt: pd.DataFrame, *, count_thr: float) -> pd.DataFrame:
    """One row per method and setting: median times summed over images, metrics over all images."""
    from workbench.evaluation import metrics

    images = sorted(gt["image"].unique())
    rows = []
    for (method, setting), g in per_image.groupby(["method", "setting"], sort=False):
        p = pred[(pred["method"] == method) & (pred["setting"] == setting)][list(metrics.PRED_COLUMNS)]
        result = metrics.evaluate(gt, p, classes=sorted(gt["class"].unique()))
        prf = metrics.precision_recall_f1(gt, p, score_thr=count_thr, iou_thr=0.5, max_dets=result.max_dets)
        overall = prf[prf["class"] == metrics.OVERALL].iloc[0]
        counts = metrics.count_metrics(gt, p, score_thr=count_thr, images=images)
        rows.append({"method": method, "setting": setting,
                     "stage1_s": g["stage1_s"].sum(min_count=1), "stage2_s": g["stage2_s"].sum(),
                     "total_s": g["total_s"].sum(), "map50": result.map50, "recall": float(overall["recall"]),
                     "precision": float(overall["precision"]), "n_pred": int(counts.table["n_pred"].sum()),
                     "n_true": int(counts.table["n_gt"].sum()), "count_mae": counts.mae,
                     "area_share": float(g["area_share"].mean()), "canvases": g["canvases"].sum(min_count=1),
                     "cells_in_regions": float(np.average(g["cells_in_regions"], weights=_n_true(gt, g["image"])))
                     if g["cells_in_regions"].notna().all() else float("nan")})
    table = pd.DataFrame(rows)
    ref = table[table["method"] == ONE_STAGE].iloc[0] if (table["method"] == ONE_STAGE).any() else None
    if ref is not None:
        table["speedup"] = ref["total_s"] / table["total_s"]
        table["map50_delta"] = 100 * (table["map50"] - ref["map50"])  # points
    else:
        table["speedup"] = table["map50_delta"] = np.nan
    return table[TABLE_COLUMNS]


def _n_true(gt: pd.DataFrame, images: pd.Series) -> np.ndarray:
    counts = gt["image"].value_counts()
    return np.array([max(int(counts.get(i, 0)), 1) for i in images], dtype=float)


def verdict(table: pd.DataFrame, *, speedup: float = 3.0, max_loss_points: float = 1.0) -> pd.DataFrame:
    """Two-stage rows with whether they reach ``speedup`` x at <= ``max_loss_points`` mAP50 loss
    (and find something: mAP50 > 0)."""
    two = table[table["method"] == TWO_STAGE].copy()
    # a row that finds nothing loses nothing against a reference that finds nothing: no pass
    two["meets_goal"] = (two["speedup"] >= speedup) & (two["map50_delta"] >= -max_loss_points) & (two["map50"] > 0)
    return two[["setting", "speedup", "map50_delta", "recall", "area_share", "cells_in_regions", "meets_goal"]]


def time_vs_accuracy(table: pd.DataFrame, *, title: str = "Large images: time vs mAP50"):
    """Total seconds (all test images) against mAP50, one numbered marker per method and
    setting; the numbers are keyed beside the axes (settings crowd each other otherwise)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    markers = {ONE_STAGE: "o", TWO_STAGE: "s", WHOLE: "^"}
    key = []
    for method, g in table.groupby("method", sort=False):
        ax.scatter(g["total_s"], g["map50"], marker=markers.get(method, "o"), s=50, label=method, edgecolor="k")
        for k, r in g.iterrows():
            ax.annotate(str(k + 1), (r["total_s"], r["map50"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
            key.append(f"{k + 1}: {method}, {r['setting']}")
    ax.set(xlabel="total seconds for the test images (median of repeats)", ylabel="mAP50 (workbench.evaluation.metrics)",
           title=title)
    ax.set_xlim(left=0)
    ax.set_ylim(0, max(0.1, float(np.nanmax(table["map50"])) * 1.15) if len(table) else 1)
    ax.legend(fontsize=8, loc="lower right")
    fig.text(0.62, 0.5, "\n".join(sorted(key, key=lambda t: int(t.split(":")[0]))), fontsize=6.5, va="center")
    fig.subplots_adjust(right=0.6)
    return fig


def write_outputs(result: LargeResult, out: Path, *, prefix: str = "") -> list[Path]:
    """``<prefix>large_images.csv``, ``<prefix>per_image.csv``, ``<prefix>study.json`` and the
    figure ``<prefix>time_vs_map50`` (PNG/PDF + caption) in ``out``."""
    import json

    from workbench.core.atomic import write_text
    from workbench.report.figures import save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in (("large_images", result.table), ("per_image", result.per_image)):
        path = out / f"{prefix}{name}.csv"
        write_text(path, table.to_csv(index=False))
        written.append(path)
    write_text(out / f"{prefix}study.json", json.dumps(result.info, indent=1, default=str) + "\n")
    written.append(out / f"{prefix}study.json")
    info = result.info
    written += save_figure(time_vs_accuracy(result.table, title=info.get("title", "Large images: time vs mAP50")),
                           out / f"{prefix}time_vs_map50", caption=info.get("caption", ""),
                           provenance={"run": info["run_id"], "test_images": info["test_images"],
                                       "dataset": info["dataset_fingerprint"], "profile": result.profile.name})
    return written
