"""Dense detector inference: image -> per-pixel probabilities -> objects -> the prediction table.

* :func:`probabilities` runs the network of :mod:`workbench.models.dense` over a whole image in
  overlapping windows (blended with linear ramps), giving background / nucleus / MN
  probabilities per pixel; with ``views`` > 1 it averages them over rotated and mirrored
  copies of the image (test-time augmentation, :func:`dihedral`), mapped back. The number of
  views is part of the tuned operating point (``Thresholds.views``): thresholds tuned on
  averaged maps are applied to averaged maps.
* Post-processing is pure NumPy/SciPy over those maps (:func:`postprocess`): MN are the
  connected components (4-connected, as the masks importer counts them) of ``p_mn >=
  mn_prob`` with at least ``mn_min_size`` pixels; a component with two distance-transform
  peaks deeper than ``split_depth`` px (two touching MN) is cut by a watershed. Nuclei are the
  components of ``p_nucleus >= nucleus_prob`` with holes filled (a MN inside a nucleus does
  not punch a hole); the 1 px lines that part touching nuclei in the training targets are
  given back to one of the two.
  Each object's score is its highest probability, so a score threshold above ``mn_prob``
  ranks objects for PR curves and the score sweep. Boxes are pixel edges (pixel c spans
  c..c+1), as the importer writes them.
* :func:`tune_thresholds` picks ``mn_prob`` / ``mn_min_size`` (most MN recall at precision >=
  ``min_precision``, centre <= 3 px; else best F1) and ``nucleus_prob`` (best F1 at IoU 0.5)
  on the run's validation images (whole acquisition sets of the *training* images; images of
  any other split are refused) and writes ``thresholds.json`` and ``val_sweep.csv`` into the
  run folder, like StarDist's ``thresholds.json``; :class:`DenseDetector` reloads them.

The output is the usual prediction table (``image, x1, y1, x2, y2, class, score``), so every
evaluation, the micronucleus analysis, overlays and the napari inspector read it unchanged.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from workbench.core.tables import BOX_COLUMNS, PREDICTION_COLUMNS, utc_now

THRESHOLDS_FILE = "thresholds.json"
SWEEP_FILE = "val_sweep.csv"
MN_PROB_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MN_SIZE_GRID = (1, 2, 3, 4, 6, 9)
NUCLEUS_PROB_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
SWEEP_COLUMNS = ["class", "prob", "min_size", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1"]
VIEWS = (1, 2, 4, 8)  # dihedral views: identity; + its mirror; + the half turn of both; + the quarter turns


@dataclass(frozen=True)
class Thresholds:
    """Post-processing settings (see the module docstring); tuned ones live in thresholds.json."""

    mn_prob: float = 0.5  # MN probability from which a pixel belongs to a MN
    mn_min_size: int = 3  # px: smaller MN components are dropped
    nucleus_prob: float = 0.5  # nucleus probability from which a pixel belongs to a nucleus
    nucleus_min_size: int = 40  # px: smaller nucleus components are dropped
    split_depth: float | None = 1.0  # px of distance-transform peak depth that splits a MN component; None: never
    connectivity: int = 4  # 4 (the importer's and MNFinder's count) or 8
    views: int = 1  # dihedral views averaged per image (1: none; 2, 4 or 8: test-time augmentation)

    def __post_init__(self) -> None:
        if not (0 < self.mn_prob < 1 and 0 < self.nucleus_prob < 1):
            raise ValueError(f"probability thresholds must lie in (0, 1), got {self.mn_prob}, {self.nucleus_prob}")
        if self.mn_min_size < 1 or self.nucleus_min_size < 1 or self.connectivity not in (4, 8):
            raise ValueError("minimum sizes must be >= 1 px and connectivity 4 or 8")
        if self.views not in VIEWS:
            raise ValueError(f"views must be one of {VIEWS}, got {self.views}")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Thresholds":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


# ----------------------------------------------------------------------------- probabilities

def window_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``tile`` px covering ``length`` px, overlapping by >= ``overlap``."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    return [*range(0, length - tile, step), length - tile]


def ramp(n: int, overlap: int) -> np.ndarray:
    """Blending weights along a window side: rising linearly over ``overlap`` px at both ends."""
    i = np.arange(n, dtype=np.float32)
    return np.clip(np.minimum(i + 1, n - i) / max(overlap, 1), 1e-3, 1.0)


def dihedral(array: np.ndarray, view: int, *, axes: tuple[int, int] = (0, 1), inverse: bool = False) -> np.ndarray:
    """View ``view`` (0-7) of the dihedral group on two ``axes`` of ``array`` (a mirror of the
    second axis and/or quarter turns); ``inverse=True`` maps a view back. Views 0-1 are the
    identity and the mirror, 2-3 their half turns (the shape is kept), 4-7 the quarter turns, so
    the first 1, 2, 4 or 8 views are the subsets :data:`VIEWS` allows."""
    order = (0, 4, 2, 6, 1, 5, 3, 7)[view]  # code: quarter turns (order % 4), mirrored when order >= 4
    turns, mirror = order % 4, order >= 4
    if not inverse:
        out = np.flip(array, axis=axes[1]) if mirror else array
        return np.rot90(out, turns, axes=axes)
    out = np.rot90(array, -turns, axes=axes)
    return np.flip(out, axis=axes[1]) if mirror else out


def probabilities(model: Any, image: np.ndarray, *, tile: int, overlap: int, multiple: int, device: str = "cpu",
                  batch: int = 4, views: int = 1) -> np.ndarray:
    """Per-pixel class probabilities (C, H, W) of one 8-bit image (H, W[, C]) from overlapping
    windows of ``tile`` px (reflect-padded to a ``multiple`` of the network's stride), averaged
    over ``views`` dihedral views of the image (:func:`dihedral`, each mapped back)."""
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {views}")
    total = None
    for v in range(views):
        p = _window_probabilities(model, np.ascontiguousarray(dihedral(image, v)), tile=tile, overlap=overlap,
                                  multiple=multiple, device=device, batch=batch)
        p = dihedral(p, v, axes=(1, 2), inverse=True)
        total = p if total is None else total + p
    return np.ascontiguousarray(total / views)


def _window_probabilities(model: Any, image: np.ndarray, *, tile: int, overlap: int, multiple: int, device: str,
                          batch: int) -> np.ndarray:
    import torch

    from workbench.core.device import all_cpu_threads
    from workbench.models.dense_data import to_input

    h, w = image.shape[:2]
    th, tw = (min(tile, math.ceil(n / multiple) * multiple) for n in (h, w))
    pad = ((0, max(th - h, 0)), (0, max(tw - w, 0))) + ((0, 0),) * (image.ndim - 2)
    padded = np.pad(image, pad, mode="reflect") if any(p[1] for p in pad) else image
    H, W = padded.shape[:2]
    weight = np.outer(ramp(th, overlap), ramp(tw, overlap))
    acc, norm = None, np.zeros((H, W), np.float32)
    starts = [(y, x) for y in window_starts(H, th, overlap) for x in window_starts(W, tw, overlap)]
    with torch.no_grad(), all_cpu_threads(device):
        for s in range(0, len(starts), batch):
            part = starts[s:s + batch]
            x = to_input(np.stack([padded[y:y + th, x0:x0 + tw] for y, x0 in part]))
            prob = model(torch.from_numpy(x).to(device)).softmax(1).float().cpu().numpy()
            if acc is None:
                acc = np.zeros((prob.shape[1], H, W), np.float32)
            for (y, x0), p in zip(part, prob):
                acc[:, y:y + th, x0:x0 + tw] += p * weight
                norm[y:y + th, x0:x0 + tw] += weight
    return acc[:, :h, :w] / norm[:h, :w]


# ----------------------------------------------------------------------------- post-processing

def _structure(connectivity: int) -> np.ndarray:
    return ndi.generate_binary_structure(2, 1 if connectivity == 4 else 2)


def components(mask: np.ndarray, *, min_size: int = 1, connectivity: int = 4) -> np.ndarray:
    """Label image (0 background, 1..n) of the components of ``mask`` with >= ``min_size`` px."""
    return drop_small(ndi.label(mask, structure=_structure(connectivity))[0], min_size)


def drop_small(lab: np.ndarray, min_size: int) -> np.ndarray:
    """``lab`` without labels of fewer than ``min_size`` px, renumbered 1..n."""
    if min_size <= 1 or not lab.max():
        return lab
    small = np.bincount(lab.ravel()) < min_size
    small[0] = False
    out = lab.copy()
    out[small[lab]] = 0
    return _sequential(out)


def _sequential(lab: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(lab)[0]


def split_touching(lab: np.ndarray, *, depth: float | None = 1.0, connectivity: int = 4) -> np.ndarray:
    """Cut components that hold two or more distance-transform peaks deeper than ``depth`` px
    (touching round objects joined by a neck) along the watershed of the distance map;
    components with one peak (elongated ones included) are kept as they are."""
    if depth is None or not lab.max():
        return lab
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(lab > 0)
    peaks = ndi.label(h_maxima(dist, depth), structure=_structure(8))[0]
    pairs = np.unique(np.stack([lab[peaks > 0], peaks[peaks > 0]]), axis=1)
    multi = np.bincount(pairs[0], minlength=int(lab.max()) + 1) >= 2
    if not multi.any():
        return lab
    cut = watershed(-dist, peaks, mask=multi[lab], connectivity=1 if connectivity == 4 else 2)
    out = lab.copy()
    sel = multi[lab] & (cut > 0)
    out[sel] = cut[sel] + lab.max()
    return _sequential(out)


def objects_table(lab: np.ndarray, prob: np.ndarray, cls: str) -> pd.DataFrame:
    """One box per label of ``lab`` (pixel edges), class ``cls``, score = highest ``prob`` inside,
    and ``area`` (px)."""
    n = int(lab.max())
    if not n:
        return pd.DataFrame({**{c: pd.Series(dtype=float) for c in ("x1", "y1", "x2", "y2")},
                             "class": pd.Series(dtype=str), "score": pd.Series(dtype=float),
                             "area": pd.Series(dtype=int)})
    slices = ndi.find_objects(lab)
    index = np.arange(1, n + 1)
    return pd.DataFrame({"x1": [float(s[1].start) for s in slices], "y1": [float(s[0].start) for s in slices],
                         "x2": [float(s[1].stop) for s in slices], "y2": [float(s[0].stop) for s in slices],
                         "class": cls, "score": np.asarray(ndi.maximum(prob, lab, index), dtype=float),
                         "area": np.bincount(lab.ravel(), minlength=n + 1)[1:]})


def mn_labels(p_mn: np.ndarray, th: Thresholds) -> np.ndarray:
    """MN instances: components of ``p_mn >= mn_prob``, touching ones split, >= ``mn_min_size`` px."""
    lab = components(p_mn >= th.mn_prob, connectivity=th.connectivity)
    return drop_small(split_touching(lab, depth=th.split_depth, connectivity=th.connectivity), th.mn_min_size)


def nucleus_labels(p_nucleus: np.ndarray, th: Thresholds) -> np.ndarray:
    """Nucleus instances: components of ``p_nucleus >= nucleus_prob`` with holes filled
    (>= ``nucleus_min_size`` px); the 1 px lines that part touching nuclei in the training
    targets are given back to a neighbour (:func:`close_parting_lines`)."""
    mask = ndi.binary_fill_holes(p_nucleus >= th.nucleus_prob)
    return close_parting_lines(components(mask, min_size=th.nucleus_min_size, connectivity=th.connectivity))


def close_parting_lines(lab: np.ndarray) -> np.ndarray:
    """Background pixels with 4-neighbours of two different labels join the larger label;
    every other pixel keeps its label (isolated objects do not grow)."""
    cross = _structure(4)
    big = np.iinfo(lab.dtype).max
    high = ndi.maximum_filter(lab, footprint=cross)
    low = ndi.minimum_filter(np.where(lab > 0, lab, big), footprint=cross)
    line = (lab == 0) & (high > 0) & (low < big) & (low != high)
    out = lab.copy()
    out[line] = high[line]
    return out


def postprocess(probs: np.ndarray, th: Thresholds = Thresholds(), *, mn_class: str = "mn",
                nucleus_class: str = "nucleus") -> pd.DataFrame:
    """Boxes (``x1 y1 x2 y2 class score``) of the MN and nuclei in class probability maps
    (C, H, W) ordered as :data:`workbench.models.dense.CLASSES`."""
    from workbench.models.dense_data import MN, NUCLEUS

    if probs.ndim != 3 or probs.shape[0] <= max(MN, NUCLEUS):
        raise ValueError(f"probabilities must be (classes, H, W) with >= {max(MN, NUCLEUS) + 1} classes, got {probs.shape}")
    mn = objects_table(mn_labels(probs[MN], th), probs[MN], mn_class)
    nuclei = objects_table(nucleus_labels(probs[NUCLEUS], th), probs[NUCLEUS], nucleus_class)
    return pd.concat([t for t in (nuclei, mn) if len(t)] or [nuclei], ignore_index=True)[BOX_COLUMNS]


# ----------------------------------------------------------------------------- the detector

class DenseDetector:
    """A dense run as a callable: ``detector(8-bit image) -> box table`` at the run's tuned
    thresholds (``thresholds.json``; defaults with a note when the run was never tuned)."""

    def __init__(self, run: str | Path, *, device: str | None = None, thresholds: Thresholds | None = None,
                 which: str = "best", batch: int = 4) -> None:
        from workbench.core.device import pick_device
        from workbench.models.dense import DenseConfig, load_dense, recorded_normalisation

        self.run = Path(run)
        self.device = pick_device(device)
        self.model, self.record = load_dense(self.run, which=which, device=self.device)
        self.config = DenseConfig.from_dict(self.record["config"]["dense"])
        tuned, self.tuning = read_thresholds(self.run)
        self.thresholds = thresholds or tuned
        self.normalisation = recorded_normalisation(self.record)
        self.in_channels = int(next(p for p in self.model.parameters() if p.ndim == 4).shape[1])  # first conv
        self.batch = batch

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """(C, H, W) class probabilities of one 8-bit image (grey or RGB, matched to the network)."""
        from workbench.inference.tiled_inference import check_image

        img = check_image(image, "image")
        if img.ndim == 3 and self.in_channels == 1:
            img = img.mean(axis=2).round().astype(np.uint8)
        elif img.ndim == 2 and self.in_channels == 3:
            img = np.repeat(img[..., None], 3, axis=2)
        c = self.config
        return probabilities(self.model, img, tile=c.tile, overlap=c.tile_overlap, multiple=2 ** c.encoder_depth,
                             device=self.device, batch=self.batch, views=self.thresholds.views)

    def __call__(self, image: np.ndarray) -> pd.DataFrame:
        return postprocess(self.probabilities(image), self.thresholds, mn_class=self.config.mn_class,
                           nucleus_class=self.config.nucleus_class)


def predict_dense(run: str | Path, source: Any, *, split: str | None = None, device: str | None = None,
                  thresholds: Thresholds | None = None) -> pd.DataFrame:
    """The prediction table of a dense run over a source (canonical dataset, folder or image
    file; 16-bit images mapped with the run's training normalisation)."""
    from workbench.inference.tiled_inference import read_images

    det = DenseDetector(run, device=device, thresholds=thresholds)
    parts = [det(arr).assign(image=name) for name, arr in read_images(source, normalisation=det.normalisation,
                                                                       split=split)]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PREDICTION_COLUMNS)
    return table[PREDICTION_COLUMNS]


# ----------------------------------------------------------------------------- tuning

def read_thresholds(run_dir: str | Path) -> tuple[Thresholds, dict[str, Any]]:
    """(thresholds, the whole thresholds.json) of a run; defaults and ``{"tuned": False}`` if absent."""
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return Thresholds(), {"tuned": False, "note": f"no {THRESHOLDS_FILE}: default thresholds"}
    doc = json.loads(path.read_text(encoding="utf-8"))
    return Thresholds.from_dict(doc.get("thresholds", {})), doc


def sweep(probs: Mapping[str, np.ndarray], gt: pd.DataFrame, *, base: Thresholds = Thresholds(),
          mn_grid: Sequence[float] = MN_PROB_GRID, size_grid: Sequence[int] = MN_SIZE_GRID,
          nucleus_grid: Sequence[float] = NUCLEUS_PROB_GRID, mn_class: str = "mn",
          nucleus_class: str = "nucleus") -> pd.DataFrame:
    """P/R/F1 of MN (centre <= 3 px) per (mn_prob, min size) and of nuclei (IoU 0.5) per
    nucleus_prob, over the images of ``probs`` (id -> (C, H, W)) against ``gt`` boxes."""
    from workbench.evaluation import tiny_matching as tm
    from workbench.models.dense_data import MN, NUCLEUS

    rows = []
    for t in mn_grid:
        th = replace(base, mn_prob=float(t), mn_min_size=1)
        found = pd.concat([objects_table(mn_labels(p[MN], th), p[MN], mn_class).assign(image=i)
                           for i, p in probs.items()], ignore_index=True)
        for size in size_grid:
            rows.append({"class": mn_class, "prob": float(t), "min_size": int(size),
                         **_prf(gt, found[found["area"] >= size], mn_class, tm.CENTRE3)})
    for t in nucleus_grid:
        th = replace(base, nucleus_prob=float(t))
        found = pd.concat([objects_table(nucleus_labels(p[NUCLEUS], th), p[NUCLEUS], nucleus_class).assign(image=i)
                           for i, p in probs.items()], ignore_index=True)
        rows.append({"class": nucleus_class, "prob": float(t), "min_size": base.nucleus_min_size,
                     **_prf(gt, found, nucleus_class, tm.IOU50)})
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def _prf(gt: pd.DataFrame, pred: pd.DataFrame, cls: str, criterion: Any) -> dict[str, float]:
    from workbench.evaluation import tiny_matching as tm

    g = gt[gt["class"] == cls]
    p = pred.drop(columns="area", errors="ignore")
    if p.empty:
        return {"n_pred": 0, "tp": 0, "fp": 0, "fn": len(g), "precision": float("nan"),
                "recall": 0.0 if len(g) else float("nan"), "f1": 0.0 if len(g) else float("nan")}
    r = tm.prf(g, p, {cls: criterion}, score_thr=0.0).set_index("class")
    return {k: (r.loc[cls, k] if cls in r.index else 0) for k in ("n_pred", "tp", "fp", "fn", "precision", "recall",
                                                                   "f1")}


def choose(table: pd.DataFrame, *, min_precision: float = 0.8) -> pd.Series:
    """The operating point of one class's sweep rows: the highest recall among rows with
    precision >= ``min_precision`` (ties: higher precision, then the lower threshold and size,
    which keep more recall on unseen images), else the highest F1."""
    if table.empty:
        raise ValueError("empty sweep: nothing to choose from")
    ok = table[table["precision"] >= min_precision]
    if len(ok):
        return ok.sort_values(["recall", "precision", "prob", "min_size"], ascending=[False, False, True, True],
                              kind="stable").iloc[0]
    return table.sort_values(["f1", "prob", "min_size"], ascending=[False, True, True], kind="stable",
                             na_position="last").iloc[0]


def tune(probs: Mapping[str, np.ndarray], gt: pd.DataFrame, *, base: Thresholds = Thresholds(),
         min_precision: float = 0.8, mn_class: str = "mn", nucleus_class: str = "nucleus",
         **grids: Sequence[float]) -> tuple[Thresholds, pd.DataFrame, dict[str, Any]]:
    """(tuned thresholds, the sweep, what was chosen and why) from validation probabilities (pure)."""
    table = sweep(probs, gt, base=base, mn_class=mn_class, nucleus_class=nucleus_class, **grids)
    mn = choose(table[table["class"] == mn_class], min_precision=min_precision)
    nuc = table[table["class"] == nucleus_class]
    nuc_best = nuc.sort_values(["f1", "prob"], ascending=False, kind="stable", na_position="last").iloc[0]
    th = replace(base, mn_prob=float(mn["prob"]), mn_min_size=int(mn["min_size"]), nucleus_prob=float(nuc_best["prob"]))
    reached = bool(mn["precision"] >= min_precision)
    summary = {"rule": (f"MN: highest recall at precision >= {min_precision:g} (centre <= 3 px)" if reached else
                        f"MN: no setting reached precision {min_precision:g} on validation: highest F1 (centre <= 3 px)")
               + "; nuclei: highest F1 (IoU 0.5)",
               "mn_val": {k: _plain(mn[k]) for k in ("precision", "recall", "f1", "n_pred", "tp", "fp", "fn")},
               "nucleus_val": {k: _plain(nuc_best[k]) for k in ("precision", "recall", "f1")}}
    return th, table, summary


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def tuning_images(record: Mapping[str, Any]) -> list[str]:
    """The run's validation images, checked to belong to its training split: thresholds are
    never tuned on held-out images (``ValueError`` naming any that are not)."""
    from workbench.data.canonical import read_meta

    ds = record.get("dataset") or {}
    ids = [str(i) for i in ds.get("val_images") or []]
    if not ids:
        raise ValueError(f"run {record.get('run_id')}: no validation images recorded; cannot tune thresholds")
    split = read_meta(ds["path"]).set_index("image_id")["split"].astype(str)
    wrong = [i for i in ids if split.get(i) != ds.get("train_split", "train")]
    if wrong:
        raise ValueError(f"run {record.get('run_id')}: validation image(s) {wrong[:5]} are not in split "
                         f"{ds.get('train_split', 'train')!r}; thresholds are tuned on training images only")
    overlap = sorted(set(ids) & set(ds.get("train_images") or []))
    if overlap:
        raise ValueError(f"run {record.get('run_id')}: image(s) {overlap[:5]} are both trained and validated on")
    return ids


def tune_thresholds(run_dir: str | Path, *, device: str | None = None, min_precision: float = 0.8,
                    base: Thresholds = Thresholds(), **grids: Sequence[float]) -> Thresholds:
    """Tune a dense run's thresholds on its validation images (see :func:`tuning_images`) and
    write ``thresholds.json`` and ``val_sweep.csv`` into the run folder; returns them. The maps
    are averaged over ``base.views`` views, as they will be wherever the thresholds are used."""
    from workbench.core.atomic import new_file, write_text
    from workbench.data.canonical import read_images

    det = DenseDetector(run_dir, device=device, thresholds=base)
    ids = tuning_images(det.record)
    root = Path(det.record["dataset"]["path"])
    objects = pd.read_csv(root / "objects.csv", dtype={"image_id": str}, keep_default_na=False)
    gt = objects[objects["image_id"].isin(ids)].rename(columns={"image_id": "image"})[
        ["image", "class", "x1", "y1", "x2", "y2"]]
    probs = {i: det.probabilities(arr) for i, arr in read_images(root, ids).items()}
    th, table, summary = tune(probs, gt, base=base, min_precision=min_precision, mn_class=det.config.mn_class,
                              nucleus_class=det.config.nucleus_class, **grids)
    with new_file(Path(run_dir) / SWEEP_FILE) as tmp:
        table.to_csv(tmp, index=False)
    doc = {"tuned": True, "created": utc_now(), "thresholds": asdict(th), **summary, "min_precision": min_precision,
           "images": ids, "val_split": det.record["dataset"].get("val_split"),
           "weights": "best.pt", "sweep": SWEEP_FILE}
    write_text(Path(run_dir) / THRESHOLDS_FILE, json.dumps(doc, indent=2, default=str) + "\n")
    return th
