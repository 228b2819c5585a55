"""The canonical dataset: YOLO layout that ultralytics trains on, plus a per-image table.

On disk (``DIR``)::

    dataset.yaml      class names and split lists (ultralytics reads it directly)
    dataset.json      provenance: source, format, normalisation, counts, creation time
    meta.csv          one row per image: id, file, source path, sha256, size, channels,
                      bit depth, normalisation, split, pixel/perceptual hashes, user columns
    images/<id>.<ext> training-ready 8-bit images (byte copies where already 8-bit)
    labels/<id>.txt   YOLO boxes ``class cx cy w h`` (normalised); the authoritative labels.
                      A missing file means "not labelled", an empty file "no objects".
    objects.csv       the same boxes in pixels, with the source object reference, polygon and
                      the source's difficult / truncated flags (difficult = ignore in evaluation)
    problems.csv      every finding of the import: file, object, kind, detail, action, severity
    {train,val,test}.txt  image lists per split (after ``split``)

Importers only parse a format into :class:`RawDataset`; :func:`write_canonical` is the one
place that decodes images, checks boxes against them and writes the folder atomically.

Images are stored upright: an EXIF orientation is applied once here (the image is stored as
PNG, the transform recorded in ``meta.csv`` ``exif_orientation`` and in ``problems.csv``), and
boxes are read in the frame the annotation tool showed, the upright one, unless the label file
states the size of the stored (unturned) pixels; then they are turned with the image.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import yaml

from workbench import __version__
from workbench.core.atomic import write_text
from workbench.core.tables import utc_now
from workbench.core.images import (
    COPYABLE_SUFFIXES, ORIENTATIONS, ImageInfo, ImageReadError, Normalisation, file_sha256, perceptual_hash,
    pixel_sha256, read_image, save_png, to_uint8)
from workbench.core.problems import ProblemLog, StrictModeError, frame
from workbench.data.orientation import check_frame, turn_objects
from workbench.data.outputs import check_outside, exclusive_output

SPLITS = ("train", "val", "test")
META_COLUMNS = ["image_id", "file", "label_file", "source_image", "source_label", "sha256",
                "width", "height", "channels", "bit_depth", "normalisation", "exif_orientation",
                "pixel_sha256", "phash", "labelled", "n_objects", "split"]
OBJECT_COLUMNS = ["image_id", "class", "x1", "y1", "x2", "y2", "source_object", "polygon", "difficult",
                  "truncated"]
# ultralytics drops images with a side under 10 px ("image size <10 pixels"); so does the import,
# so that the dataset a model trains on and the one it is evaluated on hold the same images.
MIN_IMAGE_SIDE = 10


@dataclass
class RawObject:
    """One annotated object as the source gives it (pixels, possibly out of bounds)."""

    cls: str
    x1: float
    y1: float
    x2: float
    y2: float
    ref: str = ""  # where in the label file: "object 3", "Region Id 180", "line 7"
    polygon: list[tuple[float, float]] | None = None
    difficult: bool = False  # VOC <difficult>: evaluation should ignore it (kept in objects.csv)
    truncated: bool = False  # VOC <truncated>: cut by the image border (kept in objects.csv)


@dataclass
class RawImage:
    """One image and its annotations as parsed from a source format."""

    image_id: str  # unique within the dataset; may contain '/' (e.g. split/set/name)
    image_path: Path | None
    objects: list[RawObject] | None  # None: no label file (unlabelled); []: no objects
    label_path: Path | None = None
    declared_size: tuple[int, int] | None = None  # (width, height) stated by the label file
    meta: dict[str, Any] = field(default_factory=dict)  # user columns; "split" = official split
    pixels: np.ndarray | None = None  # already-decoded pixels (e.g. embedded image data)
    rejected: int = 0  # annotations of the label file the importer could not read (problems logged)
    label_unreadable: bool = False  # a label file exists but could not be read (problem logged)


@dataclass
class RawDataset:
    """What an importer returns: images, the class order if the format defines one, problems."""

    format: str
    source: Path
    images: list[RawImage]
    classes: list[str] | None = None
    problems: ProblemLog = field(default_factory=ProblemLog)
    notes: dict[str, Any] = field(default_factory=dict)  # format-specific facts worth recording


@dataclass
class Dataset:
    """A canonical dataset loaded from disk. ``objects`` is in pixels, one row per box."""

    root: Path
    classes: list[str]
    images: pd.DataFrame
    objects: pd.DataFrame
    problems: pd.DataFrame
    info: dict[str, Any]

    @property
    def yaml_path(self) -> Path:
        return self.root / "dataset.yaml"


# ----------------------------------------------------------------------------- naming

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(image_id: str) -> str:
    """A file-system and ultralytics friendly file stem for an image id."""
    stem = _UNSAFE.sub("_", image_id.replace("/", "__")).strip("._") or "image"
    return stem


# ----------------------------------------------------------------------------- YOLO labels

def format_yolo_line(class_id: int, box: tuple[float, float, float, float], width: int, height: int) -> str:
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    w, h = (x2 - x1) / width, (y2 - y1) / height
    return f"{class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


def parse_yolo_label(text: str, source: str, log: ProblemLog | None = None) -> np.ndarray:
    """Parse YOLO txt into an (n, 5) float array ``class cx cy w h``.

    Malformed lines are recorded in ``log`` (and skipped) or, without a log, raise
    ``ValueError`` naming the file and line. Segment lines (class + polygon) become boxes.
    """
    return parse_yolo_lines(text, source, log)[0]


def parse_yolo_lines(text: str, source: str,
                     log: ProblemLog | None = None) -> tuple[np.ndarray, list[int]]:
    """:func:`parse_yolo_label` plus the 1-based line number of each returned row."""
    rows, linenos = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            vals = [float(v) for v in parts]
        except ValueError:
            vals = None
        ok = vals is not None and (len(vals) == 5 or (len(vals) >= 7 and len(vals) % 2 == 1))
        # inf/nan parse as floats: test finiteness before int() (int(inf) raises OverflowError)
        if ok and (not np.isfinite(vals).all() or vals[0] < 0 or vals[0] != int(vals[0])):
            ok = False
        if not ok:
            msg = (f"line {lineno}: expected 'class cx cy w h' (finite numbers, an integer class), "
                   f"got {line.strip()[:80]!r}")
            if log is None:
                raise ValueError(f"{source}: {msg}")
            log.add(source, "malformed_label_line", msg, action="skipped line",
                    severity="error", object=f"line {lineno}")
            continue
        if len(vals) > 5:  # segment: class x1 y1 x2 y2 ...
            xs, ys = vals[1::2], vals[2::2]
            x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
            vals = [vals[0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        rows.append(vals)
        linenos.append(lineno)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5), linenos


# ----------------------------------------------------------------------------- writing

def write_canonical(raw: RawDataset, out: str | Path, *, classes: Iterable[str] | None = None,
                    normalisation: Normalisation = Normalisation(), strict: bool = False,
                    overwrite: bool = False, discard_versions: bool = False, command: str = "") -> Path:
    """Validate ``raw`` against the pixels and write a canonical dataset folder at ``out``.

    Every problem is recorded (file, object, what, action) in ``problems.csv``; valid data is
    imported. With ``strict`` any error or warning aborts before anything is written and
    raises :class:`StrictModeError` listing all of them. The folder appears atomically, under an
    exclusive lock, never inside the source, and ``overwrite`` keeps a folder holding label
    versions unless ``discard_versions`` (see :mod:`workbench.data.outputs`).
    """
    out = Path(out)
    check_outside(out, [raw.source])
    log = ProblemLog(list(raw.problems.items))
    class_list, class_source = _resolve_classes(raw, classes, log)
    class_index = {c: i for i, c in enumerate(class_list)}
    entries = _dedupe_ids(raw.images, log)
    stale: list[Path] = []

    with exclusive_output(out, overwrite=overwrite, discard_versions=discard_versions, removed=stale) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        meta_rows, object_rows = [], []
        for item, stem in entries:
            written = _write_image(item, stem, tmp, normalisation, log)
            if written is None:
                continue
            row, turn = written
            if turn is not None and item.objects:
                item = replace(item, objects=turn_objects(item.objects, *turn))
            objs = _validate_objects(item, row["width"], row["height"], class_index, log)
            if objs is not None:
                lines = [format_yolo_line(class_index[o.cls], (o.x1, o.y1, o.x2, o.y2),
                                          row["width"], row["height"]) for o in objs]
                write_label = (tmp / "labels" / f"{stem}.txt")
                write_label.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
                row["label_file"] = f"labels/{stem}.txt"
                for o in objs:
                    object_rows.append({
                        "image_id": item.image_id, "class": o.cls, "x1": o.x1, "y1": o.y1,
                        "x2": o.x2, "y2": o.y2, "source_object": o.ref,
                        # numpy rounding: Python round() per vertex dominated large MoNuSeg imports
                        "polygon": json.dumps(np.round(np.asarray(o.polygon, dtype=float), 3).tolist())
                        if o.polygon else "", "difficult": int(o.difficult), "truncated": int(o.truncated)})
            row["labelled"] = objs is not None
            row["n_objects"] = 0 if objs is None else len(objs)
            meta_rows.append(row)

        if strict and len(log):
            raise StrictModeError(log.items)
        if not meta_rows:
            raise ValueError(f"{raw.source}: no readable images found for format {raw.format!r}"
                             + (f"; {len(log)} problem(s):\n" + log.summary() if len(log) else ""))

        meta = _meta_frame(meta_rows)
        objects = pd.DataFrame(object_rows, columns=OBJECT_COLUMNS)
        objects.to_csv(tmp / "objects.csv", index=False)
        log.to_frame().to_csv(tmp / "problems.csv", index=False)
        info = {
            "workbench_version": __version__,
            "created": utc_now(),
            "format": raw.format,
            "source": str(Path(raw.source).resolve()),
            "command": command,
            "classes": class_list,
            "class_order": class_source,
            "normalisation": {"method": normalisation.method, "low": normalisation.low,
                              "high": normalisation.high, "description": normalisation.describe()},
            "images": int(len(meta)),
            "objects": int(len(objects)),
            "objects_per_class": {c: int((objects["class"] == c).sum()) for c in class_list},
            "problems": int(len(log)),
            "split_source": "official" if meta["split"].ne("").any() else "none",
            "notes": raw.notes,
        }
        if stale:
            info["stale_partials_removed"] = [str(p) for p in stale]
        write_text(tmp / "dataset.json", json.dumps(info, indent=2, default=str) + "\n")
        save_meta(tmp, meta, class_list)
    return out


def _resolve_classes(raw: RawDataset, classes: Iterable[str] | None,
                     log: ProblemLog) -> tuple[list[str], str]:
    if classes is not None:
        given = [c.strip() for c in classes if c.strip()]
        if len(set(given)) != len(given):
            raise ValueError(f"class list has duplicates: {given}")
        return given, "given by the user"
    if raw.classes is not None:
        found, source = list(raw.classes), f"defined by the {raw.format} source"
    else:
        found, source = sorted({o.cls for im in raw.images for o in (im.objects or [])}), \
            "sorted names found in the source"
    _report_case_variants(found, raw, log)
    return found, source


def _report_case_variants(classes: list[str], raw: RawDataset, log: ProblemLog) -> None:
    """Class names that differ only in case or spacing (``rbc``/``RBC``) are kept apart, and said so."""
    by_key: dict[str, list[str]] = {}
    for c in classes:
        by_key.setdefault(" ".join(c.split()).casefold(), []).append(c)
    for variants in by_key.values():
        if len(variants) > 1:
            counts = {v: sum(o.cls == v for im in raw.images for o in (im.objects or [])) for v in variants}
            log.add(raw.source, "class_name_variants",
                    f"class names {variants} differ only in case or spacing "
                    f"(objects: {', '.join(f'{v!r} {n}' for v, n in counts.items())})",
                    action="kept as separate classes; pass --classes or fix the labels to merge them",
                    severity="warning")


def _dedupe_ids(images: list[RawImage], log: ProblemLog) -> list[tuple[RawImage, str]]:
    """Keep the first of repeated image ids; give colliding safe stems a suffix."""
    seen_ids: dict[str, RawImage] = {}
    used_stems: set[str] = set()
    out = []
    for im in images:
        if im.image_id in seen_ids:
            first = seen_ids[im.image_id]
            log.add(im.image_path or im.label_path or im.image_id, "duplicate_name",
                    f"image id {im.image_id!r} already used by {first.image_path or first.label_path}",
                    action="skipped image", severity="error")
            continue
        seen_ids[im.image_id] = im
        stem = safe_stem(im.image_id)
        if stem.lower() in used_stems:
            base, k = stem, 2
            while f"{base}-{k}".lower() in used_stems:
                k += 1
            stem = f"{base}-{k}"
            log.add(im.image_path or im.image_id, "duplicate_name",
                    f"file name {base!r} already taken (ids differ only in case or characters)",
                    action=f"stored as {stem}", severity="warning")
        used_stems.add(stem.lower())
        out.append((im, stem))
    return out


def _write_image(item: RawImage, stem: str, tmp: Path, norm: Normalisation, log: ProblemLog
                 ) -> tuple[dict[str, Any], tuple[int, tuple[int, int]] | None] | None:
    """Decode, check and store one image; its meta row and the turn its boxes need (or None)."""
    src = item.image_path
    try:
        if item.pixels is not None:
            arr = item.pixels
            info = ImageInfo(arr.shape[1], arr.shape[0], 1 if arr.ndim == 2 else arr.shape[2],
                             8 * arr.dtype.itemsize, "array")
            sha = ""
        else:
            if src is None:
                log.add(item.label_path or item.image_id, "missing_image",
                        "label file has no matching image", action="skipped", severity="error")
                return None
            arr, info = read_image(src)
            sha = file_sha256(src)
    except ImageReadError as exc:
        log.add(exc.path, "unreadable_image", exc.reason, action="skipped image", severity="error")
        return None
    if min(info.width, info.height) < MIN_IMAGE_SIDE:
        log.add(src or item.label_path or item.image_id, "image_too_small",
                f"image is {info.width}x{info.height} px; ultralytics drops images with a side under "
                f"{MIN_IMAGE_SIDE} px", action="skipped image", severity="error")
        return None
    if info.pages > 1:
        log.add(src, "multi_page_image", f"file holds {info.pages} pages",
                action="imported page 1 only (as ultralytics and OpenCV read it)", severity="warning")
    turn = check_frame(item.declared_size, info, where=item.label_path or src or item.image_id,
                       image=src or item.image_id, log=log)

    arr8, note = to_uint8(arr, norm)
    suffix = src.suffix.lower() if src is not None else ""
    if note == "none" and suffix in COPYABLE_SUFFIXES and info.orientation == 1:
        dest = tmp / "images" / f"{stem}{suffix}"
        shutil.copyfile(src, dest)
    else:
        dest = tmp / "images" / f"{stem}.png"
        save_png(arr8, dest)  # no EXIF in it: every reader sees the upright pixels
        notes = [] if note == "none" else [note]
        if info.orientation != 1:
            notes.append(f"EXIF orientation {info.orientation} applied ({ORIENTATIONS[info.orientation]}), "
                         "stored upright")
        if note == "none":
            notes.append(f"re-encoded {suffix or 'embedded image'} as PNG (pixels unchanged)")
        note = "; ".join(notes)
    row = {
        "image_id": item.image_id, "file": f"images/{dest.name}", "label_file": "",
        "source_image": str(Path(src).resolve()) if src is not None else "(embedded)",
        "source_label": str(Path(item.label_path).resolve()) if item.label_path else "",
        "sha256": sha, "width": info.width, "height": info.height, "channels": info.channels,
        "bit_depth": info.bit_depth, "normalisation": note, "exif_orientation": info.orientation,
        "pixel_sha256": pixel_sha256(arr), "phash": perceptual_hash(arr8),
        "split": str(item.meta.get("split", "") or ""),
    }
    for k, v in item.meta.items():
        if k != "split":
            row[k] = v
    return row, turn


def _validate_objects(item: RawImage, width: int, height: int, class_index: dict[str, int],
                      log: ProblemLog) -> list[RawObject] | None:
    """The image's valid objects (clipped), or None when it is to be imported unlabelled.

    An image whose label file could not be read, or whose annotations were all rejected, is
    unlabelled: an empty label file would tell training that it holds no objects.
    """
    if item.objects is None:
        if not item.label_unreadable:  # an unreadable label file was reported by the importer
            log.add(item.image_path or item.image_id, "missing_label_file",
                    "image has no label file", action="imported without labels (unlabelled)",
                    severity="warning")
        return None
    where = item.label_path or item.image_path or item.image_id
    kept = [k for k in (_check_object(o, o.ref or f"object {i + 1}", width, height, class_index, where, log)
                        for i, o in enumerate(item.objects)) if k is not None]
    annotated = len(item.objects) + item.rejected
    if annotated and not kept:
        log.add(where, "no_valid_objects", f"all {annotated} annotation(s) of the label file were rejected "
                "(see the rows for each)", action="imported as unlabelled, not as an image without objects",
                severity="error")
        return None
    return kept


def _check_object(o: RawObject, ref: str, width: int, height: int, class_index: dict[str, int],
                  where: object, log: ProblemLog) -> RawObject | None:
    """One object checked against the classes and the image; clipped, or None (problem logged)."""
    if o.cls not in class_index:
        near = [c for c in class_index if c.casefold() == o.cls.strip().casefold()]
        log.add(where, "unknown_class", f"class {o.cls!r} is not in {list(class_index)}"
                + (f" (did you mean {near[0]!r}?)" if near else ""),
                action="skipped object", severity="error", object=ref)
        return None
    vals = np.array([o.x1, o.y1, o.x2, o.y2], dtype=float)
    if not np.isfinite(vals).all():
        log.add(where, "invalid_box", f"non-finite coordinates {vals.tolist()}",
                action="skipped object", severity="error", object=ref)
        return None
    x1, y1, x2, y2 = vals
    if x2 < x1 or y2 < y1:
        log.add(where, "inverted_box", f"x1,y1,x2,y2 = {x1:g},{y1:g},{x2:g},{y2:g}",
                action="corners swapped", severity="warning", object=ref)
        x1, x2 = min(x1, x2), max(x1, x2)
        y1, y2 = min(y1, y2), max(y1, y2)
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        outside = (x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height) and (x2 > x1 or y2 > y1)
        if outside:
            log.add(where, "box_outside_image",
                    f"box {x1:g},{y1:g},{x2:g},{y2:g} lies outside the {width}x{height} image",
                    action="skipped object", severity="error", object=ref)
            return None
        log.add(where, "box_out_of_bounds",
                f"box {x1:g},{y1:g},{x2:g},{y2:g} exceeds the {width}x{height} image",
                action="clipped to the image", severity="warning", object=ref)
    if cx2 - cx1 <= 0 or cy2 - cy1 <= 0:
        log.add(where, "zero_area_box", f"box {x1:g},{y1:g},{x2:g},{y2:g} has zero width or height",
                action="kept (training ignores it)", severity="warning", object=ref)
    return replace(o, x1=float(cx1), y1=float(cy1), x2=float(cx2), y2=float(cy2), ref=ref)


def _meta_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    meta = pd.DataFrame(rows)
    for col in META_COLUMNS:
        if col not in meta:
            meta[col] = ""
    extra = [c for c in meta.columns if c not in META_COLUMNS]
    return meta[META_COLUMNS + extra]


# ----------------------------------------------------------------------------- meta + yaml

def save_meta(root: str | Path, meta: pd.DataFrame, classes: list[str]) -> None:
    """Write meta.csv, the split lists and dataset.yaml consistently (each atomically).

    Every split list is written (an emptied split must not keep its old list); dataset.yaml
    names train and val always (ultralytics needs both) and test only when it holds images.
    """
    root = Path(root)
    write_text(root / "meta.csv", meta.to_csv(index=False))
    split = meta["split"].fillna("").astype(str)
    doc: dict[str, Any] = {}
    if split.ne("").any():
        for name in SPLITS:
            files = meta.loc[split == name, "file"]
            write_text(root / f"{name}.txt", "".join(f"./{f}\n" for f in files))
            if len(files) or name != "test":
                doc[name] = f"{name}.txt"
    else:
        # No split yet: ultralytics needs train and val; both point at all images until `split`.
        doc["train"] = "images"
        doc["val"] = "images"
    doc["nc"] = len(classes)
    doc["names"] = {i: c for i, c in enumerate(classes)}
    header = ("# Canonical Cell Workbench dataset (ultralytics-ready). No 'path' key on purpose:\n"
              "# ultralytics then resolves the lists relative to this file.\n")
    write_text(root / "dataset.yaml", header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def read_classes(root: str | Path) -> list[str]:
    doc = yaml.safe_load((Path(root) / "dataset.yaml").read_text(encoding="utf-8"))
    names = doc.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise ValueError(f"{Path(root) / 'dataset.yaml'}: 'names' must be a list or a mapping")


def read_meta(root: str | Path) -> pd.DataFrame:
    path = Path(root) / "meta.csv"
    if not path.exists():
        raise FileNotFoundError(f"{root}: not a canonical dataset (no meta.csv); run 'convert' first")
    meta = pd.read_csv(path, dtype={"image_id": str, "split": str, "label_file": str, "phash": str},
                       keep_default_na=False)
    return meta


def select_split(meta: pd.DataFrame, split: str | None, root: str | Path = "") -> pd.DataFrame:
    """Rows of ``meta`` in ``split`` (all rows for None); a clear error for an unknown or empty split."""
    if split is None:
        return meta
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rows = meta[meta["split"] == split]
    if rows.empty:
        present = sorted(set(meta["split"]) - {""})
        raise ValueError(f"{root}: no images in split {split!r} (splits present: {present or 'none; run split first'})")
    return rows


def read_images(root: str | Path, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The training-ready images of a canonical dataset folder by image id (as stored, 8-bit).

    Boxes of ``Dataset.objects`` are in the pixels of these images.
    """
    root = Path(root)
    meta = read_meta(root)
    files = dict(zip(meta["image_id"].astype(str), meta["file"].astype(str)))
    missing = [i for i in image_ids if str(i) not in files]
    if missing:
        raise ValueError(f"{root / 'meta.csv'}: no image(s) with id {missing[:10]}")
    return {str(i): read_image(root / files[str(i)])[0] for i in image_ids}


def load_dataset(root: str | Path, log: ProblemLog | None = None) -> Dataset:
    """Load a canonical dataset; boxes come from ``labels/`` (authoritative), in pixels."""
    root = Path(root)
    meta = read_meta(root)
    classes = read_classes(root)
    info_path = root / "dataset.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    problems_path = root / "problems.csv"
    problems = (pd.read_csv(problems_path, dtype=str, keep_default_na=False)
                if problems_path.exists() else frame([]))
    objects = read_boxes(root, meta, classes, log)
    return Dataset(root, classes, meta, objects, problems, info)


def read_boxes(root: Path, meta: pd.DataFrame, classes: list[str],
               log: ProblemLog | None = None) -> pd.DataFrame:
    """All boxes of a canonical dataset in pixels: image_id, class_id, class, x1, y1, x2, y2."""
    parts = []
    for image_id, label_file, w, h in meta[["image_id", "label_file", "width", "height"]].itertuples(index=False):
        if not label_file:
            continue
        path = root / label_file
        if not path.exists():
            continue
        arr = parse_yolo_label(path.read_text(encoding="utf-8"), str(path.relative_to(root)), log)
        if len(arr):
            parts.append((image_id, arr, float(w), float(h)))
    if not parts:
        return pd.DataFrame({"image_id": pd.Series(dtype=str), "class_id": pd.Series(dtype=int),
                             "class": pd.Series(dtype=str), **{c: pd.Series(dtype=float) for c in ("x1", "y1", "x2", "y2")}})
    ids = np.concatenate([[i] * len(a) for i, a, _, _ in parts])
    arr = np.concatenate([a for _, a, _, _ in parts])
    wh = np.concatenate([np.tile([w, h], (len(a), 1)) for _, a, w, h in parts])
    cls = arr[:, 0].astype(int)
    names = np.array(classes + ["?"], dtype=object)
    cx, cy, bw, bh = arr[:, 1] * wh[:, 0], arr[:, 2] * wh[:, 1], arr[:, 3] * wh[:, 0], arr[:, 4] * wh[:, 1]
    return pd.DataFrame({"image_id": ids, "class_id": cls,
                         "class": names[np.where((cls >= 0) & (cls < len(classes)), cls, len(classes))],
                         "x1": cx - bw / 2, "y1": cy - bh / 2, "x2": cx + bw / 2, "y2": cy + bh / 2})
