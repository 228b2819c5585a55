"""The hard-case queue: images ordered by their detection errors, boxes tagged by outcome.

Built from one evaluation (GT table + prediction table) with :func:`workbench.evaluation.metrics.match`,
the same matching behind every metric, so what the viewer and the gallery colour is exactly
what ``evaluate`` counted:

* predictions below ``score_thr`` are left out first (what a user sees is what was counted);
* the class-aware match gives each GT ``tp``/``fn`` and each prediction ``tp``/``fp``
  (``ignored``/``capped`` as in :mod:`workbench.evaluation.metrics`);
* a class-agnostic match (same routine, ``class_agnostic=True``) finds the misclassified
  boxes: an FN and an FP that overlap as a located pair with different classes. They keep
  their class-aware outcome (``fn``/``fp``) and get the display role ``wrong_class``;
* predictions with a true ``changed`` column (cascade tables: the classifier relabelled the
  detector's box) get the display role ``changed``.

Queue order (most informative first): false negatives, then false positives, then
misclassifications, then classifier changes, all descending; ties by image name.
Images without errors stay at the end, so the queue still browses every image.

Everything here is pure (tables in, tables out) except :func:`load_queue`, the I/O edge that
reads a canonical dataset (or one of its label versions) and a prediction table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from workbench.core.tables import require_columns
from workbench.evaluation import metrics

__all__ = ["DISPLAY_COLOURS", "DISPLAY_LABELS", "HardCaseQueue", "ImageRef", "build_queue",
           "display_roles", "image_refs", "load_queue", "read_display_image", "requeue", "step", "text_shown"]

# Okabe-Ito palette (readable with the common colour-vision deficiencies), RGB 0-255.
DISPLAY_COLOURS: dict[str, tuple[int, int, int]] = {
    "gt_tp": (86, 180, 233),  # sky blue: GT that was found
    "tp": (0, 114, 178),  # blue: prediction that found a GT
    "fn": (230, 159, 0),  # orange: missed GT
    "fp": (213, 94, 0),  # vermillion: spurious prediction
    "wrong_class": (204, 121, 167),  # reddish purple: located, wrong class (GT and prediction)
    "changed": (0, 158, 115),  # bluish green: the classifier changed the detector's class
    "ignored": (153, 153, 153),  # grey: crowd/ignored GT, capped predictions
}
DISPLAY_LABELS = {"gt_tp": "GT found (TP)", "tp": "prediction TP", "fn": "missed GT (FN)",
                  "fp": "false positive (FP)", "wrong_class": "wrong class",
                  "changed": "class changed by classifier", "ignored": "ignored / capped"}
SUMMARY_COLUMNS = ["image", "n_gt", "n_pred", "tp", "fp", "fn", "misclassified", "changed",
                   "errors", "precision", "recall"]
_TRUE = {"true", "1", "yes", "y", "t"}


@dataclass(frozen=True)
class ImageRef:
    """Where an image's pixels are: the canonical (8-bit) file and, if any, its original."""

    image_id: str
    file: Path
    original: Path | None = None  # the source file (e.g. 16-bit TIFF) when it still exists
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class HardCaseQueue:
    """Images in hard-case order with their per-image metrics and outcome-tagged boxes.

    ``summary``: one row per image (:data:`SUMMARY_COLUMNS`), in queue order.
    ``gt``: image, class, x1..y2, outcome (tp/fn/ignored), display role, partner class,
    partner score, iou, label (text to show); GT table order within an image.
    ``pred``: the same for predictions (outcome tp/fp/ignored/capped), plus score and
    changed. ``refs``: image id -> :class:`ImageRef` (empty for pure-table queues).
    """

    summary: pd.DataFrame
    gt: pd.DataFrame
    pred: pd.DataFrame
    iou_thr: float
    score_thr: float
    classes: list[str] = field(default_factory=list)
    refs: dict[str, ImageRef] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # what the queue was built from
    pred_input: pd.DataFrame | None = None  # the predictions matched (after the score cut)

    @property
    def images(self) -> list[str]:
        return self.summary["image"].tolist()

    def __len__(self) -> int:
        return len(self.summary)

    def gt_boxes(self, image: str) -> pd.DataFrame:
        return self.gt[self.gt["image"] == image].reset_index(drop=True)

    def pred_boxes(self, image: str) -> pd.DataFrame:
        return self.pred[self.pred["image"] == image].reset_index(drop=True)

    def metrics_of(self, image: str) -> dict[str, Any]:
        row = self.summary[self.summary["image"] == image]
        if row.empty:
            raise KeyError(f"image {image!r} is not in the queue")
        return row.iloc[0].to_dict()

    def index_of(self, image: str) -> int:
        try:
            return self.images.index(image)
        except ValueError:
            raise KeyError(f"image {image!r} is not in the queue") from None


TEXT_ALL_MAX = 150  # above this many boxes, "auto" text labels only the error boxes
TEXT_MODES = ("auto", "all", "errors", "none")


def text_shown(display: np.ndarray | pd.Series, mode: str = "auto") -> np.ndarray:
    """Which boxes get a text label: ``all``, ``errors`` (not TP), ``none``, or ``auto``
    (all up to :data:`TEXT_ALL_MAX` boxes in the image, else errors: dense tiles stay legible)."""
    if mode not in TEXT_MODES:
        raise ValueError(f"text mode must be one of {TEXT_MODES}, got {mode!r}")
    display = np.asarray(display, dtype=object)
    n = len(display)
    if mode == "auto":
        mode = "all" if n <= TEXT_ALL_MAX else "errors"
    if mode == "all":
        return np.ones(n, bool)
    if mode == "errors":
        return ~np.isin(display, ["gt_tp", "tp"])
    return np.zeros(n, bool)


def step(index: int, n: int, delta: int) -> int:
    """The queue position after moving ``delta`` from ``index`` (clamped, no wrap-around)."""
    if n <= 0:
        raise ValueError("the queue is empty")
    return int(min(max(index + delta, 0), n - 1))


def _truthy(values: pd.Series) -> np.ndarray:
    if values.dtype == bool:
        return values.to_numpy()
    return values.astype("string").fillna("").str.strip().str.lower().isin(_TRUE).to_numpy()


def display_roles(matches: pd.DataFrame, agnostic: pd.DataFrame | None = None) -> np.ndarray:
    """The display role of every row of a class-aware match table (same order).

    GT rows: ``gt_tp``, ``fn``, ``wrong_class`` or ``ignored``; prediction rows: ``tp``,
    ``fp``, ``wrong_class``, ``changed`` or ``ignored``. ``agnostic`` is the class-agnostic
    match table of the same inputs (it marks ``wrong_class``); ``changed`` wins over the
    outcome because it is what a cascade user inspects.
    """
    kind = matches["kind"].to_numpy()
    outcome = matches["outcome"].to_numpy()
    is_gt = kind == "gt"
    role = np.where(is_gt, np.where(outcome == "tp", "gt_tp", outcome),
                    outcome).astype(object)
    role[np.isin(outcome, ["ignored", "capped"])] = "ignored"
    if agnostic is not None and len(agnostic):
        # both tables list GT rows then prediction rows, each identified by its row position
        hit = _keys(matches).isin(_keys(agnostic, wrong_only=True))
        role[hit & np.isin(outcome, ["fn", "fp"])] = "wrong_class"
    if "changed" in matches.columns:
        changed = _truthy(matches["changed"]) & ~is_gt
        role[changed] = "changed"
    return role


def _keys(table: pd.DataFrame, *, wrong_only: bool = False) -> pd.MultiIndex:
    """(kind, own row position) of match-table rows; ``wrong_only``: only rows located with
    a partner of another class (the misclassified boxes of a class-agnostic match)."""
    if wrong_only:
        located = (table["outcome"] == "tp") & (table["gt_class"].astype(str) != table["pred_class"].astype(str))
        table = table[located.to_numpy()]
    is_gt = (table["kind"] == "gt").to_numpy()
    own = np.where(is_gt, table["gt_id"].to_numpy(dtype=float, na_value=-1),
                   table["pred_id"].to_numpy(dtype=float, na_value=-1)).astype(np.int64)
    return pd.MultiIndex.from_arrays([table["kind"].astype(str).to_numpy(), own])


def _label(cls: pd.Series, score: pd.Series | None, before: pd.Series | None) -> pd.Series:
    text = cls.astype(str)
    if before is not None:
        text = np.where(before.notna() & (before.astype(str) != text),
                        before.astype(str) + "\u2192" + text, text)
        text = pd.Series(text, index=cls.index)
    if score is not None:
        text = text + " " + score.map(lambda s: "" if pd.isna(s) else f"{s:.2f}")
    return text.str.strip()


def build_queue(gt: pd.DataFrame, pred: pd.DataFrame, *, images: Iterable[str] | None = None,
                iou_thr: float = 0.5, score_thr: float = 0.25, max_dets: int | None = None,
                classes: Iterable[str] | None = None) -> HardCaseQueue:
    """The hard-case queue of one evaluation (pure).

    ``gt``: image, class, x1, y1, x2, y2 (optional iscrowd/ignore); ``pred``: the prediction
    table (image, class, x1..y2, score; optional ``changed``, ``det_class``). ``images``: every
    evaluated image (images with neither GT nor predictions are otherwise unknown).
    Predictions below ``score_thr`` are dropped before matching.
    """
    if not 0 <= score_thr <= 1:
        raise ValueError(f"score_thr must lie in [0, 1], got {score_thr}")
    require_columns(pred, "pred", metrics.PRED_COLUMNS)
    require_columns(gt, "gt", metrics.GT_COLUMNS)
    keep_pred = [c for c in (*metrics.PRED_COLUMNS, "changed", "det_class") if c in pred.columns]
    keep_gt = [c for c in (*metrics.GT_COLUMNS, "iscrowd", "ignore") if c in gt.columns]
    scores = pd.to_numeric(pred["score"], errors="coerce")
    p = pred.loc[scores.ge(score_thr).to_numpy(), keep_pred].reset_index(drop=True)
    g = gt[keep_gt].reset_index(drop=True)
    m = metrics.match(g, p, iou_thr=iou_thr, max_dets=max_dets)
    agn = metrics.match(g, p, iou_thr=iou_thr, max_dets=m.attrs["max_dets"], class_agnostic=True)
    m = m.assign(display=display_roles(m, agn))

    is_gt = m["kind"] == "gt"
    gt_rows = m[is_gt]
    gt_tab = pd.DataFrame({
        "image": gt_rows["image"].astype(str).to_numpy(), "class": gt_rows["class"].astype(str).to_numpy(),
        **{c: gt_rows[c].to_numpy(dtype=float) for c in metrics.BOX_COLUMNS},
        "outcome": gt_rows["outcome"].to_numpy(), "display": gt_rows["display"].to_numpy(),
        "pred_class": gt_rows["pred_class"].to_numpy(), "score": gt_rows["score"].to_numpy(dtype=float),
        "iou": gt_rows["iou"].to_numpy(dtype=float)})
    gt_tab["label"] = _label(gt_tab["class"], None, None).to_numpy()

    pr_rows = m[~is_gt]
    before = pr_rows["det_class"] if "det_class" in pr_rows.columns else None
    pred_tab = pd.DataFrame({
        "image": pr_rows["image"].astype(str).to_numpy(), "class": pr_rows["class"].astype(str).to_numpy(),
        **{c: pr_rows[c].to_numpy(dtype=float) for c in metrics.BOX_COLUMNS},
        "score": pr_rows["score"].to_numpy(dtype=float),
        "outcome": pr_rows["outcome"].to_numpy(), "display": pr_rows["display"].to_numpy(),
        "gt_class": pr_rows["gt_class"].to_numpy(), "iou": pr_rows["iou"].to_numpy(dtype=float),
        "changed": (_truthy(pr_rows["changed"]) if "changed" in pr_rows.columns
                    else np.zeros(len(pr_rows), bool))})
    pred_tab["label"] = _label(pred_tab["class"], pred_tab["score"],
                               None if before is None else before.reset_index(drop=True)).to_numpy()

    summary = _summary(gt_tab, pred_tab, images)
    cls = list(classes) if classes is not None else sorted(set(gt_tab["class"]) | set(pred_tab["class"]))
    return HardCaseQueue(summary, gt_tab, pred_tab, float(iou_thr), float(score_thr), cls, pred_input=p)


def requeue(queue: HardCaseQueue, gt: pd.DataFrame) -> HardCaseQueue:
    """The same queue (images, predictions, thresholds, references) with new GT boxes, e.g.
    corrected labels (pure)."""
    pred = queue.pred_input if queue.pred_input is not None else queue.pred[[*metrics.PRED_COLUMNS, "changed"]]
    q = build_queue(gt, pred, images=queue.images, iou_thr=queue.iou_thr, score_thr=queue.score_thr,
                    classes=queue.classes)
    return HardCaseQueue(q.summary, q.gt, q.pred, q.iou_thr, q.score_thr, q.classes, queue.refs,
                         dict(queue.source), q.pred_input)


def _summary(gt: pd.DataFrame, pred: pd.DataFrame, images: Iterable[str] | None) -> pd.DataFrame:
    names = sorted(set(gt["image"]) | set(pred["image"]) | set(map(str, images or ())))
    idx = pd.Index(names)

    def count(tab: pd.DataFrame, mask: np.ndarray | pd.Series) -> np.ndarray:
        return np.bincount(idx.get_indexer(tab.loc[np.asarray(mask), "image"]), minlength=len(idx))

    counted_gt = gt["outcome"].isin(["tp", "fn"])
    counted_pred = pred["outcome"].isin(["tp", "fp"])
    s = pd.DataFrame({
        "image": names,
        "n_gt": count(gt, counted_gt), "n_pred": count(pred, counted_pred),
        "tp": count(gt, gt["outcome"] == "tp"), "fp": count(pred, pred["outcome"] == "fp"),
        "fn": count(gt, gt["outcome"] == "fn"),
        # one misclassification = one located GT with a wrong-class partner
        "misclassified": count(gt, gt["display"] == "wrong_class"),
        "changed": count(pred, pred["changed"].to_numpy(bool)),
    })
    s["errors"] = s["fp"] + s["fn"]
    with np.errstate(divide="ignore", invalid="ignore"):
        s["precision"] = np.where(s["n_pred"] > 0, s["tp"] / s["n_pred"].clip(lower=1), np.nan)
        s["recall"] = np.where(s["n_gt"] > 0, s["tp"] / s["n_gt"].clip(lower=1), np.nan)
    s = s.sort_values(["fn", "fp", "misclassified", "changed", "image"],
                      ascending=[False, False, False, False, True], kind="stable")
    return s[SUMMARY_COLUMNS].reset_index(drop=True)


# ----------------------------------------------------------------------------- I/O edge

def load_queue(gt: str | Path, pred: str | Path | pd.DataFrame, *, split: str | None = None,
               version: str | None = "latest", iou_thr: float = 0.5, score_thr: float = 0.25,
               max_dets: int | None = None) -> HardCaseQueue:
    """Read a canonical dataset (or COCO JSON) and a prediction table; build the queue.

    ``version``: for a canonical dataset with corrected label versions
    (:mod:`workbench.inspection.corrections`), which labels are the GT: ``"latest"`` (default; the
    canonical ``labels/`` when there is no version), ``None``/``"v0000"`` for the canonical
    labels, or a version name. Image references (canonical file and original source file)
    come from ``meta.csv``.
    """
    from workbench.evaluation.files import load_ground_truth, load_predictions

    gt_path = Path(gt)
    truth = load_ground_truth(gt_path, split=split)
    source: dict[str, Any] = {"gt": str(gt_path), "split": split, "version": None,
                              "pred": pred if isinstance(pred, (str, Path)) else "(table)"}
    refs: dict[str, ImageRef] = {}
    if gt_path.is_dir():
        from workbench.inspection import corrections

        name = corrections.resolve_version(gt_path, version)
        source["version"] = name
        if name != corrections.CANONICAL:
            boxes = corrections.read_version_boxes(gt_path, name)
            boxes = boxes[boxes["image"].isin(set(truth.images))]
            truth.boxes = boxes[["image", "class", "x1", "y1", "x2", "y2"]].reset_index(drop=True)
        refs = image_refs(gt_path, truth.images)
    elif truth.coco is not None:  # COCO: file_name relative to the JSON (as the exporter writes it)
        refs = {str(im["file_name"]): ImageRef(str(im["file_name"]), gt_path.parent / str(im["file_name"]),
                                               None, im.get("width"), im.get("height"))
                for im in truth.coco.get("images", [])}
    table = pred if isinstance(pred, pd.DataFrame) else load_predictions(pred, truth)
    table = table[table["image"].astype(str).isin(set(truth.images))].reset_index(drop=True)
    q = build_queue(truth.boxes, table, images=truth.images, iou_thr=iou_thr, score_thr=score_thr,
                    max_dets=max_dets, classes=truth.classes)
    return HardCaseQueue(q.summary, q.gt, q.pred, q.iou_thr, q.score_thr, q.classes, refs, source, q.pred_input)


def image_refs(root: str | Path, image_ids: Iterable[str] | None = None) -> dict[str, ImageRef]:
    """Image id -> :class:`ImageRef` from a canonical dataset's meta.csv."""
    from workbench.data.canonical import read_meta

    root = Path(root)
    meta = read_meta(root)
    if image_ids is not None:
        meta = meta[meta["image_id"].astype(str).isin(set(map(str, image_ids)))]
    out = {}
    for r in meta.itertuples(index=False):
        src = str(getattr(r, "source_image", "") or "")
        original = Path(src) if src and src != "(embedded)" and Path(src).is_file() else None
        out[str(r.image_id)] = ImageRef(str(r.image_id), root / str(r.file), original,
                                        int(r.width), int(r.height))
    return out


def read_display_image(ref: ImageRef | str | Path, *, original: bool = True) -> np.ndarray:
    """The pixels to show: the original file (e.g. a 16-bit TIFF) when it exists and has the
    canonical size, else the canonical 8-bit file (native dtype, RGB(A) order)."""
    from workbench.core.images import read_image

    if not isinstance(ref, ImageRef):
        return read_image(ref)[0]
    if original and ref.original is not None and ref.original.is_file():
        arr, info = read_image(ref.original)
        if ref.width is None or (info.width, info.height) == (ref.width, ref.height):
            return arr
    return read_image(ref.file)[0]


def case_pixels(queue: "HardCaseQueue", images: dict, image: str, *, original: bool = True) -> np.ndarray:
    """Pixels of ``image`` for display: a given array or path in ``images``, else the queue's
    reference (the original file when ``original`` and it still exists)."""
    src = images.get(image)
    if isinstance(src, np.ndarray):
        return src
    if src is not None:
        return read_display_image(src)
    ref = queue.refs.get(image)
    if ref is None:
        raise KeyError(f"no pixels for image {image!r}: pass images= or build the queue with "
                       "hardcases.load_queue (image references from meta.csv)")
    return read_display_image(ref, original=original)
