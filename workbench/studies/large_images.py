"""The large-image study (notebook 07): time against accuracy for ways of detecting cells in large images.

**Part 1, MoNuSeg.** Rows (one per method and setting), scored on whole held-out MoNuSeg
tiles (1000x1000 H&E, ~300-700 nuclei each) with a nuclei detector trained on
native-resolution patches of the other tiles:

* ``one-stage tiled`` – :func:`workbench.inference.tiled_inference.tiled_predict_image` at full
  resolution (batched tiles, cross-tile merge);
* ``two-stage`` – :func:`workbench.inference.twostage.two_stage_predict_image` with several settings
  (stage-1 scale, score threshold, margin);
* ``whole image`` – one ultralytics call on the whole image at ``imgsz`` (the image is
  resized to fit; at ``imgsz`` >= the image side this is native resolution).

**Part 2, micronuclei** (:mod:`workbench.studies.large_images_mn`): the same comparison on
MNFinder images upsampled ``scale`` x, with notebook 08's detectors; its tables and figure
carry the prefix ``micronuclei_``.

Columns: ``stage1_s`` / ``stage2_s`` / ``total_s`` (per image the median over ``repeats``
runs, after a warm-up, in this process, methods taking turns; summed over the test images), ``map50`` (workbench.evaluation.metrics, COCO
AP at IoU 0.5), ``recall`` and ``precision`` at ``count_thr`` and IoU 0.5, ``n_pred``
(boxes with score >= ``count_thr``, summed over the test images) against ``n_true``,
``speedup`` and ``map50_delta`` (points) against one-stage tiled, ``area_share`` (pixels run
through the full-resolution detector / image pixels: tiles overlap, so one-stage tiling
reads ~1.6x the image), the canvases used and ``cells_in_regions`` (share of true cells
inside a stage-2 region: an upper bound on the two-stage recall). One-pass rows have no
stage 1 (NaN); their single pass is reported as stage 2.

Cells: the MoNuSeg detector, then its ``timing`` cell; with part 2, notebook 08's native and
upsampled detector cells (run by :class:`workbench.studies.micronuclei.MicronucleiStudy` in its
work folder, so a run is reused only when it finished with the same config, else trained
there) and ``micronuclei_timing``. A timing cell returns its timings and predicted boxes as
rows; the tables are scored from them.

Held-out images are the vendored tiles the detector never saw: ``smoke`` trains on two
vendored tiles and tests on the third; ``cpu``/``full`` train on the 10 other tiles of
``../shared/data/monuseg`` and test on all three vendored ones (falling back to the smoke
split, with a note, when that folder is absent).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.core.tables import BOX_COLUMNS, MAX_DET, MAX_DET_LARGE
from workbench.data import datasets
from workbench.inference.twostage import TwoStageSettings
from workbench.studies import micronuclei
from workbench.studies.base import Cell, Method, Profile, Study, pick, register, time_methods

VENDORED_TILES = ("TCGA-B0-5698-01Z-00-DX1", "TCGA-B0-5710-01Z-00-DX1", "TCGA-CH-5767-01Z-00-DX1")
MONUSEG, MICRONUCLEI = "monuseg", "micronuclei"  # the study's two parts; part 2's tables carry "micronuclei_"
TIMING = "timing"  # the key of part 1's timing cell (part 2's: "micronuclei_timing")
MIN_VISIBILITY = 0.5  # a nucleus cut by a training patch's edge is kept when this share of it is inside


@dataclass(frozen=True)
class GuidedSetting:
    """One two-stage setting of part 2 (every other threshold as in notebook 08's profile)."""

    stage1: float | None = None  # None: nuclei from native-resolution tiles; f: one whole-image pass at f x the longer side
    margin: float = 20.0  # native px searched around each nucleus (99% of true MN lie within ~21-25 px)
    region_merge: float | None = 0.5  # IoS at which neighbourhoods merge (0: any overlap; None: never)
    canvas: int = 640  # stage-2 canvas side (px; the upsampled detector's imgsz there)

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
class LargeProfile(Profile):
    """Every setting of both parts, with its meaning and unit."""

    # part 1: MoNuSeg H&E tiles
    full_source: bool = True  # train on ../shared/data/monuseg (13 tiles) when present, else the 3 vendored
    model: str = "yolov8n.yaml"  # the nuclei detector's architecture
    epochs: int = 40  # training epochs of the nuclei detector
    patch: int = 256  # training patch = inference tile = detector imgsz (px, native resolution)
    patch_overlap: float = 0.25  # overlap of the training patches (share of the patch side)
    overlap: float = 0.2  # inference tile overlap (share of the tile side)
    train_batch: int = 16  # training batch (patches per step)
    batch: int = 16  # inference batch: tiles / canvases per detector call
    conf: float = 0.01  # detector score floor (low, for mAP)
    count_thr: float = 0.25  # score threshold for recall, precision and counts
    repeats: int = 3  # timed passes over the test images (median per image), after one warm-up pass
    whole_sizes: tuple[int, ...] = (512, 1024)  # imgsz (px) of the whole-image passes
    two_stage: tuple[TwoStageSettings, ...] = field(default_factory=tuple)  # the two-stage settings compared
    seed: int = 0  # seed of the patches' train/val split and of training
    # part 2: MNFinder micronucleus images at notebook 08's scale, with notebook 08's detectors
    mn_detectors: str = "smoke"  # notebook 08's profile whose native and upsampled detectors part 2 uses
    mn_repeats: int = 3  # timed passes over the held-out MNFinder images, after one warm-up pass
    mn_guided: tuple[GuidedSetting, ...] = (GuidedSetting(),)  # the nucleus-guided two-stage settings compared
    mn_whole_scales: tuple[float, ...] = (1.0,)  # whole-image passes at imgsz = scale x the longer side (x)


def _two_stage_grid() -> tuple[TwoStageSettings, ...]:
    """Stage-1 scale x proposal threshold x margin x region merging (canvas = the profile's patch)."""
    b = TwoStageSettings()
    return (replace(b, coarse_scale=0.5, region_conf=0.25, margin=12, region_merge=0.0),  # union of overlaps
            replace(b, coarse_scale=0.5, region_conf=0.25, margin=12, region_merge=None),  # a crop per cell
            replace(b, coarse_scale=0.5, region_conf=0.1, margin=16, region_merge=0.5),
            replace(b, coarse_scale=0.25, region_conf=0.25, margin=12, region_merge=None),
            replace(b, coarse_scale=0.25, region_conf=0.1, margin=16, region_merge=0.5),
            replace(b, coarse_scale=0.25, region_conf=0.05, margin=24, region_merge=0.0))


def _guided_grid() -> tuple[GuidedSetting, ...]:
    """Part 2: stage 1 (tiled vs one cheap pass) x margin x neighbourhood merging x canvas size."""
    b = GuidedSetting()
    whole = replace(b, stage1=1.0)
    return (b, whole, replace(b, stage1=0.75), replace(whole, margin=12), replace(whole, region_merge=0.0),
            replace(whole, region_merge=None), replace(whole, canvas=320), replace(whole, margin=12, canvas=320))


PROFILES = {
    # CI: proves the pipeline on the 3 vendored tiles in a couple of minutes on 2 CPU cores;
    # part 2 with notebook 08's smoke detectors (1 epoch): learns nothing
    "smoke": LargeProfile("smoke", full_source=False, epochs=2, repeats=1, whole_sizes=(1024,),
                          two_stage=_two_stage_grid()[:1], mn_detectors="smoke", mn_repeats=1,
                          mn_guided=(GuidedSetting(stage1=1.0, canvas=320),)),
    # a real CPU study: detector trained on 10 shared tiles (~25 min), 3 test tiles; part 2 with
    # notebook 08's cpu detectors (reused when notebook 08 ran with the same config)
    "cpu": LargeProfile("cpu", epochs=40, repeats=5, two_stage=_two_stage_grid(), mn_detectors="cpu",
                           mn_repeats=3, mn_guided=_guided_grid(), mn_whole_scales=(1.0, 3.0)),
    # a GPU: longer training
    "full": LargeProfile("full", epochs=200, repeats=5, two_stage=_two_stage_grid(), mn_detectors="full",
                         mn_repeats=5, mn_guided=_guided_grid(), mn_whole_scales=(1.0, 3.0)),
}


# ----------------------------------------------------------------------------- data

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


def prepare_patches(prof: LargeProfile, work: Path, base: Path, test_ids: Sequence[str]) -> Path:
    """Native-resolution training patches of ``base``'s tiles (8:2 train/val by patch); patches
    of the test tiles ``test_ids`` are marked ``test`` and never trained or validated on."""
    from workbench.data.canonical import read_classes, read_meta, save_meta
    from workbench.data.splits import assign_splits
    from workbench.data.tiling import tile_dataset

    out = work / "data" / f"monuseg_patches{prof.patch}{'_full' if base.name.endswith('-full') else ''}"
    if (out / "meta.csv").exists():
        return out
    tile_dataset(base, out, tile=prof.patch, overlap=prof.patch_overlap, min_visibility=MIN_VISIBILITY, overwrite=True)
    meta = read_meta(out)
    is_test = meta["tile_of"].astype(str).isin(list(test_ids))
    split = pd.Series("test", index=meta.index, dtype=str)
    split[~is_test] = assign_splits(meta[~is_test].drop(columns="split"), ratios=(8, 2), seed=prof.seed,
                                    keep_existing=False, exact=True)  # derived patches: exact counts
    save_meta(out, meta.assign(split=split), read_classes(out))
    return out


def load_test_images(base: Path, test_ids: Sequence[str], normalisation=None) -> dict[str, np.ndarray]:
    """8-bit RGB test images by id (mapped with ``normalisation``, the detector's recorded one)."""
    from workbench.data.canonical import read_meta
    from workbench.core.images import read_image, to_uint8

    meta = read_meta(base).set_index("image_id")
    kwargs = {"norm": normalisation} if normalisation is not None else {}
    return {i: to_uint8(read_image(base / meta.at[i, "file"])[0], **kwargs)[0] for i in test_ids}


def load_truth(base: Path, test_ids: Sequence[str]) -> pd.DataFrame:
    """The ground-truth boxes of the test images."""
    from workbench.evaluation.files import load_ground_truth

    gt = load_ground_truth(base).boxes
    return gt[gt["image"].isin(list(test_ids))].reset_index(drop=True)


# ----------------------------------------------------------------------------- the study

ONE_STAGE, TWO_STAGE, WHOLE = "one-stage tiled", "two-stage", "whole image"
TABLE_COLUMNS = ["method", "setting", "stage1_s", "stage2_s", "total_s", "speedup", "map50", "map50_delta",
                 "recall", "precision", "n_pred", "n_true", "count_mae", "area_share", "canvases", "cells_in_regions"]
PER_IMAGE_COLUMNS = ["method", "setting", "image", "stage1_s", "stage2_s", "total_s", "area_share", "canvases",
                     "regions", "cells_in_regions"]
BOX_ROW_COLUMNS = [*BOX_COLUMNS, "image", "method", "setting"]
Detector = Callable[[Any, int], Any]  # (detector, imgsz) -> the same weights run at that imgsz


@register
class LargeImagesStudy(Study):
    """Tiled vs two-stage vs whole image, time against accuracy; part 2 on micronucleus images."""

    name = "07_large_images"
    profiles = PROFILES
    default_dataset = "monuseg"
    headline_tables = ("large_images", "micronuclei_large_images")
    varies = False  # tables() pools every cell's boxes per approach: one run per approach
    profile: LargeProfile

    def __init__(self, dataset: str | Path | None = None, *, micronuclei: bool = True,
                 work_dir: str | Path | None = None, mn_work_dir: str | Path | None = None, **kwargs: Any) -> None:
        """``micronuclei``: run part 2. ``mn_work_dir``: where notebook 08's detectors are found or
        trained (default ``work_dir/micronuclei`` when ``work_dir`` is given, else notebook 08's own)."""
        if dataset is not None and str(dataset) != self.default_dataset:
            raise ValueError(f"{self.name} studies {self.default_dataset} (and MNFinder) only, got {dataset!r}")
        super().__init__(self.default_dataset, work_dir=work_dir, **kwargs)
        self.micronuclei = bool(micronuclei)
        self._mn_work_dir = mn_work_dir or (Path(work_dir) / MICRONUCLEI if work_dir else None)

    @cached_property
    def mn(self) -> micronuclei.MicronucleiStudy:
        """Notebook 08's study with this profile's detector profile, for part 2's two detectors."""
        prof = replace(pick(self.profile.mn_detectors, micronuclei.PROFILES), approaches=(micronuclei.GUIDED,))
        return micronuclei.MicronucleiStudy(profile=prof, work_dir=self._mn_work_dir, device=self.device, log=self.log)

    def study_args(self) -> dict[str, Any]:
        return {**super().study_args(), "micronuclei": self.micronuclei, "mn_work_dir": str(self.mn.work_dir)}

    @property
    def detector_run(self) -> Path:
        """The nuclei detector's run folder (named by its cell's key)."""
        p = self.profile
        return self.work_dir / "runs" / f"nuclei_{Path(p.model).stem}_p{p.patch}_s{p.seed}"

    def prepare(self) -> None:
        p = self.profile
        self.base, self.train_ids, self.test_ids, self.note = split_images(p)
        self.patches = prepare_patches(p, self.work_dir, self.base, self.test_ids)
        self.gt = load_truth(self.base, self.test_ids)
        if self.micronuclei:
            self.mn.prepare()

    def cells(self) -> list[Cell]:
        det = self.cell(self.detector_run.name, part=MONUSEG)
        cells = [det, self.cell(TIMING, needs=[det.key], part=MONUSEG)]
        if self.micronuclei:  # notebook 08's own detector cells, so its reuse rule and training apply
            dets = [c for c in self.mn.cells() if c.key != micronuclei.EVALUATE]
            keys = [f"{MICRONUCLEI}_{c.key}" for c in dets]
            cells += [self.cell(k, part=MICRONUCLEI, detector_cell=c.to_dict()) for k, c in zip(keys, dets)]
            cells.append(self.cell(f"{MICRONUCLEI}_{TIMING}", needs=keys, part=MICRONUCLEI))
        return cells

    def run_cell(self, cell: Cell) -> list[dict[str, Any]]:
        if "detector_cell" in cell.config:
            return self.mn.run_cell(Cell.from_dict(cell.config["detector_cell"]))
        if cell.key == f"{MICRONUCLEI}_{TIMING}":
            from workbench.studies import large_images_mn

            return large_images_mn.measure(self.mn, self.profile, log=self.log)
        if cell.key == TIMING:
            return self._time_monuseg()
        run = self.train_detector()
        return [{"kind": "detector", "part": MONUSEG, "run_id": run.name}]

    def train_detector(self) -> Path:
        """The nuclei detector: reused when finished with this config, else trained. Returns its run."""
        p = self.profile
        return self.train_or_reuse(self.detector_run, self.patches, model=p.model, epochs=p.epochs, imgsz=p.patch,
                                   batch=p.train_batch, seed=p.seed, max_det=MAX_DET)

    def _time_monuseg(self) -> list[dict[str, Any]]:
        from workbench.core.device import pick_device
        from workbench.inference.tiled_inference import YoloDetector

        p, dev = self.profile, pick_device(self.device)
        det = YoloDetector(self.detector_run, conf=p.conf, imgsz=p.patch, max_det=MAX_DET, device=dev)

        def detector(base: YoloDetector, imgsz: int) -> YoloDetector:  # a whole image holds many tiles' boxes
            return YoloDetector(base.model, conf=p.conf, imgsz=imgsz, max_det=MAX_DET_LARGE, device=dev)

        images = load_test_images(self.base, self.test_ids, det.normalisation)
        side = max(max(img.shape[:2]) for img in images.values())
        return timed_rows(monuseg_methods(p, det, detector, side=side), images, self.gt, repeats=p.repeats,
                          log=self.log, part=MONUSEG)

    def tables(self, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
        p = self.profile
        per_image = micronuclei.measured(rows, micronuclei.TIMING, PER_IMAGE_COLUMNS, part=MONUSEG)
        boxes = micronuclei.measured(rows, micronuclei.BOXES, BOX_ROW_COLUMNS, part=MONUSEG)
        tables = {"large_images": score_methods(per_image, boxes, self.gt, count_thr=p.count_thr),
                  "per_image": per_image}
        if self.micronuclei:
            from workbench.studies import large_images_mn

            per_image = micronuclei.measured(rows, micronuclei.TIMING, PER_IMAGE_COLUMNS, part=MICRONUCLEI)
            boxes = micronuclei.measured(rows, micronuclei.BOXES, BOX_ROW_COLUMNS, part=MICRONUCLEI)
            tables[f"{MICRONUCLEI}_large_images"] = large_images_mn.score(per_image, boxes, self.mn.gt,
                                                                         count_thr=self.mn.profile.count_thr)
            tables[f"{MICRONUCLEI}_per_image"] = per_image
        return tables

    def figures(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
        figs = {"time_vs_map50": time_vs_accuracy(tables["large_images"])}
        if self.micronuclei:
            from workbench.studies.large_images_mn import TITLE

            figs[f"{MICRONUCLEI}_time_vs_map50"] = time_vs_accuracy(tables[f"{MICRONUCLEI}_large_images"], title=TITLE)
        return figs

    def caption(self, name: str, tables: Mapping[str, pd.DataFrame]) -> str:
        from workbench.core.device import describe_device, device_name, pick_device

        p, on = self.profile, device_name(describe_device(pick_device(self.device)))
        if name.startswith(MICRONUCLEI):
            from workbench.studies.large_images_mn import caption

            return caption(self.mn, p, device=on)
        run = self.detector_run
        return (f"Time vs mAP50 on {len(self.test_ids)} held-out MoNuSeg tiles ({len(self.gt)} nuclei), detector "
                f"{run.name} (seed {p.seed}, data {micronuclei.run_fingerprint(run)}) trained on {len(self.train_ids)} "
                f"other tiles; profile {p.name}, median of {p.repeats} runs on {on}. {self.note}").strip()

    def settings(self) -> dict[str, Any]:
        run = self.detector_run
        out = {"run": str(run), "run_id": run.name, "train_images": self.train_ids, "test_images": self.test_ids,
               "n_true": int(len(self.gt)), "note": self.note, "dataset_fingerprint": micronuclei.run_fingerprint(run),
               "work_dir": str(self.work_dir), "micronuclei": None}
        if self.micronuclei:
            out["micronuclei"] = {"detector_profile": self.mn.profile.to_dict(), **self.mn.settings()}
        return out


def monuseg_methods(prof: LargeProfile, det: Any, detector: Detector, *, side: int) -> list[Method]:
    """Part 1's rows as ``(method, setting, fn)``; ``det`` is the nuclei detector at its training
    size, ``detector(det, imgsz)`` the same weights at another size; ``side`` the longest test
    image side (px)."""
    from workbench.inference.tiled_inference import TileSettings, tiled_predict_image
    from workbench.inference.twostage import two_stage_predict_image

    tiles = TileSettings(tile=prof.patch, overlap=prof.overlap, batch=prof.batch)

    def one_stage(img):
        return tiled_predict_image(img, det, settings=tiles), {"area_share": tiled_share(img.shape[:2], tiles)}

    methods: list[Method] = [
        (ONE_STAGE, f"tile {prof.patch}, overlap {prof.overlap:g}, batch {prof.batch}", one_stage)]
    for s in prof.two_stage:
        # stage 1 sees the whole small image in one pass (one tile, native pixels of the small image)
        coarse_tile = imgsz_for(side, s.coarse_scale)
        s = replace(s, canvas=prof.patch, coarse_tile=coarse_tile, batch=prof.batch, tile_overlap=prof.overlap)
        coarse = detector(det, coarse_tile)
        methods.append((TWO_STAGE, s.label(),
                        lambda img, s=s, coarse=coarse: two_stage_predict_image(img, coarse, det, settings=s)))
    for size in prof.whole_sizes:
        whole = detector(det, size)
        methods.append((WHOLE, f"imgsz {size}", lambda img, whole=whole: (whole([img])[0], {})))
    return methods


def timed_rows(methods: list[Method], images: dict[str, np.ndarray], truth: pd.DataFrame, *, repeats: int,
               log: Callable[[str], None], part: str) -> list[dict[str, Any]]:
    """Time ``methods`` on ``images`` (:func:`workbench.studies.base.time_methods`), add each
    row's ``cells_in_regions`` against ``truth`` and return the timing cell's rows."""
    per_image, boxes = time_methods(methods, images, repeats=repeats, log=log)
    per_image["cells_in_regions"] = [cells_covered(truth[truth["image"] == i], r)
                                     for i, r in zip(per_image["image"], per_image.pop("region_boxes"))]
    return micronuclei.measurement_rows(per_image[PER_IMAGE_COLUMNS], boxes[BOX_ROW_COLUMNS], part=part)


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
    setting; the numbers are keyed beside the axes (settings crowd each other otherwise). A
    ``matplotlib.figure.Figure`` (no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
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
