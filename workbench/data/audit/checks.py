"""The audit's measurements: label files, image files and quality proxies, box layout, density.

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

:class:`AuditSettings` holds every threshold; nothing here writes a file.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from workbench.core.problems import ProblemLog
from workbench.data.canonical import parse_yolo_lines
from workbench.data.leakage import DEFAULT_THRESHOLD

DENSITY_CLASSES = ("unlabelled", "empty", "sparse", "clustered", "dense")
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
    common_class_share: float = 0.9

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
        if not 0 < self.common_class_share <= 1:
            raise ValueError(f"common_class_share must be in (0, 1], got {self.common_class_share}")
        if self.reduce not in _REDUCE_FLAGS:
            raise ValueError(f"reduce must be one of {sorted(_REDUCE_FLAGS)}, got {self.reduce}")


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
    try:
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error:  # a reduced decode of an image narrower than `reduce` px asserts inside OpenCV
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _REDUCE_FLAGS[1][1 if grey else 0])
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


def start_image_checks(paths: list[str], reduce: int, workers: int) -> Callable[[], list[dict[str, Any]]]:
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
    return start_image_checks([str(p) for p in paths], reduce, workers)()


# ----------------------------------------------------------------------------- labels

def label_path(file: str, label_file: str) -> str:
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
        rel = label_path(str(file), str(label_file))
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
