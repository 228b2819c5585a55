"""The audit's findings as problem rows: one row per finding, in the import's problems.csv shape.

Each function turns one kind of measurement (from :mod:`.checks`, the import's ``problems.csv``,
``meta.csv`` or the folders) into rows with the columns :data:`PROBLEM_COLUMNS`; ``severity`` is
error/warning/info and ``source`` is ``import`` (carried over) or ``audit``. :data:`AUDIT_KINDS`
lists every kind the audit adds, with its severity.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.core.problems import ProblemLog
from workbench.data.audit.checks import AuditSettings
from workbench.data.canonical import SPLITS

PROBLEM_COLUMNS = ["image", "file", "object", "kind", "detail", "severity", "action", "source"]
AUDIT_KINDS = {
    "missing_image_file": "error", "unreadable_image": "error", "truncated_image": "error",
    "size_mismatch": "error", "missing_label_file": "error", "malformed_label_line": "error",
    "unknown_class_id": "error", "invalid_box": "error", "box_outside_image": "error",
    "duplicate_image_id": "error", "unknown_split": "error", "unreadable_label_file": "error",
    "box_out_of_bounds": "warning", "zero_area_box": "warning", "duplicate_box": "warning",
    "orphan_label_file": "warning", "unlisted_image": "warning",
    "duplicate_image": "error if across splits, else warning",
    "near_duplicate_image": "error if across splits, else warning",
    "empty_label_file": "info", "unlabelled_image": "info", "tiny_box": "info", "absent_common_class": "warning",
}
# Label files are written with 6 decimals; other tools write 4. Tolerate that rounding.
BOUNDS_TOL = 1e-4


def label_log_problems(log: ProblemLog, label_of: dict[str, str]) -> list[dict[str, Any]]:
    """The label reader's findings (missing, unreadable, empty files, malformed lines), by image."""
    image_of_label = {v: k for k, v in label_of.items()}
    return [{"image": image_of_label.get(p.file, ""), "file": p.file, "object": p.object,
             "kind": p.kind, "detail": p.detail, "severity": p.severity,
             "action": p.action if p.kind != "malformed_label_line" else "none (ultralytics skips it)",
             "source": "audit"} for p in log]


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


def absent_class_problems(objects: pd.DataFrame, images: pd.DataFrame, classes: list[str],
                          settings: AuditSettings) -> list[dict[str, Any]]:
    """A class annotated in at least ``settings.common_class_share`` of the labelled images but not
    in this labelled image: one warning per image and class. Such an image is often annotated
    incompletely (BCCD has images where only the white cell is boxed among ~20 red cells), which
    training reads as background and evaluation as false positives; the audit cannot tell that from
    a field that truly lacks the class, so it only points at it."""
    labelled = images.loc[images["label_state"] == "labelled", ["image_id", "label_path"]]
    if labelled.empty:
        return []
    known = objects[objects["class_id"].between(0, len(classes) - 1)]
    present = pd.crosstab(known["image_id"], known["class"]).reindex(
        index=labelled["image_id"], columns=classes, fill_value=0) > 0
    share = present.mean()
    rows = []
    for cls in [c for c in classes if share[c] >= settings.common_class_share]:
        n_with, n = int(present[cls].sum()), len(present)
        for image_id, label in labelled[~present[cls].to_numpy()].itertuples(index=False):
            rows.append({"image": image_id, "file": label, "object": "", "kind": "absent_common_class",
                         "detail": f"no {cls} box, although {n_with} of {n} labelled images "
                                   f"({100 * n_with / n:.1f} %) have one: check for incomplete annotation",
                         "severity": "warning", "action": "none (audit only)", "source": "audit"})
    return rows


def duplicate_box_problems(pairs: pd.DataFrame, label_of: dict[str, str], settings: AuditSettings
                           ) -> list[dict[str, Any]]:
    """One warning per pair of near-identical boxes from :func:`~.checks.duplicate_boxes`."""
    return [{"image": r.image_id, "file": label_of.get(r.image_id, ""),
             "object": f"line {r.line_a} & line {r.line_b}", "kind": "duplicate_box",
             "detail": f"two {r._1} boxes with IoU {r.iou:.3f} > {settings.dup_iou:g}",
             "severity": "warning", "action": "none (audit only)", "source": "audit"}
            for r in pairs.itertuples(index=False)]


def image_problems(images: pd.DataFrame) -> list[dict[str, Any]]:
    """Missing, truncated or undecodable image files and sizes that disagree with ``meta.csv``."""
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


def duplicate_image_problems(pairs: pd.DataFrame, file_of: dict[str, str]) -> list[dict[str, Any]]:
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


def import_problems(root: Path, meta: pd.DataFrame) -> list[dict[str, Any]]:
    """The import's ``problems.csv`` carried over, its source file names mapped back to image ids."""
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


def meta_problems(meta: pd.DataFrame) -> list[dict[str, Any]]:
    """Image ids listed twice and splits other than those of :data:`~workbench.data.canonical.SPLITS`."""
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


def folder_problems(root: Path, meta: pd.DataFrame) -> list[dict[str, Any]]:
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
