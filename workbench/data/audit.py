"""Dataset audit: counts, box and image statistics, density, quality proxies, problems.

:func:`audit_dataset` reads a canonical dataset (never writes to it) and returns tidy
DataFrames in an :class:`AuditResult`; :func:`write_audit` writes them with ``audit.json``
and figures to a separate folder.

What is measured, and how:

* **Labels** are read from ``labels/<stem>.txt`` (the path ultralytics derives from the
  image path). A missing file where ``meta.csv`` says the image is labelled is an error
  (ultralytics would train on it as background); an empty file means "no objects".
* **Images** are checked in a process pool (``workers``, default ``os.cpu_count()``): the
  header (PIL, lazy), the end-of-file marker (JPEG ``FFD9``, PNG ``IEND``) because decoders
  silently fill a cut-off file with grey, and a decode with OpenCV at reduced resolution
  (``reduce`` = 2: JPEGs are DCT-scaled while decoding, which is what makes this fast).
* **Quality proxies** (per image, measured on the grey version of the *reduced* image, so
  compare them only between audits with the same ``reduce``): brightness = mean grey level,
  contrast = std of grey, sharpness = variance of the Laplacian, colourfulness = mean over
  pixels of (max - min) over the colour channels (< 2 counts as grey: JPEG chroma noise),
  clipped = fraction of pixels at 0 or 255.
* **Density class** per image: ``unlabelled`` (no label file), ``empty`` (no objects),
  ``dense`` (more than ``dense_threshold`` objects), ``clustered`` (at least
  ``cluster_min_objects`` objects whose box centres have a Clark-Evans ratio below
  ``cluster_ratio``), else ``sparse``. The Clark-Evans ratio R is the mean nearest-neighbour
  distance of the centres divided by its expectation for a random (Poisson) pattern in the
  image rectangle, with Donnelly's edge correction: E = 0.5 sqrt(A/n) + (0.0514 +
  0.041/sqrt(n)) P/n (A area, P perimeter). R ~ 1 random, R < 1 clumped, R > 1 regular.
* **Problems** (one row per finding, ``severity`` error/warning/info, ``source`` import or
  audit): the import's ``problems.csv`` carried over, plus the checks listed in
  :data:`AUDIT_KINDS`.
"""
from __future__ import annotations

import datetime as _dt
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench import __version__
from workbench.data.canonical import SPLITS, META_COLUMNS, parse_yolo_lines, read_classes, read_meta
from workbench.data.leakage import DEFAULT_THRESHOLD, find_duplicates
from workbench.core.problems import ProblemLog

PROBLEM_COLUMNS = ["image", "file", "object", "kind", "detail", "severity", "action", "source"]
DENSITY_CLASSES = ("unlabelled", "empty", "sparse", "clustered", "dense")
AUDIT_KINDS = {
    "missing_image_file": "error", "unreadable_image": "error", "truncated_image": "error",
    "size_mismatch": "error", "missing_label_file": "error", "malformed_label_line": "error",
    "unknown_class_id": "error", "invalid_box": "error", "box_outside_image": "error",
    "duplicate_image_id": "error", "unknown_split": "error", "unreadable_label_file": "error",
    "box_out_of_bounds": "warning", "zero_area_box": "warning", "duplicate_box": "warning",
    "orphan_label_file": "warning", "unlisted_image": "warning",
    "duplicate_image": "error if across splits, else warning",
    "near_duplicate_image": "error if across splits, else warning",
    "empty_label_file": "info", "unlabelled_image": "info", "tiny_box": "info",
}
# Label files are written with 6 decimals; other tools write 4. Tolerate that rounding.
BOUNDS_TOL = 1e-4
GREY_COLOURFULNESS = 2.0
_REDUCE_FLAGS = {1: (1, 0), 2: (17, 16), 4: (33, 32), 8: (65, 64)}  # (colour, grey) cv2 flags


@dataclass(frozen=True)
class AuditSettings:
    """Thresholds of an audit (recorded in ``audit.json``)."""

    dense_threshold: int = 100
    cluster_ratio: float = 0.6
    cluster_min_objects: int = 10
    tiny_box_px: float = 3.0
    dup_iou: float = 0.9
    near_dup_distance: int = DEFAULT_THRESHOLD
    reduce: int = 2

    def __post_init__(self) -> None:
        if self.dense_threshold < 0:
            raise ValueError(f"dense_threshold must be >= 0, got {self.dense_threshold}")
        if not self.cluster_ratio > 0:
            raise ValueError(f"cluster_ratio must be > 0, got {self.cluster_ratio}")
        if self.cluster_min_objects < 2:
            raise ValueError(f"cluster_min_objects must be >= 2, got {self.cluster_min_objects}")
        if self.tiny_box_px < 0:
            raise ValueError(f"tiny_box_px must be >= 0, got {self.tiny_box_px}")
        if not 0 < self.dup_iou <= 1:
            raise ValueError(f"dup_iou must be in (0, 1], got {self.dup_iou}")
        if not -1 <= self.near_dup_distance <= 64:
            raise ValueError(f"near_dup_distance must be -1 (off) .. 64 bits, got {self.near_dup_distance}")
        if self.reduce not in _REDUCE_FLAGS:
            raise ValueError(f"reduce must be one of {sorted(_REDUCE_FLAGS)}, got {self.reduce}")


@dataclass
class AuditResult:
    """Tidy tables of one audit. ``images``/``objects`` have one row per image/box."""

    root: Path
    classes: list[str]
    images: pd.DataFrame
    objects: pd.DataFrame
    problems: pd.DataFrame
    duplicates: pd.DataFrame
    settings: AuditSettings
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        return summary_tables(self)

    def summary(self) -> dict[str, Any]:
        """The ``audit.json`` document."""
        objs = self.objects
        known = objs[objs["class_id"].between(0, len(self.classes) - 1)]
        split = self.images["split"].replace("", "(none)")
        sev = self.problems["severity"].value_counts()
        return {
            "dataset": str(self.root),
            "workbench_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "images": int(len(self.images)),
            "objects": int(len(known)),
            "classes": {c: int((known["class"] == c).sum()) for c in self.classes},
            "splits": {s: int(n) for s, n in split.value_counts().items()},
            "density": {d: int(n) for d, n in self.images["density"].value_counts().items()},
            "settings": asdict(self.settings),
            "problem_counts": {s: int(sev.get(s, 0)) for s in ("error", "warning", "info")},
            "problem_kinds": {k: int(n) for k, n in self.problems["kind"].value_counts().items()},
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "problems": self.problems[PROBLEM_COLUMNS].to_dict(orient="records"),
        }


# ----------------------------------------------------------------------------- images

def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # the pool is the parallelism; nested threads only contend


def check_image(path: str, reduce: int = 2) -> dict[str, Any]:
    """Header, truncation, decode and quality proxies of one image file (see module doc)."""
    import cv2
    from PIL import Image

    out: dict[str, Any] = {"readable": False, "truncated": False, "error": "", "file_format": "",
                           "file_width": -1, "file_height": -1, "file_mode": "",
                           "brightness": np.nan, "contrast": np.nan, "sharpness": np.nan,
                           "colourfulness": np.nan, "clipped": np.nan}
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        out["error"] = "missing"
        return out
    except OSError as exc:
        out["error"] = f"cannot open: {exc}"
        return out
    try:
        import io

        with Image.open(io.BytesIO(data)) as im:
            out.update(file_format=im.format or "", file_width=im.size[0], file_height=im.size[1],
                       file_mode=im.mode)
    except Exception as exc:  # PIL raises many types for corrupt headers
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    fmt = out["file_format"]
    tail = data[-32:]
    if fmt == "JPEG" and not tail.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
        out["truncated"] = True
    elif fmt == "PNG" and tail[-8:-4] != b"IEND":
        out["truncated"] = True
    grey = out["file_mode"] in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")
    flag = _REDUCE_FLAGS[reduce][1 if grey else 0]
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if arr is None or arr.size == 0:
        out["error"] = "OpenCV could not decode the pixels"
        return out
    out["readable"] = True
    if arr.ndim == 3:
        g = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
        b, gr, r = cv2.split(arr)  # cv2 per-channel ops: ~30x faster than numpy max(axis=2)
        spread = cv2.subtract(cv2.max(cv2.max(b, gr), r), cv2.min(cv2.min(b, gr), r))
        out["colourfulness"] = float(cv2.mean(spread)[0])
    else:
        g = arr
        out["colourfulness"] = 0.0
    mean, std = cv2.meanStdDev(g)
    out["brightness"] = float(mean[0, 0])
    out["contrast"] = float(std[0, 0])
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(g, cv2.CV_32F))
    out["sharpness"] = float(lap_std[0, 0]) ** 2
    out["clipped"] = float(np.count_nonzero((g == 0) | (g == 255)) / g.size)
    return out


def _check_star(args: tuple[str, int]) -> dict[str, Any]:
    return check_image(*args)


def _image_pool(paths: list[str], reduce: int, workers: int):
    """Start checking images; returns a zero-argument function that collects the results."""
    jobs = [(p, reduce) for p in paths]
    if workers <= 1 or len(paths) < 16:
        return lambda: [_check_star(j) for j in jobs]
    # forkserver, not fork: a child forked from a parent whose OpenCV thread pool is running
    # deadlocks inside cv2 (seen here). The server preloads this module once; forks are cheap.
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload([__name__])
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    it = ex.map(_check_star, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 4))))

    def collect():
        try:
            return list(it)
        finally:
            ex.shutdown()
    return collect


def check_images(paths: list[str], *, reduce: int = 2, workers: int | None = None) -> list[dict[str, Any]]:
    """:func:`check_image` over many files in a process pool (``workers`` default: all cores)."""
    workers = os.cpu_count() or 1 if workers is None else max(1, int(workers))
    return _image_pool([str(p) for p in paths], reduce, workers)()


# ----------------------------------------------------------------------------- labels

def _label_path(file: str, label_file: str) -> str:
    """ultralytics' rule: images/<stem>.<ext> -> labels/<stem>.txt."""
    p = Path(file)
    if p.parts and p.parts[0] == "images":
        return str(Path("labels", *p.parts[1:-1], p.stem + ".txt"))
    return label_file


def read_labels(root: Path, meta: pd.DataFrame, classes: list[str], log: ProblemLog
                ) -> tuple[pd.DataFrame, list[str]]:
    """Parse every label file (plain Python/numpy): boxes table and a state per image."""
    ids, arrays, lines, states = [], [], [], []
    labelled_meta = meta["label_file"].astype(str).ne("") if "label_file" in meta else \
        pd.Series(False, index=meta.index)
    for image_id, file, label_file, says in zip(meta["image_id"], meta["file"],
                                                meta.get("label_file", [""] * len(meta)), labelled_meta):
        rel = _label_path(str(file), str(label_file))
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except FileNotFoundError:
            if says:
                log.add(rel, "missing_label_file",
                        f"meta.csv lists {label_file} for image {image_id!r} but the file is missing: "
                        "ultralytics would train on this image as background (no objects)",
                        action="none (audit only)", severity="error")
                states.append("missing")
            else:
                log.add(file, "unlabelled_image", "no label file: the image is not labelled",
                        action="none (audit only)", severity="info")
                states.append("unlabelled")
            continue
        except (OSError, UnicodeDecodeError) as exc:
            log.add(rel, "unreadable_label_file", f"cannot read label file: {exc}",
                    action="none (audit only)", severity="error")
            states.append("missing")
            continue
        arr, linenos = parse_yolo_lines(text, rel, log)
        if not text.strip():
            log.add(rel, "empty_label_file", "empty label file: image has no objects (a background image)",
                    action="none (audit only)", severity="info")
            states.append("empty")
        else:
            states.append("labelled")
        if len(arr):
            ids.append(np.full(len(arr), len(states) - 1))
            arrays.append(arr)
            lines.append(np.asarray(linenos))
    if arrays:
        idx = np.concatenate(ids)
        arr = np.concatenate(arrays)
        lineno = np.concatenate(lines)
    else:
        idx, arr, lineno = np.zeros(0, int), np.zeros((0, 5)), np.zeros(0, int)
    return _boxes_frame(meta, classes, idx, arr, lineno), states


def _boxes_frame(meta: pd.DataFrame, classes: list[str], idx: np.ndarray, arr: np.ndarray,
                 lineno: np.ndarray) -> pd.DataFrame:
    W = meta["width"].to_numpy(float)[idx]
    H = meta["height"].to_numpy(float)[idx]
    cls = arr[:, 0].astype(np.int64)
    names = np.array(list(classes) + ["?"], dtype=object)
    known = (cls >= 0) & (cls < len(classes))
    cx, cy, w, h = arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4]
    wp, hp = w * W, h * H
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.where(hp > 0, wp / hp, np.nan)
    return pd.DataFrame({
        "image_id": meta["image_id"].astype(str).to_numpy()[idx],
        "split": meta["split"].astype(str).to_numpy()[idx],
        "line": lineno.astype(np.int64),
        "class_id": cls, "class": names[np.where(known, cls, len(classes))].astype(str),
        "cx": cx, "cy": cy, "w": w, "h": h,
        "x1": (cx - w / 2) * W, "y1": (cy - h / 2) * H, "x2": (cx + w / 2) * W, "y2": (cy + h / 2) * H,
        "width_px": wp, "height_px": hp, "area_frac": w * h, "aspect": aspect,
    })


def box_problems(objects: pd.DataFrame, classes: list[str], settings: AuditSettings,
                 label_of: dict[str, str]) -> list[dict[str, Any]]:
    """Unknown class ids, invalid / out-of-bounds / zero-area / tiny boxes (vectorised)."""
    o = objects
    rows: list[dict[str, Any]] = []
    x1n, x2n = o["cx"] - o["w"] / 2, o["cx"] + o["w"] / 2
    y1n, y2n = o["cy"] - o["h"] / 2, o["cy"] + o["h"] / 2
    finite = np.isfinite(o[["cx", "cy", "w", "h"]].to_numpy()).all(axis=1)
    invalid = ~finite | (o["w"] < 0) | (o["h"] < 0)
    unknown = ~o["class_id"].between(0, len(classes) - 1)
    outside = ~invalid & ((x2n <= 0) | (y2n <= 0) | (x1n >= 1) | (y1n >= 1))
    oob = ~invalid & ~outside & ((x1n < -BOUNDS_TOL) | (y1n < -BOUNDS_TOL) |
                                 (x2n > 1 + BOUNDS_TOL) | (y2n > 1 + BOUNDS_TOL))
    zero = ~invalid & ((o["w"] == 0) | (o["h"] == 0))
    tiny = ~invalid & ~zero & (np.minimum(o["width_px"], o["height_px"]) < settings.tiny_box_px)

    def box(r) -> str:
        return f"x1,y1,x2,y2 = {r.x1:.1f},{r.y1:.1f},{r.x2:.1f},{r.y2:.1f} px"

    checks = [
        (unknown, "unknown_class_id", "error", "ignored by the audit's class counts",
         lambda r: f"class id {r.class_id} is not in 0..{len(classes) - 1} ({', '.join(classes)})"),
        (invalid, "invalid_box", "error", "none (audit only)",
         lambda r: f"width/height must be finite and >= 0, got w={r.w:g} h={r.h:g}"),
        (outside, "box_outside_image", "error", "none (audit only)",
         lambda r: f"{r['class']} box lies entirely outside the image: {box(r)}"),
        (oob, "box_out_of_bounds", "warning", "none (ultralytics clips it)",
         lambda r: f"{r['class']} box exceeds the image: {box(r)}"),
        (zero, "zero_area_box", "warning", "none (training ignores it)",
         lambda r: f"{r['class']} box has zero width or height: {box(r)}"),
        (tiny, "tiny_box", "info", "none",
         lambda r: f"{r['class']} box {r.width_px:.1f}x{r.height_px:.1f} px has a side below "
                   f"{settings.tiny_box_px:g} px"),
    ]
    for mask, kind, severity, action, detail in checks:
        for _, r in o[np.asarray(mask, dtype=bool)].iterrows():
            rows.append({"image": r.image_id, "file": label_of.get(r.image_id, ""),
                         "object": f"line {r.line}", "kind": kind, "detail": detail(r),
                         "severity": severity, "action": action, "source": "audit"})
    return rows


def duplicate_boxes(objects: pd.DataFrame, *, iou: float = 0.9) -> pd.DataFrame:
    """Pairs of same-class boxes in one image with IoU > ``iou`` (vectorised per image)."""
    o = objects[(objects["w"] > 0) & (objects["h"] > 0)]
    cols = ["image_id", "class", "line_a", "line_b", "iou"]
    if len(o) < 2:
        return pd.DataFrame(columns=cols)
    o = o.sort_values("image_id", kind="stable")
    img = o["image_id"].to_numpy()
    b = o[["x1", "y1", "x2", "y2"]].to_numpy()
    cls = o["class_id"].to_numpy()
    line = o["line"].to_numpy()
    starts = np.flatnonzero(np.r_[True, img[1:] != img[:-1]])
    ends = np.r_[starts[1:], len(img)]
    found = []
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        bb = b[s:e]
        ix = np.clip(np.minimum(bb[:, None, 2], bb[None, :, 2]) - np.maximum(bb[:, None, 0], bb[None, :, 0]), 0, None)
        iy = np.clip(np.minimum(bb[:, None, 3], bb[None, :, 3]) - np.maximum(bb[:, None, 1], bb[None, :, 1]), 0, None)
        inter = ix * iy
        area = (bb[:, 2] - bb[:, 0]) * (bb[:, 3] - bb[:, 1])
        m = inter / (area[:, None] + area[None, :] - inter)
        c = cls[s:e]
        i, j = np.nonzero(np.triu((m > iou) & (c[:, None] == c[None, :]), k=1))
        for a, k in zip(i, j):
            found.append((img[s], o["class"].iat[s + a], int(line[s + a]), int(line[s + k]), float(m[a, k])))
    return pd.DataFrame(found, columns=cols)


def _nn_mean_small(groups: list[np.ndarray], m: int) -> np.ndarray:
    """Mean nearest-neighbour distance for point sets of at most ``m`` points, batched.

    Sets are padded with NaN to ``m`` points and processed in blocks of ~4M distances:
    with many small images this is ~20x faster than one KD-tree per image.
    """
    out = np.empty(len(groups))
    per = max(1, (1 << 22) // (m * m))
    for s in range(0, len(groups), per):
        chunk = groups[s:s + per]
        pts = np.full((len(chunk), m, 2), np.nan)
        for i, g in enumerate(chunk):
            pts[i, : len(g)] = g
        d = np.sqrt(((pts[:, :, None, :] - pts[:, None, :, :]) ** 2).sum(-1))
        idx = np.arange(m)
        d[:, idx, idx] = np.inf
        nn = np.fmin.reduce(d, axis=2)  # NaN (padding) ignored
        out[s:s + len(chunk)] = np.nanmean(np.where(np.isinf(nn), np.nan, nn), axis=1)
    return out


def clark_evans(objects: pd.DataFrame, images: pd.DataFrame, *, min_objects: int = 10) -> pd.Series:
    """Clark-Evans ratio of box centres per image (Donnelly edge correction); NaN below ``min_objects``."""
    from scipy.spatial import cKDTree

    ids = images["image_id"].astype(str).to_numpy()
    out = np.full(len(ids), np.nan)
    if objects.empty:
        return pd.Series(out, index=ids, dtype=float)
    pos = {k: i for i, k in enumerate(ids)}
    W = images["width"].to_numpy(float)
    H = images["height"].to_numpy(float)
    img = objects["image_id"].to_numpy()
    order = np.argsort(img, kind="stable")
    img = img[order]
    xy = np.column_stack([((objects["x1"] + objects["x2"]) / 2).to_numpy()[order],
                          ((objects["y1"] + objects["y2"]) / 2).to_numpy()[order]])
    starts = np.flatnonzero(np.r_[True, img[1:] != img[:-1]])
    ends = np.r_[starts[1:], len(img)]
    buckets: dict[int, list[tuple[int, np.ndarray]]] = {}
    for s, e in zip(starts, ends):
        k = pos.get(img[s])
        if e - s < min_objects or k is None:
            continue
        n = e - s
        if n <= 128:  # small sets: batched dense distances, by padded size
            buckets.setdefault(1 << int(np.ceil(np.log2(n))), []).append((k, xy[s:e]))
        else:
            d, _ = cKDTree(xy[s:e]).query(xy[s:e], k=2)
            out[k] = d[:, 1].mean()
    for m, items in buckets.items():
        out[[k for k, _ in items]] = _nn_mean_small([g for _, g in items], m)
    n = objects["image_id"].value_counts().reindex(ids).to_numpy(float)
    expected = 0.5 * np.sqrt(W * H / n) + (0.0514 + 0.041 / np.sqrt(n)) * 2 * (W + H) / n
    return pd.Series(out / expected, index=ids, dtype=float)


def density_class(n_objects: pd.Series, state: pd.Series, ce: pd.Series, settings: AuditSettings
                  ) -> pd.Series:
    """unlabelled / empty / dense / clustered / sparse (see module doc)."""
    n = n_objects.to_numpy()
    r = ce.to_numpy()
    st = state.to_numpy()
    out = np.select(
        [np.isin(st, ["unlabelled", "missing"]), n == 0, n > settings.dense_threshold,
         (n >= settings.cluster_min_objects) & (r < settings.cluster_ratio)],
        ["unlabelled", "empty", "dense", "clustered"], default="sparse")
    return pd.Series(out, index=n_objects.index, dtype=str)


# ----------------------------------------------------------------------------- problems

def _image_problems(images: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for r in images.itertuples(index=False):
        base = {"image": r.image_id, "file": r.file, "object": "", "source": "audit",
                "action": "none (audit only)"}
        if r.error == "missing":
            rows.append(base | {"kind": "missing_image_file", "severity": "error",
                                "detail": "image file listed in meta.csv does not exist"})
            continue
        if r.truncated:  # the cause; whether OpenCV still decodes a cut file depends on where
            marker = "EOI marker FFD9" if r.file_format == "JPEG" else "IEND chunk"
            rows.append(base | {"kind": "truncated_image", "severity": "error",
                                "detail": f"{r.file_format} file ends without its {marker}: the file is cut "
                                          "short; " + ("OpenCV cannot decode it" if r.error else
                                                       "decoders fill the missing part with grey")})
            if r.error:
                continue
        elif r.error:
            rows.append(base | {"kind": "unreadable_image", "severity": "error", "detail": r.error})
            continue
        if (r.file_width, r.file_height) != (r.width, r.height):
            rows.append(base | {"kind": "size_mismatch", "severity": "error",
                                "detail": f"file is {r.file_width}x{r.file_height}, meta.csv says "
                                          f"{r.width}x{r.height}"})
    return rows


def _duplicate_image_problems(pairs: pd.DataFrame, file_of: dict[str, str]) -> list[dict[str, Any]]:
    """One row per image and kind: its duplicate partners, an error when any is in another split."""
    if pairs.empty:
        return []
    both = pd.concat([
        pairs.rename(columns={"image_a": "image", "image_b": "other", "split_a": "split", "split_b": "other_split"}),
        pairs.rename(columns={"image_b": "image", "image_a": "other", "split_b": "split", "split_a": "other_split"}),
    ], ignore_index=True)
    # vectorised: a library with many copies has ~n^2 pairs; per-group Python would dominate
    both = both.sort_values(["image", "kind", "cross_split", "distance", "other"],
                            ascending=[True, True, False, True, True], kind="stable")
    keys = ["image", "kind"]
    g = both.groupby(keys, sort=False)
    stats = pd.DataFrame({"n": g.size(), "cross": g["cross_split"].any(), "split": g["split"].first()})
    top = both[g.cumcount() < 3]
    other_split = top["other_split"].where(top["other_split"].ne(""), "no split")
    text = top["other"] + " (" + other_split + np.where(
        top["kind"] == "near", ", " + top["distance"].astype(str) + " bits)", ")")
    stats["shown"] = text.groupby([top["image"], top["kind"]], sort=False).agg(", ".join)
    rows = []
    for (image, kind), n, cross, split, shown in zip(stats.index, stats["n"], stats["cross"],
                                                     stats["split"], stats["shown"]):
        more = f" and {n - 3} more" if n > 3 else ""
        what = "pixel-identical to" if kind == "exact" else "a near duplicate (perceptual hash) of"
        rows.append({"image": image, "file": file_of.get(image, ""), "object": "",
                     "kind": "duplicate_image" if kind == "exact" else "near_duplicate_image",
                     "detail": f"{image} ({split or 'no split'}) is {what} {shown}{more}"
                               + ("; across splits: train/test leakage" if cross else ""),
                     "severity": "error" if cross else "warning",
                     "action": "none (audit only)", "source": "audit"})
    return rows


def _import_problems(root: Path, meta: pd.DataFrame) -> list[dict[str, Any]]:
    path = root / "problems.csv"
    if not path.exists():
        return []
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if df.empty:
        return []
    # problems.csv names source files; map them back to image ids through meta's source paths.
    by_name: dict[str, list[tuple[str, str]]] = {}
    for col in ("source_image", "source_label"):
        if col in meta:
            for image_id, src in zip(meta["image_id"], meta[col].astype(str)):
                if src:
                    by_name.setdefault(Path(src).name, []).append((src.replace("\\", "/"), image_id))
    rows = []
    for r in df.to_dict(orient="records"):
        f = str(r.get("file", "")).replace("\\", "/")
        cands = [i for s, i in by_name.get(Path(f).name, []) if s == f or s.endswith("/" + f.lstrip("./"))]
        rows.append({"image": cands[0] if len(set(cands)) == 1 else "", "file": r.get("file", ""),
                     "object": r.get("object", ""), "kind": r.get("kind", ""), "detail": r.get("detail", ""),
                     "severity": r.get("severity", "") or "warning", "action": r.get("action", ""),
                     "source": "import"})
    return rows


def _meta_problems(meta: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    ids = meta["image_id"].astype(str)
    for image_id in sorted(set(ids[ids.duplicated()])):
        rows.append({"image": image_id, "file": "meta.csv", "object": "", "kind": "duplicate_image_id",
                     "detail": f"image id {image_id!r} appears {int((ids == image_id).sum())} times in meta.csv",
                     "severity": "error", "action": "none (audit only)", "source": "audit"})
    split = meta["split"].astype(str)
    for image_id, s in zip(ids[~split.isin(("",) + SPLITS)], split[~split.isin(("",) + SPLITS)]):
        rows.append({"image": image_id, "file": "meta.csv", "object": "", "kind": "unknown_split",
                     "detail": f"split {s!r} is not one of {', '.join(SPLITS)}", "severity": "error",
                     "action": "none (audit only)", "source": "audit"})
    return rows


def _folder_problems(root: Path, meta: pd.DataFrame) -> list[dict[str, Any]]:
    """Label files without an image and image files that meta.csv does not list."""
    rows = []
    listed = set(meta["file"].astype(str))
    stems = {Path(f).stem for f in listed}
    if (root / "labels").is_dir():
        for p in sorted((root / "labels").glob("*.txt")):
            if p.stem not in stems:
                rows.append({"image": "", "file": f"labels/{p.name}", "object": "", "kind": "orphan_label_file",
                             "detail": "label file has no image in meta.csv", "severity": "warning",
                             "action": "none (audit only)", "source": "audit"})
    if (root / "images").is_dir():
        for p in sorted((root / "images").iterdir()):
            if p.is_file() and not p.name.startswith(".") and f"images/{p.name}" not in listed:
                rows.append({"image": "", "file": f"images/{p.name}", "object": "", "kind": "unlisted_image",
                             "detail": "image file is not in meta.csv (not part of any split)",
                             "severity": "warning", "action": "none (audit only)", "source": "audit"})
    return rows


# ----------------------------------------------------------------------------- audit

def audit_dataset(root: str | Path, *, dense_threshold: int = 100, cluster_ratio: float = 0.6,
                  cluster_min_objects: int = 10, tiny_box_px: float = 3.0, dup_iou: float = 0.9,
                  near_dup_distance: int = DEFAULT_THRESHOLD, reduce: int = 2,
                  workers: int | None = None) -> AuditResult:
    """Audit the canonical dataset at ``root`` (read-only) and return tidy tables.

    See the module docstring for what each threshold means. ``workers``: processes that
    decode images (default ``os.cpu_count()``; 1 = in this process).
    """
    settings = AuditSettings(dense_threshold, cluster_ratio, cluster_min_objects, tiny_box_px,
                             dup_iou, near_dup_distance, reduce)
    root = Path(root)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    meta = read_meta(root)
    classes = read_classes(root)
    for col in ("file", "width", "height", "split"):
        if col not in meta:
            raise ValueError(f"{root / 'meta.csv'}: missing column {col!r}")
    meta = meta.assign(split=meta["split"].astype(str), image_id=meta["image_id"].astype(str))
    workers = os.cpu_count() or 1 if workers is None else max(1, int(workers))

    collect = _image_pool([str(root / f) for f in meta["file"]], settings.reduce, workers)
    t = time.perf_counter()
    log = ProblemLog()
    objects, states = read_labels(root, meta, classes, log)
    timings["labels"] = time.perf_counter() - t
    t = time.perf_counter()
    checks = pd.DataFrame(collect(), index=meta.index)
    timings["images"] = time.perf_counter() - t

    t = time.perf_counter()
    images = _images_frame(meta, checks, states, objects, settings)
    label_of = dict(zip(images["image_id"], images["label_path"]))
    file_of = dict(zip(images["image_id"], images["file"]))
    dup_boxes = duplicate_boxes(objects, iou=settings.dup_iou)
    duplicates = find_duplicates(meta, threshold=settings.near_dup_distance)

    rows = _import_problems(root, meta) + _meta_problems(meta) + _folder_problems(root, meta)
    image_of_label = {v: k for k, v in label_of.items()}
    for p in log:
        rows.append({"image": image_of_label.get(p.file, ""), "file": p.file, "object": p.object,
                     "kind": p.kind, "detail": p.detail, "severity": p.severity,
                     "action": p.action if p.kind != "malformed_label_line" else "none (ultralytics skips it)",
                     "source": "audit"})
    rows += _image_problems(images)
    rows += box_problems(objects, classes, settings, label_of)
    for r in dup_boxes.itertuples(index=False):
        rows.append({"image": r.image_id, "file": label_of.get(r.image_id, ""),
                     "object": f"line {r.line_a} & line {r.line_b}", "kind": "duplicate_box",
                     "detail": f"two {r._1} boxes with IoU {r.iou:.3f} > {settings.dup_iou:g}",
                     "severity": "warning", "action": "none (audit only)", "source": "audit"})
    rows += _duplicate_image_problems(duplicates, file_of)
    problems = pd.DataFrame(rows, columns=PROBLEM_COLUMNS).fillna("").astype(str)
    order = {"error": 0, "warning": 1, "info": 2}
    problems = (problems.assign(_s=problems["severity"].map(order).fillna(3))
                .sort_values(["_s", "kind", "image", "file"], kind="stable").drop(columns="_s")
                .reset_index(drop=True))
    timings["checks"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return AuditResult(root, classes, images, objects, problems, duplicates, settings, timings)


def _images_frame(meta: pd.DataFrame, checks: pd.DataFrame, states: list[str], objects: pd.DataFrame,
                  settings: AuditSettings) -> pd.DataFrame:
    ids = meta["image_id"]
    counts = objects["image_id"].value_counts().reindex(ids, fill_value=0).to_numpy()
    ce = clark_evans(objects, meta, min_objects=settings.cluster_min_objects).reindex(ids).to_numpy()
    df = pd.DataFrame({
        "image_id": ids.to_numpy(), "split": meta["split"].to_numpy(), "file": meta["file"].to_numpy(),
        "label_path": [_label_path(str(f), str(lf)) for f, lf in
                       zip(meta["file"], meta.get("label_file", [""] * len(meta)))],
        "width": meta["width"].to_numpy(), "height": meta["height"].to_numpy(),
        "channels": meta["channels"].to_numpy() if "channels" in meta else -1,
        "bit_depth": meta["bit_depth"].to_numpy() if "bit_depth" in meta else -1,
        "label_state": states, "n_objects": counts, "clark_evans": ce,
    }, index=meta.index)
    df = pd.concat([df, checks], axis=1)
    df["density"] = density_class(df["n_objects"], df["label_state"], df["clark_evans"], settings)
    df["grey"] = df["colourfulness"] < GREY_COLOURFULNESS
    extra = [c for c in meta.columns if c not in META_COLUMNS and c not in df.columns]
    return pd.concat([df, meta[extra]], axis=1).reset_index(drop=True)


# ----------------------------------------------------------------------------- tables

def summary_tables(result: AuditResult) -> dict[str, pd.DataFrame]:
    """The audit's summary tables (tidy), by name; written as CSV by :func:`write_audit`."""
    im, ob = result.images, result.objects
    split = im["split"].replace("", "(none)")
    ob_known = ob[ob["class_id"].between(0, len(result.classes) - 1)].assign(
        split=lambda d: d["split"].replace("", "(none)"),
        side_px=lambda d: np.minimum(d["width_px"], d["height_px"]))
    splits = [s for s in SPLITS + ("(none)",) if (split == s).any()]
    g = im.assign(split=split).groupby("split", sort=False)
    per_split = pd.DataFrame({
        "images": g.size(),
        "labelled": g["label_state"].apply(lambda s: int((s == "labelled").sum())),
        "empty": g["label_state"].apply(lambda s: int((s == "empty").sum())),
        "unlabelled": g["label_state"].apply(lambda s: int(s.isin(["unlabelled", "missing"]).sum())),
        "objects": g["n_objects"].sum(),
        "objects_per_image": g["n_objects"].mean().round(2),
    }).reindex(splits).reset_index()

    cls_split = (ob_known.groupby(["split", "class"]).agg(objects=("image_id", "size"),
                                                         images=("image_id", "nunique"))
                 .reindex(pd.MultiIndex.from_product([splits, result.classes], names=["split", "class"]),
                          fill_value=0).reset_index())

    opi = (im.assign(split=split).groupby("split")["n_objects"]
           .describe(percentiles=[0.1, 0.5, 0.9]).reindex(splits).reset_index())

    def q(p):
        return lambda s: float(np.nanpercentile(s, p)) if len(s) else np.nan
    box = (ob_known.groupby("class").agg(
        boxes=("class", "size"), width_p05=("width_px", q(5)), width_median=("width_px", "median"),
        width_p95=("width_px", q(95)), height_p05=("height_px", q(5)), height_median=("height_px", "median"),
        height_p95=("height_px", q(95)), area_frac_median=("area_frac", "median"),
        aspect_median=("aspect", "median"),
        tiny=("side_px", lambda s: int(((s > 0) & (s < result.settings.tiny_box_px)).sum())))
           .reindex(result.classes).reset_index())

    sizes = (im.groupby(["width", "height", "channels", "bit_depth", "file_format"], dropna=False)
             .size().reset_index(name="images").sort_values("images", ascending=False))
    dens = (im.assign(split=split).groupby(["split", "density"]).size()
            .reindex(pd.MultiIndex.from_product([splits, list(DENSITY_CLASSES)], names=["split", "density"]),
                     fill_value=0).reset_index(name="images"))
    quality = (im.assign(split=split).groupby("split")
               .agg(brightness=("brightness", "median"), contrast=("contrast", "median"),
                    sharpness=("sharpness", "median"), colourfulness=("colourfulness", "median"),
                    clipped=("clipped", "median"), grey_images=("grey", "sum"))
               .reindex(splits).reset_index())
    kinds = (result.problems.groupby(["severity", "kind", "source"]).size().reset_index(name="n")
             if len(result.problems) else pd.DataFrame(columns=["severity", "kind", "source", "n"]))
    return {"images_per_split": per_split, "objects_per_class_split": cls_split,
            "objects_per_image": opi, "box_sizes": box, "image_properties": sizes,
            "density": dens, "quality": quality, "problem_kinds": kinds}


# ----------------------------------------------------------------------------- writing

def write_audit(result: AuditResult, out: str | Path, *, overwrite: bool = False,
                figures: bool = True, examples: int = 8, dpi: int = 150) -> Path:
    """Write ``audit.json``, CSV tables and PNG + PDF figures to a new folder ``out``.

    ``figures=False`` skips the figures (they take most of the time); ``examples`` is the
    number of example images with their boxes in ``figures/examples``.

    The folder appears atomically. An existing earlier audit (a folder holding
    ``audit.json``) is replaced; any other non-empty folder only with ``overwrite``.
    ``out`` must lie outside the dataset: an audit never changes the dataset.
    """
    from workbench.core.atomic import new_folder

    out = Path(out)
    root = result.root.resolve()
    if out.resolve() == root or root in out.resolve().parents:
        raise ValueError(f"{out}: audit output must lie outside the dataset folder {root} "
                         "(an audit never modifies the dataset)")
    replace = overwrite or (out / "audit.json").is_file()
    with new_folder(out, overwrite=replace) as tmp:
        (tmp / "audit.json").write_text(json.dumps(result.summary(), indent=1, default=_json_default) + "\n",
                                        encoding="utf-8")
        result.images.to_csv(tmp / "images.csv", index=False)
        result.objects.to_csv(tmp / "objects.csv", index=False)
        result.problems.to_csv(tmp / "problems.csv", index=False)
        result.duplicates.to_csv(tmp / "duplicates.csv", index=False)
        tables = result.tables
        for name, table in tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False)
        if figures:
            (tmp / "figures").mkdir()
            for name, fig in _figures(result, tables, examples).items():
                # constrained layout already fits the figure: no bbox_inches="tight" (a second draw)
                fig.savefig(tmp / "figures" / f"{name}.png", dpi=dpi, pil_kwargs={"compress_level": 1})
                fig.savefig(tmp / "figures" / f"{name}.pdf")
    return out


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, Path):
        return str(v)
    return str(v)


def _figures(result: AuditResult, tables: dict[str, pd.DataFrame], examples: int) -> dict[str, Any]:
    from workbench.report import plots

    figs = {
        "class_counts": plots.class_counts(tables["objects_per_class_split"]),
        "box_sizes": plots.box_size_distribution(result.objects[result.objects["class"] != "?"],
                                                 classes=result.classes),
        "objects_per_image": plots.objects_per_image(result.images),
        "density_classes": plots.density_classes(result.images),
        "quality_proxies": plots.quality_proxies(result.images),
    }
    if examples > 0:
        arrays, boxes, titles = example_images(result, n=examples)
        if arrays:
            figs["examples"] = plots.example_grid(arrays, boxes, titles=titles, classes=result.classes)
    return figs


def example_images(result: AuditResult, *, n: int = 8, max_side: int = 384, seed: int = 0
                   ) -> tuple[list[np.ndarray], list[pd.DataFrame], list[str]]:
    """Up to ``n`` readable labelled images (one per density class first, then seeded picks),
    as RGB arrays scaled to ``max_side``, with their boxes in those pixels."""
    import cv2

    ok = result.images["readable"].astype(bool) & result.images["label_state"].isin(["labelled", "empty"])
    im = result.images[ok]
    if im.empty:
        return [], [], []
    picks = list(im.groupby("density", sort=True).head(1).index)
    rest = im.drop(index=picks).sample(frac=1.0, random_state=seed).index.tolist()
    chosen = im.loc[(picks + rest)[:n]]
    arrays, boxes, titles = [], [], []
    for r in chosen.itertuples(index=False):
        arr = cv2.imread(str(result.root / r.file), cv2.IMREAD_COLOR)
        if arr is None:
            continue
        scale = min(1.0, max_side / max(arr.shape[:2]))
        if scale < 1:
            arr = cv2.resize(arr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        arrays.append(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB))
        b = result.objects.loc[result.objects["image_id"] == r.image_id, ["class", "x1", "y1", "x2", "y2"]].copy()
        b[["x1", "y1", "x2", "y2"]] *= scale
        boxes.append(b)
        titles.append(f"{r.image_id} ({r.split or 'no split'}, {r.n_objects} obj., {r.density})")
    return arrays, boxes, titles
