"""labelme JSON: one file per image with ``shapes`` (``label``, ``points``, ``shape_type``).

``src`` is a folder (searched recursively) of labelme ``.json`` files, or one such file.
The image is ``imagePath`` relative to the JSON (absolute and Windows paths accepted) or to
the ``images`` option folder; when it does not resolve, the embedded base64 ``imageData``
(what labelme itself shows), and only without ``imageData`` a file of that name found
elsewhere below the source or ``images`` (reported as ``image_found_elsewhere``).
``imageWidth``/``imageHeight`` are checked against the image.

Shapes become boxes: ``rectangle`` from its two corners; ``polygon``, ``linestrip``,
``line``, ``points`` and ``mask`` from the extent of their points (polygons are kept);
``circle`` (centre + a point on the circle) from centre +- radius. A single ``point`` has
no extent and is skipped with a warning. JSON files without ``shapes`` are not labelme
files and are reported, not imported. Images without a JSON are not imported (labelme
writes no file for an unannotated image, so there is nothing to say they are negatives).
"""
from __future__ import annotations

import base64
import binascii
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from workbench.data.canonical import RawDataset, RawImage, RawObject
# The same mode handling as image files get (16-bit, palette, CMYK), for embedded data.
from workbench.core.images import exif_orientation, orient_array, to_array
from workbench.core.problems import ProblemLog
from workbench.data.importers.common import parse_json
from workbench.data.importers.locate import ImageIndex, resolve_relative, unique_ids

POLY_TYPES = ("polygon", "linestrip", "line", "points", "mask")


def read(src: Path, *, images: str | Path | None = None, **_: Any) -> RawDataset:
    """Parse a folder of labelme JSON files."""
    log = ProblemLog()
    files = [src] if src.is_file() else sorted(
        p for p in src.rglob("*.json") if not any(part.startswith(".") for part in p.relative_to(src).parts))
    if not files:
        raise ValueError(f"{src}: no labelme .json files found")
    root = src.parent if src.is_file() else src
    index = ImageIndex(([Path(images)] if images else []) + [root])  # lists folders only when asked
    parsed = []
    for path in files:
        doc = parse_json(path, log)
        if doc is None:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
            log.add(path, "not_labelme", "JSON has no 'shapes' list (not a labelme file)",
                    action="skipped file", severity="warning")
            continue
        found = _image(doc, path, images, index, log)
        if found is None:
            continue
        image_path, pixels = found
        objects, rejected = _shapes(doc["shapes"], path, log)
        parsed.append((path, image_path, pixels, objects, _declared(doc), rejected))

    ids = unique_ids([p for p, *_ in parsed], root)
    out = [RawImage(rid, image_path, objects, path, declared, {}, pixels, rejected=rejected)
           for (path, image_path, pixels, objects, declared, rejected), rid in zip(parsed, ids)]
    if not out:
        raise ValueError(f"{src}: no labelme files could be imported; {len(log)} problem(s):\n"
                         + "\n".join(str(p) for p in log))
    return RawDataset("labelme", src, out, classes=None, problems=log)


def _image(doc: dict, path: Path, images: str | Path | None, index: ImageIndex,
           log: ProblemLog) -> tuple[Path | None, np.ndarray | None] | None:
    """(image file, None) or (None, embedded pixels) for one labelme JSON; None if neither."""
    name = str(doc.get("imagePath") or "")
    if name:
        direct = resolve_relative(name, [path.parent] + ([Path(images)] if images else []))
        if direct is not None:
            return direct, None
    elsewhere = index.find(name) if name else []
    if doc.get("imageData"):
        pixels = _decode_image_data(doc.get("imageData"), path, log)
        if pixels is not None:
            also = f"; a file of that name is at {elsewhere[0]}" if elsewhere else ""
            log.add(path, "embedded_image", f"imagePath {name!r} does not resolve{also}",
                    action="used the embedded imageData (what labelme shows)",
                    severity="warning" if elsewhere else "info")
            return None, pixels
    if elsewhere:
        more = f" ({len(elsewhere)} files of that name)" if len(elsewhere) > 1 else ""
        log.add(path, "image_found_elsewhere", f"imagePath {name!r} does not resolve and the JSON has no "
                f"imageData{more}", action=f"used {elsewhere[0]}", severity="warning")
        return elsewhere[0], None
    log.add(path, "missing_image", f"imagePath {name!r} not found and no usable imageData", action="skipped",
            severity="error")
    return None


def _shapes(shapes: list, path: Path, log: ProblemLog) -> tuple[list[RawObject], int]:
    """The shapes as objects, and how many were rejected (problems logged)."""
    objects, rejected = [], 0
    for k, sh in enumerate(shapes, 1):
        ref = f"shape {k}"
        if not isinstance(sh, dict):
            log.add(path, "invalid_shape", "shape is not an object", action="skipped object",
                    severity="error", object=ref)
            rejected += 1
            continue
        label = str(sh.get("label") or "").strip()
        kind = str(sh.get("shape_type") or "polygon")  # labelme 3 omitted it for polygons
        ref = f"shape {k} ({label or 'no label'})"
        try:
            pts = np.asarray(sh.get("points"), dtype=float).reshape(-1, 2)
        except (TypeError, ValueError):
            pts = np.empty((0, 2))
        if not label:
            log.add(path, "missing_class", "shape has no label", action="skipped object",
                    severity="error", object=ref)
            rejected += 1
            continue
        if kind == "point" or len(pts) == 1:
            log.add(path, "point_shape", f"{kind} shape has a single point and no extent",
                    action="skipped object", severity="warning", object=ref)
            rejected += 1
            continue
        if len(pts) < 2 or not np.isfinite(pts).all():
            log.add(path, "invalid_shape", f"{kind} needs at least 2 finite points, got {pts.tolist()}",
                    action="skipped object", severity="error", object=ref)
            rejected += 1
            continue
        polygon = None
        if kind == "circle":
            (cx, cy), (px, py) = pts[0], pts[1]
            r = math.hypot(px - cx, py - cy)
            box = (cx - r, cy - r, cx + r, cy + r)
        else:
            if kind not in ("rectangle",) + POLY_TYPES:
                log.add(path, "unknown_shape_type", f"shape_type {kind!r}", action="box from its points",
                        severity="warning", object=ref)
            box = (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
            if kind == "polygon" and len(pts) >= 3:
                polygon = [(float(x), float(y)) for x, y in pts]
        flags = sh.get("flags") if isinstance(sh.get("flags"), dict) else {}
        objects.append(RawObject(label, *(float(v) for v in box), ref=ref, polygon=polygon,
                                 difficult=bool(flags.get("difficult"))))
    return objects, rejected


def _decode_image_data(data: Any, path: Path, log: ProblemLog) -> np.ndarray | None:
    if not data:
        return None
    try:
        raw = base64.b64decode(str(data), validate=False)
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return orient_array(to_array(im), exif_orientation(im))  # upright, as labelme shows it
    except (binascii.Error, ValueError, OSError) as exc:
        log.add(path, "unreadable_image", f"imageData cannot be decoded: {exc}", action="skipped",
                severity="error")
        return None


def _declared(doc: dict) -> tuple[int, int] | None:
    try:
        return int(doc["imageWidth"]), int(doc["imageHeight"])
    except (KeyError, TypeError, ValueError):
        return None
