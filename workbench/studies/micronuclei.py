"""The micronucleus study (notebook 08): ways of finding 5-pixel micronuclei next to their nuclei.

Approaches, each scored on the same held-out MNFinder validation images:

* ``native`` – yolov8n trained on native-resolution tiles, tiled inference at native scale
  (the baseline of issue #8: it finds nuclei and barely any micronucleus);
* ``upsampled`` – yolov8n trained on tiles of images upsampled ``scale`` x (a 5 px
  micronucleus becomes 10-20 px), tiled inference on the upsampled image, boxes scaled back;
* ``p2`` – yolov8n-p2 (an extra stride-4 head) on native tiles;
* ``guided`` – nucleus-guided search: nuclei from the ``native`` detector, then the
  neighbourhood of each nucleus (nucleus box + ``margin``) cut from the ``scale`` x image,
  packed into canvases (:mod:`workbench.inference.twostage`) and searched by the ``upsampled`` detector;
  every micronucleus is assigned to its parent nucleus.

Images are read from the raw files (16-bit TIFF included) and mapped to 8 bits with the
normalisation recorded in each detector's run (never a cast). Micronuclei are scored under
every matching criterion of :mod:`workbench.evaluation.tiny_matching`; per-cell outputs (micronuclei per
nucleus, MN frequency per image) come from :mod:`workbench.analysis.micronuclei`, the truth's parents
from the MNFinder mask colours. Times are per image (median over ``repeats``, after a warm-up,
approaches taking turns).
"""
from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from workbench.data import datasets
from workbench.studies.base import pick

MN, NUCLEUS = "mn", "nucleus"
NATIVE, UPSAMPLED, P2, GUIDED = "native", "upsampled", "p2", "guided"
APPROACHES = (NATIVE, UPSAMPLED, P2, GUIDED)


@dataclass(frozen=True)
class MNProfile:
    """Every setting of the study, with its meaning."""

    name: str
    full_source: bool = True  # train on ../shared/data/mnfinder (30 images) when present
    tile: int = 320  # training tile = inference tile = detector imgsz, in detector pixels
    scale: int = 3  # upsampling factor of the upsampled and guided approaches
    epochs: int = 12
    # the MN search detector (upsampled, also used by guided) learns MN last: on a CPU budget it
    # continues from its first run's best weights for this many more epochs (0: no second run)
    extra_epochs_upsampled: int = 16
    max_tiles: int = 320  # training tiles per detector (seeded sample; equal compute per arm)
    batch: int = 8  # training batch
    infer_batch: int = 16  # tiles / canvases per detector call
    conf: float = 0.01  # detector score floor
    count_thr: float = 0.25  # score threshold for recall, precision, counts and frequencies
    guided_canvas: int = 640  # canvas side of the guided search (its detector runs at imgsz = canvas)
    guided_merge: float | None = 0.5  # IoS at which neighbourhoods merge (0: any overlap; None: never)
    margin: float = 20.0  # native px around each nucleus searched (99% of true MN lie within ~21-25 px)
    parent_distance: float = 20.0  # native px: an MN farther from every nucleus has no parent
    repeats: int = 1
    warmup: bool = True  # one untimed pass per approach first (allocation, thread start-up)
    approaches: tuple[str, ...] = APPROACHES
    seed: int = 0


PROFILES = {
    # CI: the 2 vendored training images, one epoch: proves the pipeline, learns nothing
    "smoke": MNProfile("smoke", full_source=False, tile=160, scale=2, epochs=1, extra_epochs_upsampled=0, max_tiles=16,
                       batch=8, warmup=False, guided_canvas=320),
    # CPU (~30 min on 2 cores): 30 training images of ../shared, 3 validation images
    "modest": MNProfile("modest"),
    # GPU: more tiles and epochs
    "full": MNProfile("full", epochs=150, extra_epochs_upsampled=0, max_tiles=5000, batch=32, repeats=5),
}


def default_work_dir(prof: MNProfile) -> Path:
    from workbench.core.paths import outputs_dir

    return outputs_dir() / "micronuclei" / prof.name


# ----------------------------------------------------------------------------- data

def split_images(prof: MNProfile) -> tuple[Path, list[str], list[str], str]:
    """(canonical MNFinder folder, training image ids, held-out validation image ids, note)."""
    from workbench.data.canonical import read_meta

    base = datasets.prepare("mnfinder", full=prof.full_source)
    meta = read_meta(base)
    train = meta.loc[meta["split"] == "train", "image_id"].astype(str).tolist()
    test = meta.loc[meta["split"] == "val", "image_id"].astype(str).tolist()
    note = ""
    if prof.full_source and not base.name.endswith("-full"):
        note = "../shared/data/mnfinder absent: trained on the 2 vendored training images"
    if not train or not test:
        raise ValueError(f"{base}: need images in split 'train' (training) and 'val' (held out); "
                         f"found {len(train)} and {len(test)}")
    return base, train, test, note


def rescale_dataset(src: Path, out: Path, *, factor: float, overwrite: bool = False) -> Path:
    """A canonical copy of ``src`` with every image and box scaled by ``factor`` (bilinear).

    Only images with a split are copied; each meta row records ``scaled_from`` and ``scale``.
    """
    import cv2

    from workbench.data.canonical import RawDataset, RawImage, RawObject, load_dataset, write_canonical
    from workbench.core.images import read_image

    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    ds = load_dataset(src)
    by_image = {k: g for k, g in ds.objects.groupby("image_id", sort=False)}
    images = []
    for row in ds.images.itertuples(index=False):
        if not str(row.split):
            continue
        arr, _ = read_image(src / row.file)
        h, w = arr.shape[:2]
        big = cv2.resize(arr, (int(round(w * factor)), int(round(h * factor))), interpolation=cv2.INTER_LINEAR)
        g = by_image.get(row.image_id)
        objects = [] if g is None else [RawObject(str(c), x1 * factor, y1 * factor, x2 * factor, y2 * factor,
                                                  ref=f"box {k + 1} x{factor:g}")
                                        for k, (c, x1, y1, x2, y2) in enumerate(
                                            g[["class", "x1", "y1", "x2", "y2"]].itertuples(index=False))]
        images.append(RawImage(row.image_id, None, objects, pixels=big,
                               meta={"split": row.split, "scaled_from": row.image_id, "scale": factor}))
    if not images:
        raise ValueError(f"{src}: no images with a split to rescale")
    raw = RawDataset("rescaled", src, images, classes=ds.classes, notes={"scaled_from": str(src), "scale": factor})
    return write_canonical(raw, out, classes=ds.classes, overwrite=overwrite, command=f"rescale {src} x{factor:g}")


def sample_tiles(meta: pd.DataFrame, train_ids: list[str], *, max_tiles: int, seed: int) -> pd.Series:
    """Split per tile: a seeded sample of at most ``max_tiles`` tiles of training images, 8:2
    train/val; tiles of other images (held out) and unsampled tiles get no split ('')."""
    from workbench.data.splits import assign_splits

    split = pd.Series("", index=meta.index, dtype=str)
    pool = meta.index[meta["tile_of"].astype(str).isin(train_ids)]
    rng = np.random.default_rng(seed)
    chosen = pool if len(pool) <= max_tiles else pd.Index(np.sort(rng.choice(pool, size=max_tiles, replace=False)))
    split[chosen] = assign_splits(meta.loc[chosen].drop(columns="split"), ratios=(8, 2), seed=seed,
                                  keep_existing=False)
    return split


def prepare_tiles(prof: MNProfile, work: Path, *, scale: int) -> Path:
    """Training tiles of the training images at ``scale`` x: tiles of ``tile / scale`` native px
    (sampled), then upsampled to ``tile`` px. Reused when already written."""
    from workbench.data.canonical import read_classes, read_meta, save_meta
    from workbench.data.tiling import tile_dataset

    base, train, _, _ = split_images(prof)
    tag = f"t{prof.tile}_x{scale}_n{prof.max_tiles}_s{prof.seed}{'_full' if base.name.endswith('-full') else ''}"
    out = work / "data" / f"mn_tiles_{tag}"
    if (out / "meta.csv").exists():
        return out
    native = work / "data" / f"mn_native_{tag}"
    tile_dataset(base, native, tile=max(32, prof.tile // scale), overlap=0.25, min_visibility=0.5,
                 keep_empty=False, overwrite=True)
    meta = read_meta(native)
    save_meta(native, meta.assign(split=sample_tiles(meta, train, max_tiles=prof.max_tiles, seed=prof.seed)),
              read_classes(native))
    if scale == 1:
        shutil.move(str(native), str(out))
    else:
        rescale_dataset(native, out, factor=scale, overwrite=True)
        shutil.rmtree(native)
    return out


# ----------------------------------------------------------------------------- detectors

DETECTORS = {NATIVE: ("yolov8n.yaml", 1), P2: ("yolov8n-p2.yaml", 1)}


def detector_specs(prof: MNProfile) -> dict[str, tuple[str, int]]:
    """Detector name -> (architecture, training scale) needed by the profile's approaches."""
    need = set()
    for a in prof.approaches:
        if a not in APPROACHES:
            raise ValueError(f"unknown approach {a!r}; known: {APPROACHES}")
        need |= {NATIVE, UPSAMPLED} if a == GUIDED else {a}
    specs = {**DETECTORS, UPSAMPLED: ("yolov8n.yaml", prof.scale)}
    return {k: specs[k] for k in (NATIVE, UPSAMPLED, P2) if k in need}


def train_detectors(profile: str | MNProfile = "smoke", *, work_dir: Path | None = None,
                    device: str | None = None, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Train (or reuse finished) detectors of the profile: name -> run folder."""
    from workbench.models.runs import load_run
    from workbench.models.yolo import train

    prof = pick(profile, PROFILES)
    work = Path(work_dir) if work_dir else default_work_dir(prof)
    runs = {}
    for name, (model, scale) in detector_specs(prof).items():
        data = prepare_tiles(prof, work, scale=scale)
        run_name = f"mn_{name}_{Path(model).stem}_x{scale}_t{prof.tile}_n{prof.max_tiles}_e{prof.epochs}_s{prof.seed}"
        stages = [(run_name, model, prof.epochs, None)]
        if name == UPSAMPLED and prof.extra_epochs_upsampled:
            stages.append((f"{run_name}_plus{prof.extra_epochs_upsampled}", model, prof.extra_epochs_upsampled,
                           work / "runs" / run_name / "weights" / "best.pt"))
        for stage_name, arch, epochs, weights in stages:
            run_dir = work / "runs" / stage_name
            if (run_dir / "run.json").exists() and load_run(run_dir).get("status") == "finished":
                continue
            if run_dir.exists():
                shutil.rmtree(run_dir)  # an unfinished attempt: start again cleanly
            t0 = time.perf_counter()
            train(data, model=arch, epochs=epochs, imgsz=prof.tile, batch=prof.batch, seed=prof.seed, device=device,
                  run_name=stage_name, runs_root=work / "runs", max_det=1000, pretrained=weights)
            log(f"[micronuclei] trained {stage_name} in {time.perf_counter() - t0:.0f} s")
        runs[name] = work / "runs" / stages[-1][0]
    return runs


# ----------------------------------------------------------------------------- test images and truth

def load_test_images(prof: MNProfile, normalisation=None) -> dict[str, np.ndarray]:
    """Held-out images by id, read from the raw files (16-bit TIFF included) and mapped to
    8 bits with ``normalisation`` (the detector run's recorded mapping); the canonical 8-bit
    copy is read when the raw file is gone."""
    from workbench.data.canonical import read_meta
    from workbench.core.images import read_image, to_uint8

    base, _, test, _ = split_images(prof)
    meta = read_meta(base).set_index("image_id")
    kwargs = {"norm": normalisation} if normalisation is not None else {}
    images = {}
    for i in test:
        src = Path(str(meta.at[i, "source_image"]))
        arr = read_image(src)[0] if src.is_file() else read_image(base / meta.at[i, "file"])[0]
        images[i] = to_uint8(arr, **kwargs)[0]
    return images


def load_truth(prof: MNProfile) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(GT boxes of the held-out images, true MN with colour parents, true nuclei)."""
    from workbench.analysis.micronuclei import parents_from_colours

    base, _, test, _ = split_images(prof)
    objects = pd.read_csv(base / "objects.csv", dtype={"image_id": str})
    objects = objects[objects["image_id"].isin(test)].reset_index(drop=True)
    gt = objects.rename(columns={"image_id": "image"})[["image", "class", "x1", "y1", "x2", "y2"]]
    mn, nuclei = parents_from_colours(objects)
    return gt, mn, nuclei


# ----------------------------------------------------------------------------- approaches

def upsample(image: np.ndarray, scale: float) -> np.ndarray:
    """Bilinear ``scale`` x copy of an 8-bit image (the interpolation used for training tiles)."""
    import cv2

    h, w = image.shape[:2]
    return cv2.resize(image, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_LINEAR)


def scale_boxes(table: pd.DataFrame, factor: float) -> pd.DataFrame:
    """Box table with ``x1 y1 x2 y2`` multiplied by ``factor``."""
    out = table.copy()
    out[["x1", "y1", "x2", "y2"]] = out[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float) * factor
    return out


def make_approaches(prof: MNProfile, dets: dict[str, Any]) -> dict[str, Callable[[np.ndarray], tuple[pd.DataFrame, dict]]]:
    """Approach name -> function(8-bit image) -> (box table in native pixels, info).

    ``dets`` maps detector names to detector callables; ``"search"`` (the upsampled detector at
    ``imgsz = guided_canvas``) defaults to ``dets["upsampled"]``.
    """
    from workbench.inference.tiled_inference import TileSettings, tiled_predict_image
    from workbench.inference.twostage import TwoStageSettings

    tiles = TileSettings(tile=prof.tile, overlap=0.2, batch=prof.infer_batch)
    s = prof.scale

    def tiled(det):
        return lambda img: (tiled_predict_image(img, det, settings=tiles), {})

    def upsampled(img):
        table = tiled_predict_image(upsample(img, s), dets[UPSAMPLED], settings=tiles)
        return scale_boxes(table, 1 / s), {}

    search = TwoStageSettings(region_conf=prof.count_thr, margin=prof.margin * s, region_merge=prof.guided_merge,
                              canvas=prof.guided_canvas, batch=max(1, prof.infer_batch // 4))

    def guided(img):
        return guided_search(img, lambda im: tiled_predict_image(im, dets[NATIVE], settings=tiles),
                             dets.get("search", dets.get(UPSAMPLED)), scale=s, settings=search)

    table = {NATIVE: lambda: tiled(dets[NATIVE]), P2: lambda: tiled(dets[P2]),
             UPSAMPLED: lambda: upsampled, GUIDED: lambda: guided}
    return {a: table[a]() for a in prof.approaches}


def guided_search(image: np.ndarray, find_nuclei: Callable[[np.ndarray], pd.DataFrame], search: Any, *,
                  scale: float, settings: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Nucleus-guided two-stage search on one 8-bit image: (boxes ``x1 y1 x2 y2 class score``
    in native pixels, info).

    Stage 1: ``find_nuclei(image)`` (any box table; its ``nucleus`` boxes are kept). Stage 2:
    the neighbourhood of each nucleus (``settings.margin``, in pixels of the ``scale`` x image)
    is cut from the ``scale`` x image, packed into canvases and searched by ``search``
    (:func:`workbench.inference.twostage.fine_detect` with ``settings``, a ``TwoStageSettings``). The
    result holds stage 1's nuclei and stage 2's micronuclei. ``info``: ``stage1_s``,
    ``stage2_s``, ``regions``, ``canvases``, ``searched_share`` (searched pixels / image
    pixels) and ``region_boxes`` (the regions in native pixels).
    """
    from workbench.core.tables import BOX_COLUMNS
    from workbench.inference.twostage import fine_detect, propose_regions

    t0 = time.perf_counter()
    nuclei = find_nuclei(image)
    nuclei = nuclei[nuclei["class"] == NUCLEUS]
    up = upsample(image, scale)
    regions = propose_regions(scale_boxes(nuclei, scale), image_size=up.shape[:2], settings=settings)
    t1 = time.perf_counter()
    found, layout = fine_detect(up, regions, search, settings=settings)
    mn = scale_boxes(found[found["class"] == MN], 1 / scale)
    t2 = time.perf_counter()
    piece_px = float(((layout["x1"] - layout["x0"]) * (layout["y1"] - layout["y0"])).sum()) if len(layout) else 0.0
    table = pd.concat([nuclei[BOX_COLUMNS], mn[BOX_COLUMNS]], ignore_index=True)
    return table, {"stage1_s": t1 - t0, "stage2_s": t2 - t1, "regions": int(len(regions)),
                   "canvases": int(layout["canvas"].max() + 1) if len(layout) else 0,
                   "searched_share": piece_px / float(up.shape[0] * up.shape[1]),
                   "region_boxes": np.asarray(regions, dtype=float) / scale}


# ----------------------------------------------------------------------------- the study

@dataclass
class MNResult:
    profile: MNProfile
    table: pd.DataFrame  # one row per approach (SUMMARY_COLUMNS)
    criteria: pd.DataFrame  # approach x criterion x class: P/R/F1
    frequency: pd.DataFrame  # approach x image: true and predicted MN frequency
    clinical: pd.DataFrame  # approach x rate, against the micronucleus preset
    sweep: pd.DataFrame  # approach x score threshold: MN recall / precision at centre <= 3 px
    predictions: pd.DataFrame  # every approach's boxes (``approach`` column)
    info: dict[str, Any] = field(default_factory=dict)


SUMMARY_COLUMNS = ["approach", "mn_recall_centre3", "mn_precision_centre3", "mn_recall_min8_iou50",
                   "mn_precision_min8_iou50", "mn_recall_iou50", "mn_precision_iou50", "mn_recall_centre3_any_score",
                   "nucleus_recall_iou50", "nucleus_precision_iou50", "freq_mae", "time_per_image_s"]


def run_study(profile: str | MNProfile = "smoke", *, work_dir: Path | None = None, device: str | None = None,
              log: Callable[[str], None] = print) -> MNResult:
    """Train (or reuse) the detectors, run every approach on the held-out images, score them."""
    from workbench.core.device import describe_device, pick_device
    from workbench.inference.tiled_inference import YoloDetector

    prof = pick(profile, PROFILES)
    dev = pick_device(device)
    work = Path(work_dir) if work_dir else default_work_dir(prof)
    runs = train_detectors(prof, work_dir=work, device=dev, log=log)
    dets = {k: YoloDetector(r, conf=prof.conf, imgsz=prof.tile, max_det=1000, device=dev) for k, r in runs.items()}
    if UPSAMPLED in dets:  # the same weights on the guided search's larger canvases (same pixel scale)
        dets["search"] = YoloDetector(dets[UPSAMPLED].model, conf=prof.conf, imgsz=prof.guided_canvas, max_det=1000,
                                      device=dev)
    # every detector was trained on the same canonical images: one recorded 8-bit mapping
    images = load_test_images(prof, dets[NATIVE if NATIVE in dets else next(iter(dets))].normalisation)
    gt, true_mn, true_nuclei = load_truth(prof)
    approaches = make_approaches(prof, dets)

    first = next(iter(images.values()))
    for fn in approaches.values() if prof.warmup else ():
        fn(first)
    times: dict[tuple[str, str], list[float]] = {}
    infos: dict[tuple[str, str], dict] = {}
    preds: dict[tuple[str, str], pd.DataFrame] = {}
    for r in range(max(1, prof.repeats)):
        for name, img in images.items():
            for a, fn in approaches.items():  # approaches take turns: shared-machine load falls on all alike
                t0 = time.perf_counter()
                table, info = fn(img)
                times.setdefault((a, name), []).append(time.perf_counter() - t0)
                infos[(a, name)] = {k: v for k, v in info.items() if k != "region_boxes"}
                preds[(a, name)] = table.assign(image=name, approach=a)
        log(f"[micronuclei] repeat {r + 1}/{max(1, prof.repeats)} done")
    pred = pd.concat(preds.values(), ignore_index=True)
    per_image = pd.DataFrame([{"approach": a, "image": i, "time_s": statistics.median(t), **infos[(a, i)]}
                              for (a, i), t in times.items()])
    result = score(prof, gt, true_mn, true_nuclei, pred, per_image, images=list(images),
                   approaches=list(approaches))
    _, train, test, note = split_images(prof)
    result.info.update({"profile": asdict(prof), "runs": {k: str(v) for k, v in runs.items()},
                        "run_ids": {k: v.name for k, v in runs.items()}, "train_images": train, "test_images": test,
                        "n_true_mn": int((gt["class"] == MN).sum()), "n_true_nuclei": int((gt["class"] == NUCLEUS).sum()),
                        "note": note, "device": describe_device(dev), "normalisation": str(dets[next(iter(dets))].normalisation),
                        "command": f"python -m workbench notebook 08_micronuclei -p profile={prof.name}"})
    result.info["per_image"] = per_image.to_dict(orient="records")
    return result


def score(prof: MNProfile, gt: pd.DataFrame, true_mn: pd.DataFrame, true_nuclei: pd.DataFrame, pred: pd.DataFrame,
          per_image: pd.DataFrame, *, images: list[str], approaches: list[str] | None = None) -> MNResult:
    """All tables of the study from the predictions of every approach (pure)."""
    from workbench.evaluation import clinical
    from workbench.analysis import micronuclei as mnx
    from workbench.evaluation import tiny_matching as tm

    true_cells = mnx.cell_table(true_nuclei, true_mn)
    true_freq = mnx.mn_frequency(true_cells, true_mn, images=images)
    rows, crit_parts, freq_parts, clin_parts, sweep_parts = [], [], [], [], []
    for a in approaches or list(dict.fromkeys(pred["approach"])):
        p = pred[pred["approach"] == a].drop(columns="approach").reset_index(drop=True)
        crit = tm.prf_by_criterion(gt, p, tm.STANDARD, classes=[MN, NUCLEUS], score_thr=prof.count_thr)
        crit_parts.append(crit.assign(approach=a))
        any_score = tm.prf(gt, p, tm.TINY_DEFAULTS, score_thr=prof.conf).set_index("class")
        sweep_parts.append(mn_sweep(gt, p, thresholds=SWEEP_THRESHOLDS).assign(approach=a))
        c = crit.set_index(["criterion", "class"])

        def get(criterion: str, cls: str, col: str) -> float:
            return float(c.loc[(criterion, cls), col]) if (criterion, cls) in c.index else float("nan")

        _, _, freq = mnx.per_cell_outputs(p, max_distance=prof.parent_distance, score_thr=prof.count_thr,
                                          images=images)
        comp = mnx.frequency_comparison(freq, true_freq).assign(approach=a)
        freq_parts.append(comp)
        kept = p[p["score"] >= prof.count_thr]
        counts = tm.clinical_counts(gt, kept, positive=MN, criteria=tm.TINY_DEFAULTS, images=images)
        rates = clinical.pass_fail(clinical.rates_from_counts(counts, n_boot=200, seed=prof.seed), "micronuclei")
        clin_parts.append(rates.assign(approach=a, matching=str(tm.describe(tm.TINY_DEFAULTS))))
        t = per_image[per_image["approach"] == a]
        rows.append({"approach": a,
                     "mn_recall_centre3": get("centre<=3px", MN, "recall"),
                     "mn_precision_centre3": get("centre<=3px", MN, "precision"),
                     "mn_recall_min8_iou50": get("IoU0.5@min8px", MN, "recall"),
                     "mn_precision_min8_iou50": get("IoU0.5@min8px", MN, "precision"),
                     "mn_recall_iou50": get("IoU0.5", MN, "recall"), "mn_precision_iou50": get("IoU0.5", MN, "precision"),
                     "mn_recall_centre3_any_score": float(any_score.loc[MN, "recall"]) if MN in any_score.index else float("nan"),
                     "nucleus_recall_iou50": get("IoU0.5", NUCLEUS, "recall"),
                     "nucleus_precision_iou50": get("IoU0.5", NUCLEUS, "precision"),
                     "freq_mae": float(comp["frequency_error"].abs().mean()),
                     "time_per_image_s": float(t["time_s"].mean())})
    return MNResult(prof, pd.DataFrame(rows)[SUMMARY_COLUMNS], pd.concat(crit_parts, ignore_index=True),
                    pd.concat(freq_parts, ignore_index=True), pd.concat(clin_parts, ignore_index=True),
                    pd.concat(sweep_parts, ignore_index=True), pred,
                    {"count_thr": prof.count_thr, "criteria": {k: v.label() for k, v in tm.STANDARD.items()}})


SWEEP_THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5)


def mn_sweep(gt: pd.DataFrame, pred: pd.DataFrame, *, thresholds: tuple[float, ...] = SWEEP_THRESHOLDS,
             criterion=None) -> pd.DataFrame:
    """MN recall and precision (centre <= 3 px unless ``criterion``) at each score threshold:
    the whole operating curve, since a fixed threshold is unfair to a detector still learning MN."""
    from workbench.evaluation import metrics
    from workbench.evaluation import tiny_matching as tm

    m = tm.match(gt, pred, {MN: criterion or tm.CENTRE3, NUCLEUS: tm.IOU50})
    rows = []
    for thr in thresholds:
        r = metrics.prf_from_matches(m, score_thr=thr).set_index("class")
        if MN in r.index:
            rows.append({"score_thr": thr, "n_pred": int(r.loc[MN, "n_pred"]), "recall": float(r.loc[MN, "recall"]),
                         "precision": float(r.loc[MN, "precision"]), "f1": float(r.loc[MN, "f1"])})
    return pd.DataFrame(rows, columns=["score_thr", "n_pred", "recall", "precision", "f1"])


def goal(table: pd.DataFrame, *, recall: float = 0.9, precision: float = 0.8) -> pd.DataFrame:
    """Each approach against the issue's goal: MN recall >= 0.9 at precision >= 0.8 (centre <= 3 px)."""
    out = table[["approach", "mn_recall_centre3", "mn_precision_centre3"]].copy()
    out["meets_goal"] = (out["mn_recall_centre3"] >= recall) & (out["mn_precision_centre3"] >= precision)
    return out


# ----------------------------------------------------------------------------- figures and files

def frequency_scatter(freq: pd.DataFrame, *, title: str = "MN frequency per image: predicted vs true"):
    """Predicted against true MN frequency, one marker per approach and image, identity line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for a, g in freq.groupby("approach", sort=False):
        ax.scatter(g["true_mn_frequency"], g["pred_mn_frequency"], label=a, s=45, edgecolor="k", alpha=0.8)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="identity")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="true MN frequency (cells with >= 1 MN / cells)",
           ylabel="predicted MN frequency", title=title)
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def criteria_chart(criteria: pd.DataFrame, *, cls: str = MN, title: str = "Micronuclei: recall and precision by matching criterion"):
    """Recall and precision of ``cls`` per approach, one group of bars per criterion."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    t = criteria[criteria["class"] == cls]
    names = list(dict.fromkeys(t["criterion"]))
    approaches = list(dict.fromkeys(t["approach"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    width = 0.8 / max(len(approaches), 1)
    for ax, metric in zip(axes, ("recall", "precision")):
        for k, a in enumerate(approaches):
            v = t[t["approach"] == a].set_index("criterion").reindex(names)[metric].fillna(0)
            ax.bar(np.arange(len(names)) + k * width, v.to_numpy(), width, label=a)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
        ax.set(title=metric, ylim=(0, 1))
    axes[0].set_ylabel(cls)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    return fig


def write_outputs(result: MNResult, out: Path) -> list[Path]:
    """Tables (CSV), ``study.json`` and the two figures (PNG/PDF + caption) into ``out``."""
    import json

    from workbench.report.figures import save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in (("mn_study", result.table), ("mn_criteria", result.criteria),
                        ("mn_frequency", result.frequency), ("mn_clinical", result.clinical),
                        ("mn_sweep", result.sweep)):
        table.to_csv(out / f"{name}.csv", index=False)
        written.append(out / f"{name}.csv")
    result.predictions.to_csv(out / "mn_predictions.csv", index=False)
    written.append(out / "mn_predictions.csv")
    (out / "study.json").write_text(json.dumps(result.info, indent=1, default=str) + "\n", encoding="utf-8")
    written.append(out / "study.json")
    info = result.info
    prov = {"runs": info.get("run_ids"), "test_images": info.get("test_images"), "profile": result.profile.name,
            "seed": result.profile.seed}
    where = (f"{len(info.get('test_images', []))} held-out MNFinder validation images ({info.get('n_true_mn')} MN, "
             f"{info.get('n_true_nuclei')} nuclei); profile {result.profile.name}; score >= {result.profile.count_thr:g}. "
             f"{info.get('note', '')}").strip()
    written += save_figure(frequency_scatter(result.frequency), out / "mn_frequency_scatter",
                           caption="Predicted vs true MN frequency per image (truth: parents from mask colours; "
                                   f"predictions: nearest nucleus within {result.profile.parent_distance:g} px). " + where,
                           provenance=prov)
    written += save_figure(criteria_chart(result.criteria), out / "mn_criteria",
                           caption="Micronucleus recall and precision per approach under each matching criterion. " + where,
                           provenance=prov)
    return written
