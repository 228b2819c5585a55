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
  every micronucleus is assigned to its parent nucleus;
* ``dense`` – a U-Net predicting background / nucleus / MN per pixel, components -> boxes,
  thresholds tuned on training images (:mod:`workbench.studies.micronuclei_dense`).

Cells: one per detector to train (``native``, ``upsampled``, ``p2``, ``dense``: those the
profile's approaches need), then ``evaluate``, which times every approach on the held-out images
(:func:`workbench.studies.base.time_methods`) and returns the timings and predicted boxes as
rows; the tables are scored from those rows. The detectors live in a work folder shared with
notebook 07 (part 2 reuses them when their resolved config matches).

Images are read from the raw files (16-bit TIFF included) and mapped to 8 bits with the
normalisation recorded in each detector's run (never a cast). Micronuclei are scored under
every matching criterion of :mod:`workbench.evaluation.tiny_matching`; per-cell outputs (micronuclei per
nucleus, MN frequency per image) come from :mod:`workbench.analysis.micronuclei`, the truth's parents
from the MNFinder mask colours. Times are per image (median over ``repeats``, after a warm-up,
approaches taking turns).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.analysis.micronuclei import MN, NUCLEUS
from workbench.core.tables import BOX_COLUMNS, MAX_DET
from workbench.data import datasets
from workbench.models.dense import DenseConfig
from workbench.studies import micronuclei_dense as dense
from workbench.studies.base import Cell, Profile, Study, register, time_methods
from workbench.studies.micronuclei_figures import criteria_chart, frequency_scatter

NATIVE, UPSAMPLED, P2, GUIDED, DENSE = "native", "upsampled", "p2", "guided", dense.DENSE
APPROACHES = (NATIVE, UPSAMPLED, P2, GUIDED, DENSE)
EVALUATE = "evaluate"  # the key of the evaluation/timing cell
TRAIN_TILE_OVERLAP = 0.25  # overlap of the native training tiles (share of the tile side)
MIN_VISIBILITY = 0.5  # a box cut by a training tile's edge is kept when this share of it is inside
N_BOOT = 200  # bootstrap resamples (images) of the clinical rates' intervals


@dataclass(frozen=True)
class MNProfile(Profile):
    """Every setting of the study, with its meaning and unit."""

    full_source: bool = True  # train on ../shared/data/mnfinder (30 images) when present, else the 2 vendored
    tile: int = 320  # training tile = inference tile = detector imgsz (px of the image the detector sees)
    scale: int = 3  # upsampling factor of the upsampled and guided approaches (x)
    epochs: int = 12  # training epochs of every detector
    # the MN search detector (upsampled, also used by guided) learns MN last: on a CPU budget it
    # continues from its first run's best weights for this many more epochs (0: no second run)
    extra_epochs_upsampled: int = 16
    max_tiles: int = 320  # training tiles per detector (seeded sample; equal compute per arm)
    batch: int = 8  # training batch (tiles per step)
    infer_batch: int = 16  # tiles / canvases per detector call at inference
    overlap: float = 0.2  # inference tile overlap (share of the tile side)
    conf: float = 0.01  # detector score floor (low: the threshold sweep needs low-score boxes)
    count_thr: float = 0.25  # score threshold for recall, precision, counts and frequencies
    guided_canvas: int = 640  # canvas side of the guided search (px of the scale x image; its detector's imgsz)
    guided_merge: float | None = 0.5  # IoS at which neighbourhoods merge (0: any overlap; None: never)
    margin: float = 20.0  # native px around each nucleus searched (99% of true MN lie within ~21-25 px)
    parent_distance: float = 20.0  # native px: an MN farther from every nucleus has no parent
    repeats: int = 1  # timed passes over the held-out images (median per image), after one warm-up pass
    approaches: tuple[str, ...] = APPROACHES  # approaches compared (guided needs the native and upsampled detectors)
    seed: int = 0  # seed of the tile sample, its train/val split and training
    dense: DenseConfig = DenseConfig()  # the dense approach's network, crops and training length (its seed: seed)
    dense_views: int = 8  # dihedral views the dense maps are averaged over (thresholds tuned with them; 1: none)


PROFILES = {
    # CI: the 2 vendored training images, one epoch: proves the pipeline, learns nothing
    "smoke": MNProfile("smoke", full_source=False, tile=160, scale=2, epochs=1, extra_epochs_upsampled=0, max_tiles=16,
                       batch=8, guided_canvas=320, dense_views=1,
                       dense=DenseConfig(decoder_channels=(16, 8, 8), crop=64, batch=4, epochs=1, crops_per_epoch=8,
                                         val_crops=4)),
    # CPU (~30 min on 2 cores + ~25 min for the dense U-Net's 16 x 512 crops): 30 training images of ../shared,
    # 3 validation images
    "cpu": MNProfile("cpu"),
    # GPU: more tiles and epochs; a deeper U-Net on many more crops
    "full": MNProfile("full", epochs=150, extra_epochs_upsampled=0, max_tiles=5000, batch=32, repeats=5,
                      dense=DenseConfig(encoder="tu-resnet34", encoder_depth=4, decoder_channels=(128, 64, 32, 16),
                                        batch=64, epochs=100, crops_per_epoch=4096, val_crops=512)),
}


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
                                  keep_existing=False, exact=True)  # a derived set: exact counts matter, re-import stability does not
    return split


def prepare_tiles(prof: MNProfile, work: Path, base: Path, train_ids: Sequence[str], *, scale: int) -> Path:
    """Training tiles of the training images ``train_ids`` of ``base`` at ``scale`` x: tiles of
    ``tile / scale`` native px (sampled), then upsampled to ``tile`` px. Reused when already written."""
    from workbench.data.canonical import read_classes, read_meta, save_meta
    from workbench.data.tiling import tile_dataset

    tag = f"t{prof.tile}_x{scale}_n{prof.max_tiles}_s{prof.seed}{'_full' if base.name.endswith('-full') else ''}"
    out = work / "data" / f"mn_tiles_{tag}"
    if (out / "meta.csv").exists():
        return out
    native = work / "data" / f"mn_native_{tag}"
    tile_dataset(base, native, tile=max(32, prof.tile // scale), overlap=TRAIN_TILE_OVERLAP,
                 min_visibility=MIN_VISIBILITY, keep_empty=False, overwrite=True)
    meta = read_meta(native)
    save_meta(native, meta.assign(split=sample_tiles(meta, list(train_ids), max_tiles=prof.max_tiles, seed=prof.seed)),
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
        need |= {NATIVE, UPSAMPLED} if a == GUIDED else set() if a == DENSE else {a}
    specs = {**DETECTORS, UPSAMPLED: ("yolov8n.yaml", prof.scale)}
    return {k: specs[k] for k in (NATIVE, UPSAMPLED, P2) if k in need}


def stale(run_dir: Path, weights: Path) -> bool:
    """True when ``run_dir`` (a run continued from ``weights``) is older than those weights:
    the first run was trained again since, so the continuation must be too (the run-reuse
    check compares the weights' path, not their content)."""
    record = run_dir / "run.json"
    return record.exists() and weights.exists() and record.stat().st_mtime < weights.stat().st_mtime


def run_fingerprint(run_dir: Path) -> str:
    """The first 12 hex digits of the training data's fingerprint recorded in ``run_dir`` ('' if none)."""
    from workbench.models.runs import read_run_record

    try:
        rec = read_run_record(run_dir)
    except (FileNotFoundError, ValueError):
        return ""
    return str(((rec.get("dataset") or {}).get("fingerprint") or {}).get("sha256", ""))[:12]


# ----------------------------------------------------------------------------- test images and truth

def load_test_images(base: Path, test_ids: Sequence[str], normalisation=None) -> dict[str, np.ndarray]:
    """Held-out images of ``base`` by id, read from the raw files (16-bit TIFF included) and
    mapped to 8 bits with ``normalisation`` (the detector run's recorded mapping); the canonical
    8-bit copy is read when the raw file is gone."""
    from workbench.data.canonical import read_meta
    from workbench.core.images import read_image, to_uint8

    meta = read_meta(base).set_index("image_id")
    kwargs = {"norm": normalisation} if normalisation is not None else {}
    images = {}
    for i in test_ids:
        src = Path(str(meta.at[i, "source_image"]))
        arr = read_image(src)[0] if src.is_file() else read_image(base / meta.at[i, "file"])[0]
        images[i] = to_uint8(arr, **kwargs)[0]
    return images


def load_truth(base: Path, test_ids: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(GT boxes of the held-out images, true MN with colour parents, true nuclei)."""
    from workbench.analysis.micronuclei import parents_from_colours

    objects = pd.read_csv(base / "objects.csv", dtype={"image_id": str})
    objects = objects[objects["image_id"].isin(list(test_ids))].reset_index(drop=True)
    gt = objects.rename(columns={"image_id": "image"})[["image", "class", "x1", "y1", "x2", "y2"]]
    mn, nuclei = parents_from_colours(objects)
    return gt, mn, nuclei


# ----------------------------------------------------------------------------- result rows of timing cells

TIMING, BOXES = "timing", "box"  # the kinds of row a timing cell returns


def measurement_rows(per_image: pd.DataFrame, boxes: pd.DataFrame, **tags: Any) -> list[dict[str, Any]]:
    """A timing cell's result rows: one per timed (method, image) and one per predicted box,
    told apart by ``kind`` and ``tags`` (e.g. the study part), so that the tables are scored
    from the rows alone, wherever the cell ran."""
    return [{"kind": kind, **tags, **r} for kind, table in ((TIMING, per_image), (BOXES, boxes))
            for r in table.to_dict(orient="records")]


def measured(rows: pd.DataFrame, kind: str, columns: Sequence[str], **tags: Any) -> pd.DataFrame:
    """The rows of ``kind`` (and ``tags``) of all cells as a table of ``columns`` (coordinates
    and scores as floats for box rows); empty when there are none."""
    keep = rows["kind"] == kind if "kind" in rows else pd.Series(False, index=rows.index)
    for k, v in tags.items():
        keep &= rows[k] == v if k in rows else False
    out = rows.loc[keep].reindex(columns=list(columns)).reset_index(drop=True)
    numeric = [c for c in ("x1", "y1", "x2", "y2", "score") if kind == BOXES and c in out]
    return out.astype({c: float for c in numeric})


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

    tiles = TileSettings(tile=prof.tile, overlap=prof.overlap, batch=prof.infer_batch)
    s = prof.scale

    def tiled(det):
        return lambda img: (tiled_predict_image(img, det, settings=tiles), {})

    def upsampled(img):
        table = tiled_predict_image(upsample(img, s), dets[UPSAMPLED], settings=tiles)
        return scale_boxes(table, 1 / s), {}

    search = TwoStageSettings(region_conf=prof.count_thr, margin=prof.margin * s, region_merge=prof.guided_merge,
                              canvas=prof.guided_canvas, batch=canvas_batch(prof.infer_batch))

    def guided(img):
        table, info = guided_search(img, lambda im: tiled_predict_image(im, dets[NATIVE], settings=tiles),
                                    dets.get("search", dets.get(UPSAMPLED)), scale=s, settings=search)
        return table, {**info, "area_share": info["searched_share"]}

    table = {NATIVE: lambda: tiled(dets[NATIVE]), P2: lambda: tiled(dets[P2]),
             UPSAMPLED: lambda: upsampled, GUIDED: lambda: guided}
    return {a: table[a]() for a in prof.approaches if a in table}  # dense: micronuclei_dense.dense_method


def canvas_batch(tile_batch: int) -> int:
    """Canvases per detector call: a quarter of the tile batch (a canvas holds ~4 tiles' pixels)."""
    return max(1, tile_batch // 4)


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

SUMMARY_COLUMNS = ["approach", "mn_recall_centre3", "mn_precision_centre3", "mn_recall_min8_iou50",
                   "mn_precision_min8_iou50", "mn_recall_iou50", "mn_precision_iou50", "mn_recall_centre3_any_score",
                   "nucleus_recall_iou50", "nucleus_precision_iou50", "freq_mae", "time_per_image_s"]
TIMING_COLUMNS = ["approach", "image", "time_s", "stage1_s", "stage2_s", "area_share", "canvases", "regions"]
PREDICTED_COLUMNS = [*BOX_COLUMNS, "image", "approach"]


@register
class MicronucleiStudy(Study):
    """Native vs upsampled vs P2 vs nucleus-guided: one cell per detector, then ``evaluate``."""

    name = "08_micronuclei"
    profiles = PROFILES
    default_dataset = "mnfinder"
    headline_tables = ("mn_study", "mn_errors", "mn_training")
    varies = False  # tables() pools every cell's boxes per approach: one run per approach
    profile: MNProfile

    def __init__(self, dataset: str | Path | None = None, *, work_dir: str | Path | None = None,
                 **kwargs: Any) -> None:
        if dataset is not None and str(dataset) != self.default_dataset:
            raise ValueError(f"{self.name} studies {self.default_dataset} only (its split is fixed), got {dataset!r}")
        super().__init__(self.default_dataset, work_dir=work_dir, **kwargs)
        if work_dir is None:  # shared with notebook 07, whatever folder either notebook writes to
            from workbench.core.paths import outputs_dir

            self.work_dir = outputs_dir() / "micronuclei" / self.profile.name

    def prepare(self) -> None:
        p = self.profile
        self.base, self.train_ids, self.test_ids, self.note = split_images(p)
        scales = sorted({scale for _, scale in detector_specs(p).values()})
        self.tiles = {s: prepare_tiles(p, self.work_dir, self.base, self.train_ids, scale=s) for s in scales}
        self.gt, self.true_mn, self.true_nuclei = load_truth(self.base, self.test_ids)

    def detector_key(self, name: str) -> str:
        """The key of the cell that trains detector ``name`` (also its first run's folder name)."""
        model, scale = detector_specs(self.profile)[name]
        return f"mn_{name}_{Path(model).stem}_x{scale}_s{self.profile.seed}"

    def detector_run(self, name: str) -> Path:
        """The run folder of detector ``name`` (the continued run where the profile adds epochs)."""
        key, extra = self.detector_key(name), self.profile.extra_epochs_upsampled
        return self.work_dir / "runs" / (f"{key}_plus{extra}" if name == UPSAMPLED and extra else key)

    def cells(self) -> list[Cell]:
        dets = [self.cell(self.detector_key(name), detector=name, model=model, scale=scale)
                for name, (model, scale) in detector_specs(self.profile).items()]
        dets += [self.cell(dense.dense_key(self.profile), detector=DENSE)] if DENSE in self.profile.approaches else []
        return [*dets, self.cell(EVALUATE, needs=[c.key for c in dets])]

    def run_cell(self, cell: Cell) -> list[dict[str, Any]]:
        if cell.config.get("detector") == DENSE:
            return dense.train_dense_cell(self.dense_run, self.base, self.profile, device=self.device, log=self.log)
        return self._evaluate() if cell.key == EVALUATE else self._train(cell)

    @property
    def dense_run(self) -> Path:  # the dense approach's run folder (named by its cell's key)
        return self.work_dir / "runs" / dense.dense_key(self.profile)

    def _train(self, cell: Cell) -> list[dict[str, Any]]:
        """Train (or reuse, when finished with this config) one detector; the upsampled one
        continues from its first run's best weights for ``extra_epochs_upsampled`` epochs."""
        from workbench.models.runs import load_run

        p, name = self.profile, str(cell.config["detector"])
        t0 = time.perf_counter()
        common = dict(model=str(cell.config["model"]), imgsz=p.tile, batch=p.batch, seed=p.seed, max_det=MAX_DET)
        data = self.tiles[int(cell.config["scale"])]
        run = self.train_or_reuse(self.work_dir / "runs" / cell.key, data, epochs=p.epochs, **common)
        final, runs = self.detector_run(name), [run]
        if final != run:
            weights = run / "weights" / "best.pt"
            if stale(final, weights):
                shutil.rmtree(final)
            run = self.train_or_reuse(final, data, epochs=p.extra_epochs_upsampled, pretrained=weights, **common)
            runs.append(run)
        self.log(f"[micronuclei] {name}: {run.name} ready in {time.perf_counter() - t0:.0f} s")
        # the detector's training time is that of every run it took (a continued run: both)
        durations = [load_run(r).get("duration_s") for r in runs]
        train_s = None if None in durations else float(sum(durations))
        return [{"kind": "detector", "detector": name, "run_id": run.name, "train_s": train_s}]

    def _evaluate(self) -> list[dict[str, Any]]:
        """Time every approach on the held-out images; rows: timings and predicted boxes."""
        from workbench.core.device import pick_device
        from workbench.inference.tiled_inference import YoloDetector

        p, dev = self.profile, pick_device(self.device)
        dets = {k: YoloDetector(self.detector_run(k), conf=p.conf, imgsz=p.tile, max_det=MAX_DET, device=dev)
                for k in detector_specs(p)}
        if UPSAMPLED in dets:  # the same weights on the guided search's larger canvases (same pixel scale)
            dets["search"] = YoloDetector(dets[UPSAMPLED].model, conf=p.conf, imgsz=p.guided_canvas, max_det=MAX_DET,
                                          device=dev)
        methods, norms = [(a, "", fn) for a, fn in make_approaches(p, dets).items()], [d.normalisation for d in dets.values()]
        if DENSE in p.approaches:
            fn, det = dense.dense_method(self.dense_run, device=dev)
            methods, norms = [*methods, (DENSE, "", fn)], [*norms, det.normalisation]
        # every detector was trained on the same canonical images: one recorded 8-bit mapping
        images = load_test_images(self.base, self.test_ids, norms[0])
        per_image, boxes = time_methods(methods, images, repeats=p.repeats, log=self.log)
        per_image = per_image.rename(columns={"method": "approach", "total_s": "time_s"})
        boxes = boxes.rename(columns={"method": "approach"})
        curve = dense.sweep_rows(det, images, self.gt) if DENSE in p.approaches else []
        return measurement_rows(per_image[TIMING_COLUMNS], boxes[PREDICTED_COLUMNS]) + curve

    def count_thresholds(self) -> dict[str, float]:
        """Score from which each approach's boxes count (dense rows: all, already at the tuned point)."""
        return {a: 0.0 if a == DENSE else self.profile.count_thr for a in self.profile.approaches}

    def tables(self, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
        pred = measured(rows, BOXES, PREDICTED_COLUMNS)
        timing = measured(rows, TIMING, TIMING_COLUMNS)
        p, thr = self.profile, self.count_thresholds()
        scored = score(p, self.gt, self.true_mn, self.true_nuclei, pred, timing, images=self.test_ids,
                       approaches=list(p.approaches), count_thr=thr)
        return {**scored, "mn_predictions": pred, "mn_training": dense.training_table(rows),
                "mn_dense_sweep": dense.sweep_table(rows),
                "mn_errors": dense.error_table(self.gt, pred, count_thr=thr, images=self.test_ids,
                                               parent_distance=p.parent_distance),
                "mn_per_nucleus": dense.per_nucleus_table(pred, self.true_mn, self.true_nuclei, count_thr=thr,
                                                          parent_distance=p.parent_distance)}

    def figures(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
        overlay = dense.worst_overlay(tables["mn_errors"], tables["mn_predictions"], self.gt, lambda i: load_test_images(
            self.base, [i], dense.run_normalisation(self.dense_run))[i])
        return {"mn_frequency_scatter": frequency_scatter(tables["mn_frequency"]),
                "mn_criteria": criteria_chart(tables["mn_criteria"]), **overlay}

    def caption(self, name: str, tables: Mapping[str, pd.DataFrame]) -> str:
        p, n_mn, n_nuclei = self.profile, int((self.gt["class"] == MN).sum()), int((self.gt["class"] == NUCLEUS).sum())
        what = {"mn_frequency_scatter": "Predicted vs true MN frequency per image (truth: parents from mask colours; "
                                        f"predictions: nearest nucleus within {p.parent_distance:g} px).",
                "mn_criteria": "Micronucleus recall and precision per approach under each matching criterion.",
                "mn_dense_worst": "The dense approach's worst held-out image: MN found (blue), spurious (vermillion), "
                                  "missed (black) at centre <= 3 px, predicted nuclei grey."}[name]
        runs = ", ".join([self.detector_run(k).name for k in detector_specs(p)]
                         + ([self.dense_run.name] if DENSE in p.approaches else []))
        return (f"{what} {len(self.test_ids)} held-out MNFinder validation images ({n_mn} MN, "
                f"{n_nuclei} nuclei); detectors {runs} (seed {p.seed}); profile {p.name}; "
                f"score >= {p.count_thr:g} (dense: its tuned thresholds). {self.note}").strip()

    def settings(self) -> dict[str, Any]:
        from workbench.evaluation import tiny_matching as tm

        runs, gt = {k: self.detector_run(k) for k in detector_specs(self.profile)}, self.gt
        return {"train_images": self.train_ids, "test_images": self.test_ids, "note": self.note,
                "n_true_mn": int((gt["class"] == MN).sum()), "n_true_nuclei": int((gt["class"] == NUCLEUS).sum()),
                "run_ids": {k: r.name for k, r in runs.items()}, "runs": {k: str(r) for k, r in runs.items()},
                "fingerprints": {k: run_fingerprint(r) for k, r in runs.items()},
                "criteria": {k: v.label() for k, v in tm.STANDARD.items()}, "work_dir": str(self.work_dir),
                "dense": dense.dense_summary(self.dense_run) if DENSE in self.profile.approaches else None,
                "command": f"python -m workbench notebook {self.name} -p profile={self.profile.name}"}


def score(prof: MNProfile, gt: pd.DataFrame, true_mn: pd.DataFrame, true_nuclei: pd.DataFrame, pred: pd.DataFrame,
          per_image: pd.DataFrame, *, images: list[str], approaches: list[str] | None = None,
          count_thr: Mapping[str, float] | None = None) -> dict[str, pd.DataFrame]:
    """The study's scored tables from every approach's predictions (``approach`` column) and
    per-image times (``approach image time_s``), pure; ``count_thr`` overrides the profile's
    ``count_thr`` per approach:

    ``mn_study`` (one row per approach, ``SUMMARY_COLUMNS``), ``mn_criteria`` (approach x
    criterion x class: P/R/F1), ``mn_frequency`` (approach x image: true and predicted MN
    frequency), ``mn_clinical`` (approach x rate, against the micronucleus preset) and
    ``mn_sweep`` (approach x score threshold: MN recall / precision at centre <= 3 px).
    """
    from workbench.evaluation import clinical
    from workbench.analysis import micronuclei as mnx
    from workbench.evaluation import tiny_matching as tm

    true_cells = mnx.cell_table(true_nuclei, true_mn)
    true_freq = mnx.mn_frequency(true_cells, true_mn, images=images)
    rows, crit_parts, freq_parts, clin_parts, sweep_parts = [], [], [], [], []
    for a in approaches or list(dict.fromkeys(pred["approach"])):
        p = pred[pred["approach"] == a].drop(columns="approach").reset_index(drop=True)
        thr = (count_thr or {}).get(a, prof.count_thr)
        crit = tm.prf_by_criterion(gt, p, tm.STANDARD, classes=[MN, NUCLEUS], score_thr=thr)
        crit_parts.append(crit.assign(approach=a))
        any_score = tm.prf(gt, p, tm.TINY_DEFAULTS, score_thr=prof.conf).set_index("class")
        sweep_parts.append(mn_sweep(gt, p, thresholds=SWEEP_THRESHOLDS).assign(approach=a))
        c = crit.set_index(["criterion", "class"])

        def get(criterion: str, cls: str, col: str) -> float:
            return float(c.loc[(criterion, cls), col]) if (criterion, cls) in c.index else float("nan")

        _, _, freq = mnx.per_cell_outputs(p, max_distance=prof.parent_distance, score_thr=thr, images=images)
        comp = mnx.frequency_comparison(freq, true_freq).assign(approach=a)
        freq_parts.append(comp)
        kept = p[p["score"] >= thr]
        counts = tm.clinical_counts(gt, kept, positive=MN, criteria=tm.TINY_DEFAULTS, images=images)
        rates = clinical.pass_fail(clinical.rates_from_counts(counts, n_boot=N_BOOT, seed=prof.seed), "micronuclei")
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
    return {"mn_study": pd.DataFrame(rows)[SUMMARY_COLUMNS], "mn_criteria": pd.concat(crit_parts, ignore_index=True),
            "mn_frequency": pd.concat(freq_parts, ignore_index=True),
            "mn_clinical": pd.concat(clin_parts, ignore_index=True),
            "mn_sweep": pd.concat(sweep_parts, ignore_index=True)}


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
    """Each approach against the issue's goal: MN recall >= 0.9 at precision >= 0.8 (centre <= 3 px),
    with how far each is below it (0 where reached)."""
    out = table[["approach", "mn_recall_centre3", "mn_precision_centre3"]].copy()
    out["recall_short"] = (recall - out["mn_recall_centre3"]).clip(lower=0)
    out["precision_short"] = (precision - out["mn_precision_centre3"]).clip(lower=0)
    out["meets_goal"] = (out["mn_recall_centre3"] >= recall) & (out["mn_precision_centre3"] >= precision)
    return out
