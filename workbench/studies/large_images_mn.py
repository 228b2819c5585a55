"""The large-image study on micronucleus images (MNFinder): time against accuracy.

A 5 px micronucleus needs the ``scale`` x upsampled image (see :mod:`workbench.studies.micronuclei`),
so a 869x768 fluorescence image becomes a 2607x2304 one for the MN detector: a large image.
Rows, scored on the held-out MNFinder validation images with the micronucleus study's
detectors (``native``: nuclei at native resolution; ``upsampled``: nuclei and MN at
``scale`` x):

* ``one-stage tiled`` – the reference: the whole ``scale`` x image in tiles of the
  upsampled detector's training size, batched, merged across tiles, boxes scaled back;
* ``two-stage`` – nucleus-guided search (:func:`workbench.studies.micronuclei.guided_search`): stage 1
  finds nuclei at native resolution (tiled, or one downscaled whole-image pass); stage 2
  cuts each nucleus' neighbourhood (``margin``) from the ``scale`` x image, packs the
  pieces into canvases and runs the upsampled detector on them. Nuclei come from stage 1,
  micronuclei from stage 2;
* ``whole image`` – the upsampled detector once on the whole native image at
  ``imgsz = s x`` its longer side (ultralytics resizes it; ``s`` = 1 is native resolution).

Columns are those of :mod:`workbench.studies.large_images` (times per stage, mAP50 over both classes
at IoU 0.5, recall, counts, speed-up and mAP50 change against one-stage tiled;
``cells_in_regions`` is the share of true *micronuclei* inside a stage-2 region) plus the
micronucleus columns: ``mn_recall``/``mn_precision`` (centre within 3 px, the study's
criterion for 5 px objects), ``mn_recall_delta`` (points against one-stage tiled),
``n_pred_mn``/``n_true_mn`` and ``nucleus_recall`` (IoU 0.5), all at ``count_thr``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from workbench.studies import micronuclei
from workbench.studies.base import pick
from workbench.studies.large_images import (
    ONE_STAGE, TWO_STAGE, WHOLE, LargeResult, Method, cells_covered, imgsz_for, score_methods, time_methods)

MN_COLUMNS = ["mn_recall", "mn_precision", "mn_recall_delta", "n_pred_mn", "n_true_mn", "nucleus_recall"]


@dataclass(frozen=True)
class GuidedSetting:
    """One two-stage setting (every other threshold as in the micronucleus study's profile)."""

    stage1: float | None = None  # None: nuclei from native-resolution tiles; f: one whole-image pass at f x the longer side
    margin: float = 20.0  # native px searched around each nucleus (99% of true MN lie within ~21-25 px)
    region_merge: float | None = 0.5  # IoS at which neighbourhoods merge (0: any overlap; None: never)
    canvas: int = 640  # stage-2 canvas side (the upsampled detector's imgsz there)

    def __post_init__(self) -> None:
        if self.stage1 is not None and not 0 < self.stage1 <= 4:
            raise ValueError(f"stage1 must be None (tiled) or a scale in (0, 4], got {self.stage1}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0 px, got {self.margin}")
        if self.region_merge is not None and not 0 <= self.region_merge <= 1:
            raise ValueError(f"region_merge must lie in [0, 1] or be None, got {self.region_merge}")
        if self.canvas < 32:
            raise ValueError(f"canvas must be >= 32 px, got {self.canvas}")

    def label(self) -> str:
        stage1 = "tiled" if self.stage1 is None else f"whole x{self.stage1:g}"
        return f"stage 1 {stage1}, margin {self.margin:g}, merge {self.region_merge}, canvas {self.canvas}"


@dataclass(frozen=True)
class MNLargeProfile:
    name: str
    detectors: str  # the micronucleus study profile whose detectors are used (trained once, then reused)
    repeats: int = 3
    guided: tuple[GuidedSetting, ...] = (GuidedSetting(),)
    whole_scales: tuple[float, ...] = (1.0,)  # whole-image passes at imgsz = scale x the longer side


def _grid() -> tuple[GuidedSetting, ...]:
    """Stage 1 (tiled vs one cheap pass) x margin x neighbourhood merging x canvas size."""
    b = GuidedSetting()
    whole = replace(b, stage1=1.0)
    return (b, whole, replace(b, stage1=0.75), replace(whole, margin=12), replace(whole, region_merge=0.0),
            replace(whole, region_merge=None), replace(whole, canvas=320), replace(whole, margin=12, canvas=320))


PROFILES = {
    # CI: the micronucleus study's smoke detectors (1 epoch): proves the pipeline, learns nothing
    "smoke": MNLargeProfile("smoke", "smoke", repeats=1, guided=(GuidedSetting(stage1=1.0, canvas=320),)),
    # CPU: the modest detectors of notebook 08 (reused when notebook 08 ran), 3 held-out images
    "modest": MNLargeProfile("modest", "modest", repeats=3, guided=_grid(), whole_scales=(1.0, 3.0)),
    "full": MNLargeProfile("full", "full", repeats=5, guided=_grid(), whole_scales=(1.0, 3.0)),
}


def make_methods(mn: micronuclei.MNProfile, prof: MNLargeProfile, native: Any, upsampled: Any,
                 detector: Callable[..., Any]) -> list[Method]:
    """The study's rows as ``(method, setting, fn)``; ``fn(8-bit image) -> (boxes in native
    pixels, info)``. ``native``/``upsampled`` are the two detectors at their training size;
    ``detector(base, imgsz)`` makes the same weights run at another ``imgsz``."""
    from workbench.studies.large_images import tiled_share
    from workbench.inference.tiled_inference import TileSettings, tiled_predict_image
    from workbench.inference.twostage import TwoStageSettings

    s = mn.scale
    tiles = TileSettings(tile=mn.tile, overlap=0.2, batch=mn.infer_batch)

    def one_stage(img):
        up = micronuclei.upsample(img, s)
        table = tiled_predict_image(up, upsampled, settings=tiles)
        return micronuclei.scale_boxes(table, 1 / s), {"area_share": tiled_share(up.shape[:2], tiles)}

    methods: list[Method] = [(ONE_STAGE, f"x{s} image, tile {mn.tile}, overlap {tiles.overlap:g}, "
                                         f"batch {tiles.batch}", one_stage)]
    for g in prof.guided:
        finder = ((lambda im: tiled_predict_image(im, native, settings=tiles)) if g.stage1 is None
                  else _whole(detector, native, g.stage1))
        search = detector(upsampled, g.canvas)
        settings = TwoStageSettings(region_conf=mn.count_thr, margin=g.margin * s, region_merge=g.region_merge,
                                    canvas=g.canvas, batch=max(1, mn.infer_batch // 4))

        def guided(img, finder=finder, search=search, settings=settings):
            table, info = micronuclei.guided_search(img, finder, search, scale=s, settings=settings)
            return table, {**info, "area_share": info["searched_share"]}

        methods.append((TWO_STAGE, g.label(), guided))
    for k in prof.whole_scales:
        whole = _whole(detector, upsampled, k)
        methods.append((WHOLE, f"MN detector, imgsz {k:g} x longer side", lambda img, whole=whole: (whole(img), {})))
    return methods


def _whole(detector: Callable[..., Any], base: Any, factor: float) -> Callable[[np.ndarray], pd.DataFrame]:
    """One pass of ``base``'s weights over the whole image at ``imgsz = factor x`` its longer
    side (rounded up to a multiple of 32; ultralytics resizes the image to fit)."""
    cache: dict[int, Any] = {}

    def run(img: np.ndarray) -> pd.DataFrame:
        size = imgsz_for(max(img.shape[:2]), factor)
        if size not in cache:
            cache[size] = detector(base, size)
        return cache[size]([img])[0]

    return run


def run_study(profile: str | MNLargeProfile = "smoke", *, work_dir: Path | None = None, device: str | None = None,
              log: Callable[[str], None] = print) -> LargeResult:
    """Train (or reuse) the micronucleus study's detectors, then time and score every row."""
    from workbench.core.device import describe_device, device_name, pick_device
    from workbench.models.runs import read_run_record
    from workbench.inference.tiled_inference import YoloDetector

    prof = pick(profile, PROFILES)
    # only the two detectors the rows use (the study's p2 detector is not needed here)
    mn = replace(pick(prof.detectors, micronuclei.PROFILES), approaches=(micronuclei.GUIDED,))
    dev = pick_device(device)
    runs = micronuclei.train_detectors(mn, work_dir=work_dir, device=dev, log=log)
    native = YoloDetector(runs[micronuclei.NATIVE], conf=mn.conf, imgsz=mn.tile, max_det=1000, device=dev)
    upsampled = YoloDetector(runs[micronuclei.UPSAMPLED], conf=mn.conf, imgsz=mn.tile, max_det=1000, device=dev)

    def detector(base: YoloDetector, imgsz: int) -> YoloDetector:
        return YoloDetector(base.model, conf=mn.conf, imgsz=imgsz, max_det=3000, device=dev)

    images = micronuclei.load_test_images(mn, native.normalisation)
    gt, _, _ = micronuclei.load_truth(mn)
    true_mn = gt[gt["class"] == micronuclei.MN]
    per_image, pred = time_methods(make_methods(mn, prof, native, upsampled, detector), images,
                                   repeats=prof.repeats, log=log)
    per_image["cells_in_regions"] = [cells_covered(true_mn[true_mn["image"] == i], r)
                                     for i, r in zip(per_image["image"], per_image.pop("region_boxes"))]
    table = score(per_image, pred, gt, count_thr=mn.count_thr)
    _, train, test, note = micronuclei.split_images(mn)
    run_ids = {k: v.name for k, v in runs.items()}
    info = {"dataset": "mnfinder", "profile": asdict(prof), "detector_profile": asdict(mn),
            "runs": {k: str(v) for k, v in runs.items()}, "run_id": " + ".join(run_ids.values()),
            "train_images": train, "test_images": test, "n_true": int(len(gt)),
            "n_true_mn": int((gt["class"] == micronuclei.MN).sum()), "note": note, "device": describe_device(dev),
            "dataset_fingerprint": (read_run_record(runs[micronuclei.UPSAMPLED]).get("dataset", {}).get("fingerprint")
                                    or {}).get("sha256", "")[:12],
            "title": "Micronucleus images: time vs mAP50"}
    info["caption"] = (f"Time vs mAP50 (nuclei and micronuclei) on {len(test)} held-out MNFinder images "
                       f"({info['n_true_mn']} micronuclei, {len(gt) - info['n_true_mn']} nuclei); detectors "
                       f"{info['run_id']} trained on {len(train)} other images; MN at x{mn.scale}; profile "
                       f"{prof.name}, median of {prof.repeats} runs on {device_name(info['device'])}. {note}").strip()
    return LargeResult(prof, table, per_image, info)


def score(per_image: pd.DataFrame, pred: pd.DataFrame, gt: pd.DataFrame, *, count_thr: float) -> pd.DataFrame:
    """The large-image table (:func:`workbench.studies.large_images.score_methods`) with the
    micronucleus columns ``MN_COLUMNS`` added (pure)."""
    from workbench.evaluation import tiny_matching as tm

    table = score_methods(per_image, pred, gt, count_thr=count_thr)
    rows = []
    for method, setting in table[["method", "setting"]].itertuples(index=False):
        p = pred[(pred["method"] == method) & (pred["setting"] == setting)]
        r = tm.prf(gt, p[["image", "x1", "y1", "x2", "y2", "class", "score"]], tm.TINY_DEFAULTS,
                   score_thr=count_thr).set_index("class")

        def get(cls: str, col: str) -> float:
            return float(r.loc[cls, col]) if cls in r.index else float("nan")

        rows.append({"mn_recall": get(micronuclei.MN, "recall"), "mn_precision": get(micronuclei.MN, "precision"),
                     "n_pred_mn": int(((p["class"] == micronuclei.MN) & (p["score"] >= count_thr)).sum()),
                     "n_true_mn": int((gt["class"] == micronuclei.MN).sum()),
                     "nucleus_recall": get(micronuclei.NUCLEUS, "recall")})
    extra = pd.DataFrame(rows, index=table.index)
    ref = extra.loc[table["method"] == ONE_STAGE, "mn_recall"]
    extra["mn_recall_delta"] = 100 * (extra["mn_recall"] - ref.iloc[0]) if len(ref) else np.nan
    return pd.concat([table, extra[MN_COLUMNS]], axis=1)


def verdict(table: pd.DataFrame, *, speedup: float = 3.0, max_loss_points: float = 1.0) -> pd.DataFrame:
    """Two-stage rows against the issue's goal (>= ``speedup`` x at <= ``max_loss_points``
    mAP50 loss), with the micronucleus recall and its change beside it."""
    from workbench.studies.large_images import verdict as base

    two = table[table["method"] == TWO_STAGE]
    out = base(table, speedup=speedup, max_loss_points=max_loss_points)
    out.insert(3, "mn_recall", two["mn_recall"].to_numpy())
    out.insert(4, "mn_recall_delta", two["mn_recall_delta"].to_numpy())
    return out


__all__ = ["GuidedSetting", "MNLargeProfile", "MN_COLUMNS", "PROFILES", "make_methods", "run_study",
           "score", "verdict"]
