"""Part 2 of the large-image study (notebook 07): time against accuracy on micronucleus images.

A 5 px micronucleus needs the ``scale`` x upsampled image (see :mod:`workbench.studies.micronuclei`),
so a 869x768 fluorescence image becomes a 2607x2304 one for the MN detector: a large image.
Rows, scored on the held-out MNFinder validation images with notebook 08's detectors
(``native``: nuclei at native resolution; ``upsampled``: nuclei and MN at ``scale`` x; trained
or reused by notebook 08's own cells, see :class:`workbench.studies.large_images.LargeImagesStudy`):

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

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from workbench.core.tables import MAX_DET, MAX_DET_LARGE
from workbench.studies import micronuclei
from workbench.studies.base import Method
from workbench.studies.large_images import (
    MICRONUCLEI, ONE_STAGE, TWO_STAGE, WHOLE, Detector, GuidedSetting, LargeProfile, imgsz_for, score_methods,
    tiled_share, timed_rows)

MN_COLUMNS = ["mn_recall", "mn_precision", "mn_recall_delta", "n_pred_mn", "n_true_mn", "nucleus_recall"]
TITLE = "Micronucleus images: time vs mAP50"


def make_methods(mn: micronuclei.MNProfile, native: Any, upsampled: Any, detector: Detector, *,
                 guided: Sequence[GuidedSetting], whole_scales: Sequence[float]) -> list[Method]:
    """Part 2's rows as ``(method, setting, fn)``; ``fn(8-bit image) -> (boxes in native pixels,
    info)``. ``native``/``upsampled`` are notebook 08's two detectors at their training size;
    ``detector(base, imgsz)`` makes the same weights run at another ``imgsz``; one two-stage row
    per ``guided`` setting and one whole-image row per scale in ``whole_scales``."""
    from workbench.inference.tiled_inference import TileSettings, tiled_predict_image
    from workbench.inference.twostage import TwoStageSettings

    s = mn.scale
    tiles = TileSettings(tile=mn.tile, overlap=mn.overlap, batch=mn.infer_batch)

    def one_stage(img):
        up = micronuclei.upsample(img, s)
        table = tiled_predict_image(up, upsampled, settings=tiles)
        return micronuclei.scale_boxes(table, 1 / s), {"area_share": tiled_share(up.shape[:2], tiles)}

    methods: list[Method] = [(ONE_STAGE, f"x{s} image, tile {mn.tile}, overlap {tiles.overlap:g}, "
                                         f"batch {tiles.batch}", one_stage)]
    for g in guided:
        finder = ((lambda im: tiled_predict_image(im, native, settings=tiles)) if g.stage1 is None
                  else _whole(detector, native, g.stage1))
        search = detector(upsampled, g.canvas)
        settings = TwoStageSettings(region_conf=mn.count_thr, margin=g.margin * s, region_merge=g.region_merge,
                                    canvas=g.canvas, batch=micronuclei.canvas_batch(mn.infer_batch))

        def two_stage(img, finder=finder, search=search, settings=settings):
            table, info = micronuclei.guided_search(img, finder, search, scale=s, settings=settings)
            return table, {**info, "area_share": info["searched_share"]}

        methods.append((TWO_STAGE, g.label(), two_stage))
    for k in whole_scales:
        whole = _whole(detector, upsampled, k)
        methods.append((WHOLE, f"MN detector, imgsz {k:g} x longer side", lambda img, whole=whole: (whole(img), {})))
    return methods


def _whole(detector: Detector, base: Any, factor: float) -> Callable[[np.ndarray], pd.DataFrame]:
    """One pass of ``base``'s weights over the whole image at ``imgsz = factor x`` its longer
    side (rounded up to a multiple of 32; ultralytics resizes the image to fit)."""
    cache: dict[int, Any] = {}

    def run(img: np.ndarray) -> pd.DataFrame:
        size = imgsz_for(max(img.shape[:2]), factor)
        if size not in cache:
            cache[size] = detector(base, size)
        return cache[size]([img])[0]

    return run


def measure(mn_study: micronuclei.MicronucleiStudy, prof: LargeProfile, *,
            log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Part 2's timing cell: time every row on the held-out MNFinder images with the two
    detectors of ``mn_study`` (prepared; their cells ran first). Returns the timing and box rows."""
    from workbench.core.device import pick_device
    from workbench.inference.tiled_inference import YoloDetector

    mn, dev = mn_study.profile, pick_device(mn_study.device)
    native, upsampled = (YoloDetector(mn_study.detector_run(k), conf=mn.conf, imgsz=mn.tile, max_det=MAX_DET,
                                      device=dev) for k in (micronuclei.NATIVE, micronuclei.UPSAMPLED))

    def detector(base: YoloDetector, imgsz: int) -> YoloDetector:  # a whole image holds many tiles' boxes
        return YoloDetector(base.model, conf=mn.conf, imgsz=imgsz, max_det=MAX_DET_LARGE, device=dev)

    images = micronuclei.load_test_images(mn_study.base, mn_study.test_ids, native.normalisation)
    methods = make_methods(mn, native, upsampled, detector, guided=prof.mn_guided, whole_scales=prof.mn_whole_scales)
    true_mn = mn_study.gt[mn_study.gt["class"] == micronuclei.MN]
    return timed_rows(methods, images, true_mn, repeats=prof.mn_repeats, log=log, part=MICRONUCLEI)


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


def caption(mn_study: micronuclei.MicronucleiStudy, prof: LargeProfile, *, device: str) -> str:
    """The caption of part 2's figure (``mn_study`` prepared); ``device``: where it was timed."""
    mn, gt = mn_study.profile, mn_study.gt
    runs = [mn_study.detector_run(k) for k in (micronuclei.NATIVE, micronuclei.UPSAMPLED)]
    n_mn = int((gt["class"] == micronuclei.MN).sum())
    return (f"Time vs mAP50 (nuclei and micronuclei) on {len(mn_study.test_ids)} held-out MNFinder images "
            f"({n_mn} micronuclei, {len(gt) - n_mn} nuclei); detectors {' + '.join(r.name for r in runs)} "
            f"(notebook 08's {mn.name} profile, seed {mn.seed}, data {micronuclei.run_fingerprint(runs[-1])}) trained "
            f"on {len(mn_study.train_ids)} other images; MN at x{mn.scale}; profile {prof.name}, median of "
            f"{prof.mn_repeats} runs on {device}. {mn_study.note}").strip()


__all__ = ["GuidedSetting", "MN_COLUMNS", "TITLE", "caption", "make_methods", "measure", "score", "verdict"]
