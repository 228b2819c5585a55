"""Which pixel frame an annotation's boxes are in, for images with an EXIF orientation.

A phone or microscope camera may store its pixels sideways with an EXIF orientation tag that
says how to turn them for display. Viewers, annotation tools (LabelImg, labelme, Label Studio
in a browser) and ultralytics' loader all show and train on the turned, upright image, so the
boxes of those tools are in the upright frame, and the canonical dataset stores the upright
pixels (:func:`workbench.core.images.read_image` applies the turn once, at import).

The one exception that can be recognised: a label file that states the size of the *stored*
pixels, where the turn swaps width and height, was drawn on the unturned pixels; its boxes are
turned with the image. Any other disagreement of stated and real size is a ``size_mismatch``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence, TypeVar

from workbench.core.images import ORIENTATIONS, ImageInfo, orient_points
from workbench.core.problems import ProblemLog

Obj = TypeVar("Obj")  # a RawObject (x1, y1, x2, y2, polygon)


def check_frame(declared: Sequence[int] | None, info: ImageInfo, *, where: object, image: object,
                log: ProblemLog) -> tuple[int, tuple[int, int]] | None:
    """Compare the label file's stated ``declared`` (width, height) with the decoded image.

    Records ``exif_orientation`` (info) for a turned image, ``exif_frame`` (warning, resolved)
    when the boxes were drawn on the stored pixels, ``size_mismatch`` (warning) otherwise.
    Returns (orientation, stored size) when the boxes must be turned, else None.
    """
    shown = (info.width, info.height)
    stated = tuple(int(v) for v in declared) if declared is not None else None
    o = info.orientation
    if o != 1:
        stored = info.stored_size or shown
        if stated is not None and stated != shown and stated == stored:
            log.add(where, "exif_frame",
                    f"label file says {stated[0]}x{stated[1]}, the size of the stored pixels; EXIF "
                    f"orientation {o} shows the image {ORIENTATIONS[o]} as {shown[0]}x{shown[1]}",
                    action="boxes taken as drawn on the stored pixels and turned with the image",
                    severity="warning")
            return o, stored
        log.add(image, "exif_orientation",
                f"EXIF orientation {o}: the stored {stored[0]}x{stored[1]} pixels are shown "
                f"{ORIENTATIONS[o]} ({shown[0]}x{shown[1]})",
                action="stored upright as PNG; boxes read in the upright frame the annotation tool showed",
                severity="info")
    if stated is not None and stated != shown:
        log.add(where, "size_mismatch", f"label file says {stated[0]}x{stated[1]}, image is "
                f"{shown[0]}x{shown[1]}", action="used the image's size", severity="warning")
    return None


def turn_objects(objects: list[Obj], orientation: int, stored: tuple[int, int]) -> list[Obj]:
    """Objects with boxes and polygons moved from the stored into the upright frame."""
    out = []
    for o in objects:
        xy = orient_points([(o.x1, o.y1), (o.x2, o.y2)], orientation, stored)
        poly = orient_points(o.polygon, orientation, stored) if o.polygon else None
        out.append(replace(o, x1=float(xy[:, 0].min()), y1=float(xy[:, 1].min()),
                           x2=float(xy[:, 0].max()), y2=float(xy[:, 1].max()),
                           polygon=None if poly is None else [(float(a), float(b)) for a, b in poly]))
    return out
