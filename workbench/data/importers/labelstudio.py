"""Label Studio JSON export: a list of tasks, each with ``data`` and ``annotations[].result[]``.

``src`` is the export ``.json`` (or a folder holding exactly one). Images are found by file
name in the ``images`` option folder (then the JSON's folder and ``images/`` beside it),
searched recursively. ``data.image`` may be an upload URL (``/data/upload/1/8f3a2b1c-x.jpg``:
the 8-hex-digit upload prefix is stripped when ``8f3a2b1c-x.jpg`` itself is not found), a
local-files URL (``/data/local-files/?d=dir/x.jpg``) or any URL/path; ``image_key`` picks
another ``data`` field.

Choices (recorded in ``problems.csv`` where they change something):

* per task the latest non-cancelled annotation is used (``updated_at``, then
  ``created_at``, then id); predictions are ignored; a task without a usable annotation
  is imported as unlabelled;
* ``rectanglelabels`` (x, y, width, height in percent of the image, rotated by ``rotation``
  degrees clockwise about the top-left corner), ``polygonlabels`` (points in percent) and
  ``ellipselabels`` (centre and radii in percent) become boxes; a rotated rectangle becomes
  its axis-aligned extent (warning) and keeps its corners as the polygon;
* percentages are converted with the image file's own size; ``original_width`` /
  ``original_height`` are checked against it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from workbench.data.canonical import RawDataset, RawImage, RawObject
from workbench.core.images import IMAGE_SUFFIXES
from workbench.core.problems import ProblemLog
from workbench.data.importers.common import parse_json
from workbench.data.importers.locate import (
    ImageIndex, find_one_json, image_size, resolve_relative, unique_ids)

BOX_TYPES = ("rectanglelabels", "rectangle")
POLY_TYPES = ("polygonlabels", "polygon")
ELLIPSE_TYPES = ("ellipselabels", "ellipse")
# Results that describe the whole task or only carry a label for another region.
NON_REGION_TYPES = ("labels", "choices", "textarea", "number", "rating", "taxonomy", "relation")


def read(src: Path, *, images: str | Path | None = None, image_key: str | None = None,
         **_: Any) -> RawDataset:
    """Parse a Label Studio JSON export (list of tasks)."""
    json_path = find_one_json(src, "Label Studio export")
    log = ProblemLog()
    doc = parse_json(json_path, log)
    if doc is None:
        raise ValueError(f"{json_path}: cannot read the Label Studio export: " + "; ".join(str(p) for p in log))
    tasks = [doc] if isinstance(doc, dict) else doc
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "data" in t for t in tasks):
        raise ValueError(f"{json_path}: not a Label Studio JSON export (expected a list of tasks with 'data')")
    folders = ([Path(images)] if images else []) + [json_path.parent, json_path.parent / "images"]
    index = ImageIndex(folders)

    found = []
    for k, task in enumerate(tasks):
        tref = f"task {task.get('id', k + 1)}"
        path = _task_image(task, image_key, folders, index, json_path, tref, log)
        if path is None:
            continue
        found.append((task, tref, path))

    ids = unique_ids([p for *_, p in found], None)
    out = []
    for (task, tref, path), rid in zip(found, ids):
        ann = _pick_annotation(task, json_path, tref, log)
        objects, declared, rejected = None, None, 0
        if ann is not None:
            objects, declared, rejected = _results(ann.get("result") or [], path, json_path, tref, log)
        out.append(RawImage(rid, path, objects, json_path, declared,
                            {"labelstudio_task": task.get("id", "")}, rejected=rejected))
    return RawDataset("labelstudio", json_path, out, classes=None, problems=log,
                      notes={"json": str(json_path), "tasks": len(tasks)})


# ----------------------------------------------------------------------------- images

def _task_image(task: dict, key: str | None, folders: list[Path], index: ImageIndex,
                json_path: Path, tref: str, log: ProblemLog) -> Path | None:
    data = task.get("data") or {}
    url = data.get(key) if key else data.get("image")
    if url is None and not key:  # the image field may have any name ($img, $picture, ...)
        url = next((v for v in data.values() if isinstance(v, str)
                    and Path(urlparse(v).path).suffix.lower() in IMAGE_SUFFIXES), None)
    if not isinstance(url, str) or not url:
        log.add(json_path, "missing_image", f"no image reference in data (keys {sorted(data)})",
                action="skipped task", severity="error", object=tref)
        return None
    parsed = urlparse(url)
    local = parse_qs(parsed.query).get("d")
    name = unquote(local[0] if local else parsed.path)
    direct = resolve_relative(name, folders) if local else None
    if direct is not None:
        return direct
    hits = index.find(name, strip_upload_prefix=True)
    if not hits and task.get("file_upload"):
        hits = index.find(str(task["file_upload"]), strip_upload_prefix=True)
    if not hits:
        log.add(json_path, "missing_image", f"image {url!r} not found by name in {', '.join(map(str, index.folders))}",
                action="skipped task", severity="error", object=tref)
        return None
    if len(hits) > 1:
        log.add(json_path, "ambiguous_image", f"{len(hits)} files match {url!r}: {', '.join(map(str, hits[:3]))}",
                action=f"used {hits[0]}", severity="warning", object=tref)
    return hits[0]


# ----------------------------------------------------------------------------- annotations

def _pick_annotation(task: dict, json_path: Path, tref: str, log: ProblemLog) -> dict | None:
    anns = task.get("annotations")
    if anns is None:
        anns = task.get("completions") or []  # exports before Label Studio 1.0
    usable = [a for a in anns if isinstance(a, dict) and not a.get("was_cancelled")]
    if not usable:
        if anns:
            log.add(json_path, "cancelled_annotations", f"all {len(anns)} annotation(s) were cancelled",
                    action="imported as unlabelled", severity="info", object=tref)
        elif task.get("predictions"):
            log.add(json_path, "predictions_only", "task has predictions but no annotation",
                    action="imported as unlabelled (predictions ignored)", severity="info", object=tref)
        return None
    best = max(usable, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""),
                                      str(a.get("id", ""))))
    if len(usable) > 1:
        log.add(json_path, "several_annotations", f"{len(usable)} non-cancelled annotations",
                action=f"used the latest (annotation id {best.get('id', '?')})", severity="info", object=tref)
    return best


def _results(results: list, image: Path, json_path: Path, tref: str,
             log: ProblemLog) -> tuple[list[RawObject], tuple[int, int] | None, int]:
    """(objects, the stated original size, regions rejected); percentages are of the image as
    shown (EXIF orientation applied, as the browser showed it to the annotator)."""
    declared = next(((int(r["original_width"]), int(r["original_height"])) for r in results
                     if isinstance(r, dict) and r.get("original_width") and r.get("original_height")), None)
    size = image_size(image) or declared
    if size is None:  # unreadable image: write_canonical reports it
        return [], declared, 0
    w, h = size
    labels_by_id = {r.get("id"): (r.get("value") or {}).get("labels") for r in results
                    if isinstance(r, dict) and r.get("type") == "labels"}
    objects, unsupported, rejected = [], {}, 0
    for j, r in enumerate(results, 1):
        if not isinstance(r, dict):
            continue
        kind, value = str(r.get("type", "")), r.get("value") or {}
        ref = f"{tref} result {r.get('id') or j}"
        if kind in NON_REGION_TYPES:
            continue
        if kind not in BOX_TYPES + POLY_TYPES + ELLIPSE_TYPES:
            unsupported[kind] = unsupported.get(kind, 0) + 1
            continue
        names = value.get(kind if kind.endswith("labels") else "labels") or labels_by_id.get(r.get("id")) or []
        if not names:
            log.add(json_path, "missing_class", f"{kind} region has no label", action="skipped object",
                    severity="error", object=ref)
            rejected += 1
            continue
        if len(names) > 1:
            log.add(json_path, "several_labels", f"region has labels {names}", action=f"used {names[0]!r}",
                    severity="warning", object=ref)
        try:
            box, polygon = _geometry(kind, value, w, h)
        except (KeyError, TypeError, ValueError) as exc:
            log.add(json_path, "invalid_box", f"{kind} value {value!r}: {exc}", action="skipped object",
                    severity="error", object=ref)
            rejected += 1
            continue
        rotation = float(value.get("rotation") or 0.0)
        if rotation % 360 and kind not in POLY_TYPES:
            log.add(json_path, "rotated_box", f"{kind} rotated by {rotation:g} degrees",
                    action="stored the axis-aligned extent of the rotated shape", severity="warning", object=ref)
        objects.append(RawObject(str(names[0]), *box, ref=ref, polygon=polygon))
    for kind, n in unsupported.items():
        log.add(json_path, "unsupported_region", f"{n} result(s) of type {kind!r} (not boxes or polygons)",
                action="skipped", severity="warning", object=tref)
        rejected += n
    return objects, declared, rejected


def _geometry(kind: str, v: dict, w: int, h: int
              ) -> tuple[tuple[float, float, float, float], list[tuple[float, float]] | None]:
    """Pixel box (and polygon) of a region given in percent of a ``w`` x ``h`` image."""
    if kind in POLY_TYPES:
        pts = [(float(x) * w / 100, float(y) * h / 100) for x, y in v["points"]]
        if len(pts) < 2:
            raise ValueError("a polygon needs at least 2 points")
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return (min(xs), min(ys), max(xs), max(ys)), (pts if len(pts) >= 3 else None)
    theta = math.radians(float(v.get("rotation") or 0.0))
    x, y = float(v["x"]) * w / 100, float(v["y"]) * h / 100
    if kind in ELLIPSE_TYPES:  # centre and radii; rotation about the centre
        rx, ry = float(v["radiusX"]) * w / 100, float(v["radiusY"]) * h / 100
        ex = math.hypot(rx * math.cos(theta), ry * math.sin(theta))
        ey = math.hypot(rx * math.sin(theta), ry * math.cos(theta))
        return (x - ex, y - ey, x + ex, y + ey), None
    bw, bh = float(v["width"]) * w / 100, float(v["height"]) * h / 100
    if not theta:
        return (x, y, x + bw, y + bh), None
    # Clockwise on screen (y down) about the top-left corner (x, y).
    c, s = math.cos(theta), math.sin(theta)
    corners = [(x + dx * c - dy * s, y + dx * s + dy * c) for dx, dy in ((0, 0), (bw, 0), (bw, bh), (0, bh))]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    return (min(xs), min(ys), max(xs), max(ys)), corners
