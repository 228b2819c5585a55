"""Instance masks (format name ``masks``): ``images/`` beside ``<class>_masks/`` folders.

Layout: any folder tree below ``src`` in which a folder named ``images`` has sibling folders
``<class>_masks`` holding one mask per image, matched by stem (the file name minus its last
suffix, so ``MAX_x.lif - BAY.tif`` pairs with ``MAX_x.lif - BAY.png``). The class is the folder
prefix (``nucleus_masks`` -> "nucleus", ``mn_masks`` -> "mn"); ``class_names`` renames
(``{"mn": "micronucleus"}``). The folder holding ``images/`` is an acquisition *set*.

Image ids are ``<set folder relative to src>/<stem>`` ('/' separated): the same names recur
in different sets and splits. Where a stem exists in several formats (a raw ``.tif`` and a
stretched ``.png``) the original is imported (:func:`.common.pick_by_stem` records it).

What an instance is (boxes are pixel edges: a pixel in column c spans x1=c..x2=c+1):

* Pixels: an RGBA mask's foreground is alpha > 0, an RGB mask's is RGB != 0, a
  single-channel mask is an integer label image (0 background, each value an id).
* ``"colour"`` rule: an instance is one colour (or id) **and** one connected component of it,
  so touching objects of different colours stay apart and a colour reused for separate
  objects gives several instances (``split_components=False``: one instance per colour/id).
* ``"component"`` rule: an instance is a connected component of the foreground, colours
  ignored. Right where colours do not identify objects, e.g. MNFinder's micronucleus masks
  paint each micronucleus in its parent nucleus's colour.
* ``"auto"`` (default) picks per class: "component" for a class whose colours mostly
  (>= 50%, summed over images) are colours of *another* class in the same image and more so
  than that class's colours are shared back (its colours link to other objects); "colour"
  otherwise. The fractions and the choice are recorded in ``RawDataset.notes``, with the
  counts every rule gives (distinct colours, colour x component, foreground components) per
  class, overall and per split: MNFinder training has 2366 nucleus colours but 2389
  colour x component nuclei, 1797 micronucleus components but 1963 colour x component.
* ``connectivity`` 4 (default) or 8. 4 reproduces MNFinder's counts (training 1797 micronuclei
  = 4-connected components of the alpha channel; 8 gives 1749) and its own evaluation
  (``skimage.measure.label(mask, connectivity=1)``).

Tiny objects are never dropped (micronuclei are a few pixels). Polygons (``polygons=True``)
trace the pixel corners around each instance, so their bounds equal the box.

Official split: from folder names (``training-data`` -> train, ``validation-data`` -> val,
``test*`` -> test) when they name two or more splits (rule in :mod:`.foldersplit`). User metadata: every CSV in the set folder or
above it (up to ``src``) named ``*image-info*.csv`` or having an ``image`` column is joined on
(set folder name = its ``dataset`` column if it has one, image stem); its other columns become
meta columns. Meta also holds ``set`` and ``missing_classes``.

Masks must be lossless: a JPEG (or WebP) mask turns each object's edge into compression noise,
thousands of one-pixel "instances", so such masks are refused (``ValueError`` naming them)
unless ``allow_lossy_masks`` (then each is a ``lossy_mask`` warning). A mask may match the
image as shown (EXIF orientation applied) or its stored pixels; in the second case its boxes
are turned with the image (see :mod:`workbench.data.orientation`).

Problems: a mask whose size differs from its image is an error and is ignored (the image
keeps its other classes and lists the class in ``missing_classes``); an image without a mask
of some class is ``missing_label_file`` (warning) for that class and ``missing_classes`` names
it; an image with no mask at all is imported unlabelled; a mask without an image is an error;
a part of a colour under 10% of that colour's largest part is a ``mask_fragment`` warning
(kept: only a person can tell a paint slip from a reused colour).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage as ndi

from workbench.data.canonical import META_COLUMNS, RawDataset, RawImage, RawObject
from workbench.core.images import ImageReadError, image_header, read_image, upright_size
from workbench.core.problems import ProblemLog
from workbench.data.importers.common import image_files, pick_by_stem
from workbench.data.importers.foldersplit import official_splits, split_from_folders

FORMAT = "masks"
MASK_SUFFIX = "_masks"
RULES = ("auto", "colour", "component")
LINK_THRESHOLD = 0.5
FRAGMENT_SHARE = 0.1  # a part under 10% of its colour's largest part is reported as a fragment
# Tallied per class in RawDataset.notes: what each instance rule would give, side by side.
COUNT_KEYS = ("masks", "instances", "distinct_colours", "colour_components", "foreground_components")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")


# ----------------------------------------------------------------------------- layout

@dataclass(frozen=True)
class MaskSet:
    """One ``images/`` folder and its ``<class>_masks/`` siblings."""

    folder: Path  # the set folder (parent of images/)
    rel: str  # set folder relative to src, '/'-separated ('' for src itself)
    images: dict[str, Path]  # stem -> image file
    masks: dict[str, dict[str, Path]]  # class (folder prefix) -> stem -> mask file


def find_sets(src: Path, log: ProblemLog) -> list[MaskSet]:
    """Every ``images/`` folder below ``src`` (or ``src/images``) with mask folders beside it."""
    sets = []
    for dirpath, dirnames, _ in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        image_dirs = [d for d in dirnames if d.lower() == "images"]
        mask_dirs = [d for d in dirnames if d.lower().endswith(MASK_SUFFIX) and len(d) > len(MASK_SUFFIX)]
        if not image_dirs or not mask_dirs:
            continue
        rel = folder.relative_to(src).as_posix()
        images = pick_by_stem(image_files(folder / image_dirs[0]), log)
        masks = {d[: -len(MASK_SUFFIX)]: pick_by_stem(image_files(folder / d), log) for d in mask_dirs}
        sets.append(MaskSet(folder, "" if rel == "." else rel, images, masks))
    return sets


# ----------------------------------------------------------------------------- pixels -> instances

def mask_codes(arr: np.ndarray) -> np.ndarray:
    """One integer code per pixel, 0 = background, equal codes = equal colour/id.

    RGBA/grey+alpha: foreground where alpha > 0 (colour + 1, so black-with-alpha counts);
    RGB: foreground where any channel != 0; single channel: the integer value itself.
    Channel i of a colour sits at bits ``i * bit_depth`` (see :func:`code_name`).
    """
    if arr.dtype.kind not in "uib":
        raise ValueError(f"mask pixels must be integers, got {arr.dtype}")
    if arr.ndim == 2:
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            raise ValueError("label image has negative values; ids must be >= 0 (0 = background)")
        return arr.astype(np.int64)
    channels = arr.shape[2]
    has_alpha = channels in (2, 4)
    if arr.dtype == np.uint8 and channels == 4:  # the common case: one 32-bit view, no arithmetic
        packed = np.ascontiguousarray(arr).view("<u4")[..., 0] & 0xFFFFFF
        return np.where(arr[..., 3] > 0, packed.astype(np.int32) + 1, 0)
    colour = arr[..., : channels - 1] if has_alpha else arr
    bits = 8 * arr.dtype.itemsize
    if bits * colour.shape[2] > 62:
        raise ValueError(f"mask with {colour.shape[2]} channels of {bits} bits cannot be encoded")
    code = np.zeros(arr.shape[:2], dtype=np.int64)
    for i in range(colour.shape[2]):
        code |= colour[..., i].astype(np.int64) << (bits * i)
    foreground = arr[..., -1] > 0 if has_alpha else code != 0
    return np.where(foreground, code + 1 if has_alpha else code, 0)


def code_name(code: int, arr: np.ndarray) -> str:
    """How a code reads in the mask file: ``id 7`` or ``colour #rrggbb``."""
    if arr.ndim == 2:
        return f"id {code}"
    channels = arr.shape[2]
    n = channels - 1 if channels in (2, 4) else channels
    value = code - 1 if channels in (2, 4) else code
    bits = 8 * arr.dtype.itemsize
    parts = [(value >> (bits * i)) & ((1 << bits) - 1) for i in range(n)]
    return "colour #" + "".join(f"{v:0{bits // 4}x}" for v in parts)


def _structure(connectivity: int) -> np.ndarray:
    return ndi.generate_binary_structure(2, 1 if connectivity == 4 else 2)


def label_instances(code: np.ndarray, *, rule: str, connectivity: int = 4,
                    split_components: bool = True) -> np.ndarray:
    """Instance label image (0 background, 1..n) from a code image under ``rule``."""
    if rule == "component":
        return ndi.label(code != 0, structure=_structure(connectivity))[0]
    if split_components:
        from skimage.measure import label  # one pass over all colours at once

        return label(code, background=0, connectivity=1 if connectivity == 4 else 2)
    _, inverse = np.unique(code, return_inverse=True)  # 0 (background) is the smallest code
    lab = inverse.reshape(code.shape)
    return lab if code.min() == 0 else lab + 1


def instances_from_labels(lab: np.ndarray, code: np.ndarray, *, polygons: bool = True
                          ) -> list[tuple[int, int, int, int, int, list[tuple[float, float]] | None]]:
    """(x1, y1, x2, y2, code, polygon) per label 1..n; boxes and polygons in pixel edges."""
    out = []
    for k, sl in enumerate(ndi.find_objects(lab), 1):
        if sl is None:
            continue
        rows, cols = sl
        inside = lab[sl] == k
        first = tuple(np.argwhere(inside)[0])
        poly = _outline(inside, rows.start, cols.start) if polygons else None
        out.append((cols.start, rows.start, cols.stop, rows.stop, int(code[sl][first]), poly))
    return out


def _outline(inside: np.ndarray, r0: int, c0: int) -> list[tuple[float, float]]:
    """Outline through the pixel corners around a crop's pixels, as (x, y) pixel edges.

    A corner is set where any of its four pixels is inside; the outer contour of that corner
    grid (OpenCV) has exactly the box's bounds (a 1-pixel object is its unit square), and
    cuts concave steps diagonally. Of several parts the largest is kept.
    """
    h, w = inside.shape
    corners = np.zeros((h + 1, w + 1), dtype=np.uint8)
    for dr in (0, 1):
        for dc in (0, 1):
            corners[dr:dr + h, dc:dc + w] |= inside
    contours, _ = cv2.findContours(corners, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    c = max(contours, key=cv2.contourArea).reshape(-1, 2) + (c0, r0)
    return list(map(tuple, c.astype(float).tolist()))


# ----------------------------------------------------------------------------- metadata CSV

def read_image_info(sets: list[MaskSet], src: Path, log: ProblemLog) -> dict[tuple[str, str], dict[str, str]]:
    """(set relative path, stem) -> user columns from the CSVs that apply to each set."""
    folders = {src}
    for s in sets:  # the set folder and every folder above it up to src
        folders.update(p for p in [s.folder, *s.folder.parents] if p == src or src in p.parents)
    tables: dict[Path, pd.DataFrame] = {}
    for folder in sorted(folders):
        for csv in sorted(folder.glob("*.csv")):
            table = _read_csv(csv, log)
            if table is not None:
                tables[csv] = table
    joined: dict[tuple[str, str], dict[str, str]] = {}
    for csv, table in tables.items():
        used = np.zeros(len(table), dtype=bool)
        has_set = "dataset" in table.columns
        index = {}
        for i, row in enumerate(table.itertuples(index=False)):
            d = row._asdict()
            key = (str(d["dataset"]).strip() if has_set else "", Path(str(d["image"]).strip()).stem)
            if key in index:
                log.add(csv, "duplicate_row", f"image {key[1]!r}" + (f" of set {key[0]!r}" if has_set else "")
                        + f" appears again in row {i + 2}", action="kept the first row", severity="warning",
                        object=f"line {i + 2}")
                continue
            index[key] = i
        columns = [c for c in table.columns if c not in ("image", "dataset")]
        for s in sets:
            if csv.parent != s.folder and csv.parent not in s.folder.parents:
                continue
            for stem in s.images:
                i = index.get((s.folder.name if has_set else "", stem))
                if i is None:
                    continue
                used[i] = True
                values = joined.setdefault((s.rel, stem), {})
                for c in columns:
                    values.setdefault(_user_column(c), str(table.iloc[i][c]))
        if (~used).any():
            first = table.loc[~used].iloc[0]
            log.add(csv, "unmatched_metadata", f"{int((~used).sum())} of {len(table)} rows name no imported "
                    f"image, e.g. {first['image']!r}" + (f" in set {first['dataset']!r}" if has_set else ""),
                    action="ignored those rows", severity="info")
    return joined


def _read_csv(csv: Path, log: ProblemLog) -> pd.DataFrame | None:
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, pd.errors.EmptyDataError) as exc:
        if "image-info" in csv.name.lower():
            log.add(csv, "malformed_metadata", f"{type(exc).__name__}: {exc}", action="ignored file",
                    severity="error")
        return None
    table.columns = [str(c).strip() for c in table.columns]
    if "image" not in table.columns:
        if "image-info" in csv.name.lower():
            log.add(csv, "malformed_metadata", f"no 'image' column (columns: {list(table.columns)})",
                    action="ignored file", severity="error")
        return None
    return table


def _user_column(name: str) -> str:
    """A CSV column name that cannot overwrite a column the workbench owns."""
    return f"user_{name}" if name in META_COLUMNS or name in ("set", "missing_classes") else name


# ----------------------------------------------------------------------------- importer

def read(src: Path, *, class_names: Mapping[str, str] | None = None, connectivity: int = 4,
         instances: str | Mapping[str, str] = "auto", split_components: bool = True,
         polygons: bool = True, allow_lossy_masks: bool = False) -> RawDataset:
    """Import an instance-mask tree (see the module docstring for rules and options).

    ``instances``: one of ``"auto"``, ``"colour"``, ``"component"`` for every class, or a
    mapping class -> rule (folder prefix or renamed class; unnamed classes use "auto").
    ``allow_lossy_masks``: import JPEG/WebP masks (refused otherwise).
    """
    src = Path(src)
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if not src.is_dir():
        raise ValueError(f"{src}: expected a folder with images/ and <class>_masks/ folders")
    log = ProblemLog()
    sets = find_sets(src, log)
    if not sets:
        raise ValueError(f"{src}: no 'images' folder with '<class>{MASK_SUFFIX}' folders beside it found")
    names = dict(class_names or {})
    prefixes = sorted({p for s in sets for p in s.masks})
    unknown = sorted(set(names) - set(prefixes))
    if unknown:
        raise ValueError(f"class_names renames {unknown}, but the mask folders give classes {prefixes}")
    cls_of = {p: str(names.get(p, p)) for p in prefixes}
    if len(set(cls_of.values())) != len(cls_of):
        raise ValueError(f"class_names maps several mask folders to one class: {cls_of}")
    requested = _requested_rules(instances, prefixes, cls_of)
    _check_lossless(sets, allow_lossy_masks, log)

    _report_orphan_masks(sets, log)
    pairs = _pair(sets)
    needs_links = any(r == "auto" for r in requested.values())
    link = _link_fractions(pairs, prefixes) if needs_links and len(prefixes) > 1 else {p: 0.0 for p in prefixes}
    rules = {p: _decide(requested[p], p, link) for p in prefixes}
    info = read_image_info(sets, src, log)

    options = {"connectivity": connectivity, "split_components": split_components, "polygons": polygons}
    items, splits, tallies = [], [], []
    for s, stem, image_path, masks in pairs:
        counts = {p: dict.fromkeys(COUNT_KEYS, 0) for p in prefixes}
        item = _image(s, stem, image_path, masks, cls_of, rules, options, counts, log)
        item.meta.update(info.get((s.rel, stem), {}))
        items.append(item)
        tallies.append(counts)
        splits.append(split_from_folders(Path(s.rel).parts, source_name=src.name))
    splits, split_note = official_splits(splits)
    for item, split in zip(items, splits):
        item.meta["split"] = split
    notes = {
        "connectivity": connectivity,
        "instance_rule": {cls_of[p]: _rule_note(rules[p], requested[p], link[p], split_components)
                          for p in prefixes},
        "linked_colour_fraction": {cls_of[p]: round(link[p], 4) for p in prefixes},
        "counts": _sum_counts(tallies, cls_of),
        "counts_by_split": {sp or "(none)": _sum_counts([t for t, x in zip(tallies, splits) if x == sp], cls_of)
                            for sp in sorted(set(splits))},
        "split": split_note,
        "boxes": "pixel edges (a pixel in column c spans x1=c..x2=c+1); no size filter",
    }
    return RawDataset(FORMAT, src, items, classes=[cls_of[p] for p in prefixes], problems=log, notes=notes)


def _sum_counts(tallies: list[dict[str, dict[str, int]]], cls_of: dict[str, str]) -> dict[str, dict[str, int]]:
    return {cls: {k: sum(t[p][k] for t in tallies) for k in COUNT_KEYS} for p, cls in cls_of.items()}


def _image(s: MaskSet, stem: str, image_path: Path, masks: dict[str, Path], cls_of: dict[str, str],
           rules: dict[str, str], options: dict, counts: dict[str, dict[str, int]], log: ProblemLog) -> RawImage:
    """One image with the objects of every class mask it has (see the module docstring)."""
    header = image_header(image_path)
    # a mask may match the image as shown (EXIF turn applied) or its stored pixels
    sizes = None if header is None else {upright_size(*header), header[0]}
    objects: list[RawObject] = []
    missing, label_path, declared = [], None, None
    for p, cls in cls_of.items():
        mask_path = masks.get(p)
        got = None if mask_path is None else _mask_objects(mask_path, sizes, cls, rules[p], counts=counts[p],
                                                           log=log, **options)
        if got is None:
            missing.append(cls)
            continue
        objects.extend(got[0])
        label_path, declared = label_path or mask_path, declared or got[1]
    labelled = label_path is not None
    if labelled:  # an image with no mask at all is reported once, as unlabelled, by the writer
        for p, cls in cls_of.items():
            if p not in masks:
                log.add(image_path, "missing_label_file", f"no mask in {p}{MASK_SUFFIX}/ for {stem!r}",
                        action=f"imported without {cls!r} objects", severity="warning", object=cls)
    meta = {"set": s.folder.name, "missing_classes": ";".join(missing) if labelled else ""}
    image_id = f"{s.rel}/{stem}" if s.rel else stem
    return RawImage(image_id, image_path, objects if labelled else None, label_path, declared_size=declared,
                    meta=meta)


def _requested_rules(instances: str | Mapping[str, str], prefixes: list[str],
                     cls_of: dict[str, str]) -> dict[str, str]:
    if isinstance(instances, str):
        given = {p: instances for p in prefixes}
    else:
        by_name = {v: k for k, v in cls_of.items()}
        given = {}
        for key, rule in instances.items():
            prefix = key if key in cls_of else by_name.get(key)
            if prefix is None:
                raise ValueError(f"instances names class {key!r}; classes are {sorted(cls_of.values())}")
            given[prefix] = rule
        given = {p: given.get(p, "auto") for p in prefixes}
    bad = {p: r for p, r in given.items() if r not in RULES}
    if bad:
        raise ValueError(f"instance rule must be one of {RULES}, got {bad}")
    return given


def _pair(sets: list[MaskSet]) -> list[tuple[MaskSet, str, Path, dict[str, Path]]]:
    """(set, stem, image, class -> mask) for every image."""
    return [(s, stem, image_path, {p: m[stem] for p, m in s.masks.items() if stem in m})
            for s in sets for stem, image_path in sorted(s.images.items())]


def _check_lossless(sets: list[MaskSet], allow: bool, log: ProblemLog) -> None:
    """Refuse masks in a lossy format (or record each, when the user insists)."""
    lossy = sorted(m for s in sets for masks in s.masks.values() for m in masks.values()
                   if m.suffix.lower() in LOSSY_SUFFIXES)
    if not lossy:
        return
    if not allow:
        shown = "\n  ".join(str(m) for m in lossy[:5]) + (f"\n  ... and {len(lossy) - 5} more" if len(lossy) > 5 else "")
        raise ValueError(f"{len(lossy)} mask file(s) are in a lossy format (JPEG/WebP): compression noise "
                         f"turns every object's edge into many one-pixel instances:\n  {shown}\n"
                         "Export the masks as PNG or TIFF, or pass --allow-lossy-masks to import them anyway")
    for m in lossy:
        log.add(m, "lossy_mask", f"mask saved as {m.suffix} (lossy): object edges carry compression noise",
                action="imported as given (--allow-lossy-masks); expect spurious tiny instances",
                severity="warning")


def _report_orphan_masks(sets: list[MaskSet], log: ProblemLog) -> None:
    for s in sets:
        for p, masks in s.masks.items():
            for stem, mask_path in sorted(masks.items()):
                if stem not in s.images:
                    log.add(mask_path, "missing_image", f"no image {stem!r} in {s.folder / 'images'}",
                            action="skipped mask", severity="error")


def _read_codes(mask_path: Path) -> np.ndarray:
    arr, _ = read_image(mask_path)
    return mask_codes(arr)


def _link_fractions(pairs: list[tuple[MaskSet, str, Path, dict[str, Path]]],
                    prefixes: list[str]) -> dict[str, float]:
    """Per class: share of its colours (summed over images) found in another class's mask."""
    shared = {p: 0 for p in prefixes}
    total = {p: 0 for p in prefixes}
    for _, _, _, masks in pairs:
        colours = {}
        for p, mask_path in masks.items():
            try:
                code = _read_codes(mask_path)
            except (ImageReadError, ValueError):
                continue  # reported when the mask is imported
            colours[p] = np.unique(code[code != 0])
        for p, mine in colours.items():
            others = [c for q, c in colours.items() if q != p]
            total[p] += len(mine)
            if others:
                shared[p] += int(np.isin(mine, np.concatenate(others)).sum())
    return {p: shared[p] / total[p] if total[p] else 0.0 for p in prefixes}


def _decide(requested: str, prefix: str, link: dict[str, float]) -> str:
    if requested != "auto":
        return requested
    linked = link[prefix] >= LINK_THRESHOLD and link[prefix] > min(link.values())
    return "component" if linked else "colour"


def _rule_note(rule: str, requested: str, fraction: float, split_components: bool) -> str:
    why = "given" if requested != "auto" else (
        f"auto: {fraction:.0%} of its colours are another class's colours (links, not ids)"
        if rule == "component" else f"auto: {fraction:.0%} of its colours shared with another class")
    what = ("connected component of the foreground, colours ignored" if rule == "component" else
            "colour x connected component" if split_components else "one instance per colour/id")
    return f"{what} ({why})"


def _mask_objects(mask_path: Path, sizes: set[tuple[int, int]] | None, cls: str, rule: str, *,
                  connectivity: int, split_components: bool, polygons: bool, counts: dict[str, int],
                  log: ProblemLog) -> tuple[list[RawObject], tuple[int, int]] | None:
    """(objects, mask size) of one mask, or None (problem logged) when the mask cannot be used."""
    try:
        arr, info = read_image(mask_path)
        code = mask_codes(arr)
    except ImageReadError as exc:
        log.add(mask_path, "unreadable_label_file", exc.reason, action=f"imported without {cls!r} objects",
                severity="error")
        return None
    except ValueError as exc:
        log.add(mask_path, "malformed_label_file", str(exc), action=f"imported without {cls!r} objects",
                severity="error")
        return None
    if sizes is not None and (info.width, info.height) not in sizes:
        shown = " or ".join(f"{w}x{h}" for w, h in sorted(sizes))
        log.add(mask_path, "size_mismatch", f"mask is {info.width}x{info.height}, image is {shown}",
                action=f"mask ignored; imported without {cls!r} objects", severity="error")
        return None
    lab = label_instances(code, rule=rule, connectivity=connectivity, split_components=split_components)
    found = instances_from_labels(lab, code, polygons=polygons)
    _count(counts, code, lab, rule, connectivity, split_components)
    where = f"{mask_path.parent.name}/{mask_path.name}"
    objects = [RawObject(cls, float(x1), float(y1), float(x2), float(y2),
                         ref=f"{where} instance {k} ({code_name(c, arr)})", polygon=poly)
               for k, (x1, y1, x2, y2, c, poly) in enumerate(found, 1)]
    if rule == "colour" and split_components:
        _report_fragments(lab, [f[4] for f in found], objects, mask_path, log)
    return objects, (info.width, info.height)


def _report_fragments(lab: np.ndarray, codes: list[int], objects: list[RawObject], mask_path: Path,
                      log: ProblemLog) -> None:
    """Warn about small parts of a colour that has a much larger part (likely a paint slip).

    They stay instances: a colour reused for two real objects looks the same, and only a
    person can tell; MNFinder has both (e.g. a 6 px piece beside a 377 px nucleus).
    """
    areas = np.bincount(lab.ravel())[1:]
    largest: dict[int, int] = {}
    for c, a in zip(codes, areas):
        largest[c] = max(largest.get(c, 0), int(a))
    for o, c, a in zip(objects, codes, areas):
        if a < FRAGMENT_SHARE * largest[c]:
            log.add(mask_path, "mask_fragment", f"{a} px part of a colour whose largest part has {largest[c]} px",
                    action="kept as its own instance", severity="warning", object=o.ref)


def _count(counts: dict[str, int], code: np.ndarray, lab: np.ndarray, rule: str, connectivity: int,
           split_components: bool) -> None:
    """Tally the instance counts of both rules, so notes show what each would give."""
    counts["masks"] += 1
    counts["instances"] += int(lab.max())
    counts["distinct_colours"] += int(len(np.unique(code[code != 0])))
    colour_rule = lab if (rule == "colour" and split_components) else label_instances(
        code, rule="colour", connectivity=connectivity)
    component_rule = lab if rule == "component" else label_instances(
        code, rule="component", connectivity=connectivity)
    counts["colour_components"] += int(colour_rule.max())
    counts["foreground_components"] += int(component_rule.max())
