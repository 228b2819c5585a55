"""YOLO txt labels (ultralytics / darknet): one ``class cx cy w h`` line per box, normalised.

Accepted sources:

* a ``data.yaml`` / ``dataset.yaml`` (or a folder holding one): ``names`` as a list or an
  id -> name mapping, optional ``path``, and ``train`` / ``val`` / ``test`` given as folders,
  ``.txt`` image lists, or lists of those. The key an image is listed under is its official
  split. A ``path`` that does not exist here (the author's machine) falls back to the
  yaml's folder; ``../x`` entries that do not resolve are retried as ``x`` (as ultralytics
  does for Roboflow exports).
* a folder with ``images/`` and ``labels/`` folders (``images/train`` <-> ``labels/train``,
  or Roboflow's ``train/images`` <-> ``train/labels``); a path component ``train``, ``val``
  (``valid``, ``validation``) or ``test`` gives the official split.
* a folder with images and their ``.txt`` side by side (LabelImg's YOLO mode).

An image's label file is found as ultralytics finds it: the last ``/images/`` of the image
path becomes ``/labels/`` and the suffix ``.txt``. A missing label file means "not
labelled" (objects None); an empty one means "no objects" (recorded as info); one that
cannot be read (UTF-16, binary), or whose lines were all rejected, is "not labelled" too,
never "no objects". Files are read as UTF-8 with an optional BOM (as ultralytics does).
Class names come from the yaml, else ``classes.txt`` / ``obj.names``, else the ``names``
option, else the ids themselves ("0", "1", ...). Segment lines become boxes that keep
their polygon.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from workbench.data.canonical import RawDataset, RawImage, RawObject, SPLITS, parse_yolo_lines
from workbench.core.problems import ProblemLog
from workbench.data.importers.common import image_files
from workbench.data.importers.locate import image_size, unique_ids

YAML_NAMES = ("data.yaml", "dataset.yaml")
NAMES_FILES = ("classes.txt", "obj.names")
# Rounding tolerance of normalised coordinates: 6 decimals on cx and w add up to 1e-6.
SNAP = 1e-6
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def read(src: Path, *, names: list[str] | None = None, **_: Any) -> RawDataset:
    """Parse a YOLO dataset (yaml, ``images``/``labels`` folder, or side-by-side folder)."""
    log = ProblemLog()
    yaml_path = _find_yaml(src)
    notes: dict[str, Any] = {}
    if yaml_path is not None:
        id2name, root, entries = _from_yaml(yaml_path, log)
        notes["yaml"] = str(yaml_path)
        names_source = f"names in {yaml_path.name}"
        if not id2name:
            id2name, names_source = _fallback_names(names, entries, log, yaml_path)
    else:
        root = src
        entries = _from_folder(src)
        if not entries:
            raise ValueError(f"{src}: no images found for a YOLO dataset (looked for data.yaml, "
                             "images/ + labels/, or images with .txt beside them)")
        id2name, names_source = _fallback_names(names, entries, log, src)
    notes["names_source"] = names_source

    classes = [id2name[k] for k in sorted(id2name)]
    if sorted(id2name) != list(range(len(id2name))):
        notes["class_ids_renumbered"] = {int(k): i for i, k in enumerate(sorted(id2name))}
    ids = unique_ids([p for p, _ in entries], root)
    images = []
    used_labels: set[Path] = set()
    for (path, split), image_id in zip(entries, ids):
        label = label_path_for(path)
        objects, rejected, unreadable = None, 0, False
        if label.is_file():
            used_labels.add(label.resolve())
            objects, rejected = _read_label(label, path, id2name, log)
            unreadable = objects is None
        images.append(RawImage(image_id, path, objects, label if label.is_file() else None,
                               meta={"split": split}, rejected=rejected, label_unreadable=unreadable))
    _orphan_labels(entries, used_labels, log)
    return RawDataset("yolo", src, images, classes=_dedupe_names(classes, log, src),
                      problems=log, notes=notes)


def label_path_for(image: Path) -> Path:
    """The ultralytics label path of an image: last ``/images/`` -> ``/labels/``, ``.txt``."""
    s = str(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        s = sb.join(s.rsplit(sa, 1))
    return Path(s).with_suffix(".txt")


# ----------------------------------------------------------------------------- sources

def _find_yaml(src: Path) -> Path | None:
    if src.is_file():
        if src.suffix.lower() not in (".yaml", ".yml"):
            raise ValueError(f"{src}: a YOLO source is a data.yaml or a folder, not a {src.suffix} file")
        return src
    for name in YAML_NAMES:
        if (src / name).is_file():
            return src / name
    return None


def _from_yaml(yaml_path: Path, log: ProblemLog) -> tuple[dict[int, str], Path, list[tuple[Path, str]]]:
    try:
        doc = yaml.safe_load(yaml_path.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{yaml_path}: cannot read the YOLO dataset yaml: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{yaml_path}: expected a mapping with 'names' and 'train'/'val', got {type(doc).__name__}")
    id2name = _parse_names(doc, yaml_path, log)
    root = _dataset_root(doc, yaml_path, log)

    per_split: dict[str, list[Path]] = {}
    sources: dict[str, tuple[str, ...]] = {}
    for split in SPLITS:
        value = doc.get(split)
        if value in (None, "", []):
            continue
        items = value if isinstance(value, list) else [value]
        files: list[Path] = []
        resolved = []
        for item in items:
            where = _resolve_entry(str(item), root, yaml_path.parent)
            if where is None:
                log.add(yaml_path, "missing_split_source", f"{split}: {item!r} not found under {root}",
                        action=f"no {split} images from it", severity="error", object=split)
                continue
            resolved.append(str(where.resolve()))
            files.extend(image_files(where, recursive=True) if where.is_dir()
                         else _read_image_list(where, root, log))
        per_split[split] = files
        sources[split] = tuple(resolved)

    # "train: images / val: images" (one set of images, no real split): take no split.
    splits = list(per_split)
    same = {s for s in splits for t in splits if s != t and sources[s] == sources[t]}
    if same:
        log.add(yaml_path, "no_official_split",
                f"{' and '.join(sorted(same))} name the same images", action="imported without a split",
                severity="info")
    entries: list[tuple[Path, str]] = []
    seen: dict[Path, str] = {}
    for split, files in per_split.items():
        for f in files:
            key = f.resolve()
            if key in seen:
                if split not in same:
                    log.add(f, "image_in_two_splits", f"listed in {seen[key]} and {split}",
                            action=f"kept in {seen[key]}", severity="warning")
                continue
            seen[key] = split
            entries.append((f, "" if split in same else split))
    if not entries:
        raise ValueError(f"{yaml_path}: no images found in train/val/test"
                         + (f"; {len(log)} problem(s):\n{log.summary()}" if len(log) else ""))
    return id2name, root, entries


def _parse_names(doc: dict, yaml_path: Path, log: ProblemLog) -> dict[int, str]:
    names = doc.get("names")
    if isinstance(names, dict):
        try:
            id2name = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise ValueError(f"{yaml_path}: 'names' keys must be integer class ids, got {list(names)}") from None
    elif isinstance(names, list):
        id2name = {i: str(v) for i, v in enumerate(names)}
    elif names is None:
        id2name = {}
    else:
        raise ValueError(f"{yaml_path}: 'names' must be a list or a mapping, got {names!r}")
    nc = doc.get("nc")
    if id2name and nc is not None and int(nc) != len(id2name):
        log.add(yaml_path, "class_count_mismatch", f"nc is {nc} but names lists {len(id2name)} classes",
                action="used names", severity="warning")
    if not id2name and nc is not None:
        id2name = {i: str(i) for i in range(int(nc))}
        log.add(yaml_path, "no_class_names", f"no 'names', only nc={nc}",
                action="classes named by their ids", severity="warning")
    return id2name


def _dataset_root(doc: dict, yaml_path: Path, log: ProblemLog) -> Path:
    base = yaml_path.parent
    given = doc.get("path")
    if not given:
        return base
    p = Path(str(given))
    for cand in ([p] if p.is_absolute() else [base / p, Path.cwd() / p]):
        if cand.is_dir():
            return cand
    log.add(yaml_path, "missing_dataset_path", f"path {given!r} does not exist on this machine",
            action=f"resolved train/val/test against {base}", severity="warning")
    return base


def _resolve_entry(entry: str, root: Path, base: Path) -> Path | None:
    cands = [Path(entry)] if Path(entry).is_absolute() else [root / entry, base / entry]
    if entry.startswith("../"):  # Roboflow's "../train/images" beside the yaml
        cands += [root / entry[3:], base / entry[3:]]
    return next((c for c in cands if c.exists()), None)


def _read_image_list(txt: Path, root: Path, log: ProblemLog) -> list[Path]:
    out = []
    for lineno, line in enumerate(txt.read_text(encoding="utf-8-sig").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        cands = [p] if p.is_absolute() else [txt.parent / line, root / line]
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            log.add(txt, "missing_image", f"listed image {line!r} not found", action="skipped",
                    severity="error", object=f"line {lineno}")
        else:
            out.append(hit)
    return out


def _from_folder(src: Path) -> list[tuple[Path, str]]:
    image_dirs = sorted(d for d in src.rglob("images") if d.is_dir())
    if (src.name == "images") and src.is_dir():
        image_dirs.insert(0, src)
    if image_dirs:
        files = sorted({f for d in image_dirs for f in image_files(d, recursive=True)})
    else:  # side by side
        files = image_files(src, recursive=True)
    return [(f, _split_from_path(f, src)) for f in files]


def _split_from_path(path: Path, src: Path) -> str:
    try:
        parts = path.relative_to(src).parts[:-1]
    except ValueError:
        parts = path.parts[:-1]
    for part in parts:
        if part.lower() in SPLIT_ALIASES:
            return SPLIT_ALIASES[part.lower()]
    return ""


def _fallback_names(names: list[str] | None, entries: list[tuple[Path, str]], log: ProblemLog,
                    where: Path) -> tuple[dict[int, str], str]:
    if names:
        return {i: str(n) for i, n in enumerate(names)}, "given by the user"
    label_dirs = {label_path_for(p).parent for p, _ in entries}
    cands = [d / n for d in sorted(label_dirs) for n in NAMES_FILES]
    cands += [where / n for n in NAMES_FILES] if where.is_dir() else []
    for c in cands:
        if c.is_file():
            lines = [ln.strip() for ln in c.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
            return {i: n for i, n in enumerate(lines)}, str(c)
    # Names unknown: name classes by id so nothing is lost; the user can rename later.
    ids: set[int] = set()
    for p, _ in entries:
        lab = label_path_for(p)
        if lab.is_file():
            try:
                text = lab.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError):
                continue  # reported when the label is read
            arr, _lines = parse_yolo_lines(text, str(lab), ProblemLog())
            ids.update(int(c) for c in arr[:, 0])
    n = max(ids) + 1 if ids else 0
    log.add(where, "no_class_names", "no data.yaml, classes.txt or obj.names found",
            action=f"classes named by their ids 0..{n - 1}", severity="warning")
    return {i: str(i) for i in range(n)}, "class ids (no names found)"


# ----------------------------------------------------------------------------- labels

def _read_label(label: Path, image: Path, id2name: dict[int, str],
                log: ProblemLog) -> tuple[list[RawObject] | None, int]:
    """(objects, lines rejected); objects None when the file cannot be read (problem logged)."""
    try:
        text = label.read_text(encoding="utf-8-sig")  # a BOM must not hide the first line
    except (OSError, UnicodeDecodeError) as exc:
        log.add(label, "unreadable_label_file", f"{type(exc).__name__}: {exc} (YOLO labels are UTF-8 text)",
                action="imported as unlabelled", severity="error")
        return None, 0
    if not text.strip():
        log.add(label, "empty_label_file", "label file has no lines (image has no objects)",
                action="imported with no objects", severity="info")
        return [], 0
    arr, linenos = parse_yolo_lines(text, str(label), log)
    rejected = sum(1 for ln in text.splitlines() if ln.strip()) - len(arr)
    size = image_size(image)
    if size is None:  # write_canonical reports the unreadable image and skips it
        return [], rejected
    w, h = size
    lines = text.splitlines()
    objects = []
    for (cid, cx, cy, bw, bh), lineno in zip(arr, linenos):
        ref = f"line {lineno}"
        if int(cid) not in id2name:
            log.add(label, "unknown_class",
                    f"class id {int(cid)} is not in names (ids {_id_range(id2name)})",
                    action="skipped object", severity="error", object=ref)
            rejected += 1
            continue
        vals = [float(v) for v in lines[lineno - 1].split()]
        polygon = ([(x * w, y * h) for x, y in zip(vals[1::2], vals[2::2])]
                   if len(vals) > 5 else None)
        x1, y1, x2, y2 = (_snap(v) for v in (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
        objects.append(RawObject(id2name[int(cid)], x1 * w, y1 * h, x2 * w, y2 * h, ref, polygon))
    return objects, rejected


def _snap(v: float) -> float:
    """Undo the rounding of 6-decimal label files at the image border (1.0000005 -> 1).

    Real excursions (1.05) are kept, so write_canonical clips and records them.
    """
    if -SNAP < v < 0:
        return 0.0
    if 1 < v < 1 + SNAP:
        return 1.0
    return v


def _id_range(id2name: dict[int, str]) -> str:
    if not id2name:
        return "none defined"
    keys = sorted(id2name)
    return f"{keys[0]}..{keys[-1]}" if keys == list(range(keys[0], keys[-1] + 1)) else str(keys)


def _orphan_labels(entries: list[tuple[Path, str]], used: set[Path], log: ProblemLog) -> None:
    """Label files in the label folders that no image claims."""
    dirs = {label_path_for(p).parent for p, _ in entries}
    for d in sorted(x for x in dirs if x.is_dir()):
        for txt in sorted(d.glob("*.txt")):
            if txt.name in NAMES_FILES or txt.resolve() in used or txt.name.startswith("."):
                continue
            if not _looks_like_label(txt):
                continue  # split lists and notes beside images, not labels
            log.add(txt, "missing_image", "label file has no matching image", action="skipped",
                    severity="error")


def _looks_like_label(txt: Path) -> bool:
    try:
        with txt.open(encoding="utf-8-sig") as fh:
            first = next((ln.split() for ln in fh if ln.strip()), None)
    except (OSError, UnicodeDecodeError):
        return False
    return first is None or first[0].isdigit()


def _dedupe_names(classes: list[str], log: ProblemLog, where: Path) -> list[str]:
    seen: list[str] = []
    for c in classes:
        if c in seen:
            log.add(where, "duplicate_class_name", f"class name {c!r} is used by two ids",
                    action="both ids map to one class", severity="warning")
        else:
            seen.append(c)
    return seen
