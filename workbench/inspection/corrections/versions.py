"""Corrected labels as versions beside a canonical dataset: resolve, read, list, save, revert.

Layout (inside the canonical dataset ``DIR``; raw data and ``DIR/labels`` are never written)::

    DIR/versions/v0001/labels/<stem>.txt   every labelled image's YOLO labels in this version
    DIR/versions/v0001/changes.csv         image, action, before, after, time (vs the parent)
    DIR/versions/v0001/summary.json        parent, note, time, counts per action, images changed

``v0000`` names the canonical ``DIR/labels`` (read-only). A version appears atomically (built
in a hidden temporary folder, then renamed) and holds every labelled image's file: those an
edit did not touch are byte copies of the parent's (copies, not hard links, so that nothing
written to one folder later can change another). A saved version is never modified.

Undo by version: history is append-only. :func:`revert` writes a *new* version whose labels
equal an earlier one (its ``changes.csv`` lists the actions that undo the later edits), so
every state stays reproducible and "the labels a run trained on" never changes under it.
The current labels are the newest version (``"latest"``). What counts as an edit action is
decided by :func:`workbench.inspection.corrections.diff.diff_boxes`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from workbench.core.atomic import default_mode, write_text
from workbench.core.problems import ProblemLog
from workbench.core.tables import utc_now
from workbench.data.canonical import format_yolo_line, read_boxes, read_classes, read_meta
from workbench.inspection.corrections.diff import ACTIONS, BOX, CHANGE_COLUMNS, changes_table, diff_boxes, pair_boxes

__all__ = ["CANONICAL", "SavedVersion", "label_name", "list_versions", "read_changes", "read_version_boxes",
           "resolve_version", "revert", "save_version", "version_dir", "versions_root"]

VERSIONS = "versions"
CANONICAL = "v0000"  # the canonical DIR/labels, never written by this module
_NAME = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class SavedVersion:
    """A version written by :func:`save_version` or :func:`revert`."""

    name: str
    path: Path
    parent: str
    changes: pd.DataFrame  # CHANGE_COLUMNS

    def __str__(self) -> str:
        counts = self.changes["action"].value_counts().to_dict()
        return f"saved {self.name} (parent {self.parent}) at {self.path}: {counts or 'no changes'}"


# ----------------------------------------------------------------------------- reading

def versions_root(root: str | Path) -> Path:
    """The folder holding a dataset's saved versions (``DIR/versions``)."""
    return Path(root) / VERSIONS


def _existing(root: Path) -> list[str]:
    folder = versions_root(root)
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name)
             and (p / "summary.json").is_file()]
    return sorted(names, key=lambda n: int(_NAME.match(n).group(1)))


def resolve_version(root: str | Path, version: str | None = "latest") -> str:
    """A version name: ``"latest"`` -> the newest (``v0000`` without any), ``None`` -> ``v0000``."""
    root = Path(root)
    read_meta(root)  # a clear error when root is not a canonical dataset
    names = _existing(root)
    if version is None or version == CANONICAL:
        return CANONICAL
    if version == "latest":
        return names[-1] if names else CANONICAL
    if version not in names:
        raise ValueError(f"{versions_root(root)}: no label version {version!r}; "
                         f"versions: {[CANONICAL, *names]}")
    return version


def version_dir(root: str | Path, version: str | None = "latest") -> Path:
    """The folder holding ``labels/`` of a version (the dataset itself for ``v0000``)."""
    name = resolve_version(root, version)
    return Path(root) if name == CANONICAL else versions_root(root) / name


def label_name(file: str) -> str:
    """The label file name (``<stem>.txt``) of an image file listed in ``meta.csv``."""
    return f"{Path(str(file)).stem}.txt"


def _label_meta(root: Path, version: str) -> pd.DataFrame:
    """meta.csv with ``label_file`` pointing at the version's label files (relative to it)."""
    meta = read_meta(root)
    vdir = version_dir(root, version)
    files = [f"labels/{label_name(f)}" for f in meta["file"]]
    exists = [(vdir / f).is_file() for f in files]
    return meta.assign(label_file=[f if e else "" for f, e in zip(files, exists)])


def read_version_boxes(root: str | Path, version: str | None = "latest") -> pd.DataFrame:
    """All boxes of a version: image, class_id, class, x1, y1, x2, y2 (pixels).

    Same arithmetic as :func:`workbench.data.canonical.read_boxes`, so unchanged boxes compare
    exactly equal across versions and with the evaluation's GT.
    """
    root = Path(root)
    name = resolve_version(root, version)
    log = ProblemLog()
    boxes = read_boxes(version_dir(root, name), _label_meta(root, name), read_classes(root), log)
    if len(log):
        raise ValueError(f"{version_dir(root, name)}: malformed labels:\n" + "\n".join(f"  {p}" for p in log))
    return boxes.rename(columns={"image_id": "image"})


def list_versions(root: str | Path) -> pd.DataFrame:
    """One row per saved version: name, parent, kind, created, note, counts."""
    root = Path(root)
    rows = []
    for name in _existing(root):
        s = json.loads((versions_root(root) / name / "summary.json").read_text(encoding="utf-8"))
        rows.append({"version": name, "parent": s.get("parent"), "kind": s.get("kind"),
                     "created": s.get("created"), "note": s.get("note", ""),
                     "n_changes": int(sum(s.get("actions", {}).values())),
                     "images_changed": len(s.get("images_changed", [])), "n_boxes": s.get("n_boxes")})
    return pd.DataFrame(rows, columns=["version", "parent", "kind", "created", "note", "n_changes",
                                       "images_changed", "n_boxes"])


def read_changes(root: str | Path, version: str) -> pd.DataFrame:
    """The change log of a saved version."""
    path = version_dir(root, version) / "changes.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no change log ({version} is the canonical labels?)")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _image_boxes(vdir: Path, row: pd.Series, classes: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Boxes of one image in a version and the text line of each (label order)."""
    path = vdir / "labels" / label_name(row["file"])
    if not path.is_file():
        return pd.DataFrame(columns=["class", *BOX]), []
    one = pd.DataFrame([{**row.to_dict(), "label_file": f"labels/{path.name}"}])
    boxes = read_boxes(vdir, one, classes)
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.split()]
    return boxes[["class", *BOX]].reset_index(drop=True), lines


# ----------------------------------------------------------------------------- writing

def _check_edit(image: str, boxes: pd.DataFrame, classes: list[str], log: ProblemLog) -> pd.DataFrame:
    """Validate one image's edited boxes (columns, finite numbers, known classes) into ``log``."""
    missing = [c for c in ("class", *BOX) if c not in boxes.columns]
    if missing:
        log.add(image, "bad_table", f"edited boxes lack column(s) {missing}", severity="error")
        return boxes.iloc[0:0]
    b = boxes[["class", *BOX]].reset_index(drop=True).copy()
    b["class"] = b["class"].astype(str)
    xy = b[BOX].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float).reshape(-1, 4)
    keep = np.ones(len(b), bool)
    for k in np.flatnonzero(~np.isfinite(xy).all(axis=1)):
        log.add(image, "invalid_box", f"non-finite coordinates {xy[k].tolist()}", severity="error",
                object=f"box {k + 1}")
        keep[k] = False
    for k in np.flatnonzero(~b["class"].isin(classes).to_numpy()):
        log.add(image, "unknown_class", f"class {b['class'][k]!r} is not in {classes}", severity="error",
                object=f"box {k + 1}")
        keep[k] = False
    b[BOX] = xy
    return b[keep].reset_index(drop=True)


def _clip_touched(image: str, old: pd.DataFrame, new: pd.DataFrame, width: int, height: int, *,
                  iou_min: float, tol: float, log: ProblemLog) -> pd.DataFrame:
    """Clip edited boxes to the image and drop those left without area.

    Boxes equal to their old box are left alone: label rounding puts some canonical edges a
    hair outside the image (x2 = 640.0003), and clipping them would read as a resize.
    """
    partner = pair_boxes(old, new, iou_min=iou_min, tol=tol)
    a = old[BOX].to_numpy(dtype=float).reshape(-1, 4)
    xy = new[BOX].to_numpy(dtype=float).reshape(-1, 4)
    same = np.array([i >= 0 and bool(np.all(np.abs(a[i] - xy[j]) <= tol)) for j, i in enumerate(partner)],
                    dtype=bool)
    lo = np.minimum(xy[:, :2], xy[:, 2:])
    hi = np.maximum(xy[:, :2], xy[:, 2:])
    lim = np.array([width, height], dtype=float)
    clipped = np.column_stack([np.clip(lo, 0, lim), np.clip(hi, 0, lim)])
    clipped = np.where(same[:, None], xy, clipped)
    empty = ~same & ((clipped[:, 2] - clipped[:, 0] <= 0) | (clipped[:, 3] - clipped[:, 1] <= 0))
    for k in np.flatnonzero(empty):
        log.add(image, "zero_area_box", f"box {xy[k].round(2).tolist()} has no area inside the "
                f"{width}x{height} image", action="dropped", severity="warning", object=f"box {k + 1}")
    out = new.copy()
    out[BOX] = clipped
    return out[~empty].reset_index(drop=True)


def _new_lines(old_lines: list[str], new: pd.DataFrame, partner: np.ndarray, diff: pd.DataFrame, class_id: dict[str, int], width: int, height: int) -> list[str]:
    """Label lines of the new boxes: an untouched box keeps its line byte for byte, a relabel
    keeps its coordinate text, anything else is formatted afresh."""
    touched: dict[int, set[str]] = {}
    for r in diff.itertuples(index=False):
        if not pd.isna(r.new_index):
            touched.setdefault(int(r.new_index), set()).add(r.action)
    out = []
    for j, row in enumerate(new.itertuples(index=False)):
        acts = touched.get(j, set())
        i = int(partner[j])
        if i >= 0 and not acts:
            out.append(old_lines[i])
        elif i >= 0 and acts == {"relabel"}:
            out.append(" ".join([str(class_id[row[0]]), *old_lines[i].split()[1:]]))
        else:
            out.append(format_yolo_line(class_id[row[0]], tuple(float(v) for v in row[1:5]), width, height))
    return out


def _write_version(root: Path, build, *, parent: str, summary: dict[str, Any]) -> tuple[str, Path]:
    """Build a version in a hidden folder with ``build(tmp)``, then rename it to the next name."""
    folder = versions_root(root)
    folder.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".new-version.", suffix=".partial", dir=folder))
    try:
        tmp.chmod(default_mode(folder=True))  # mkdtemp makes it 0700: a version is as readable as the dataset
        build(tmp)
        for _ in range(100):
            existing = _existing(root)
            number = int(_NAME.match(existing[-1]).group(1)) + 1 if existing else 1
            name = f"v{number:04d}"
            write_text(tmp / "summary.json", json.dumps({"version": name, "parent": parent, **summary},
                                                        indent=1) + "\n")
            try:
                os.rename(tmp, folder / name)  # fails if another save took the name first
                return name, folder / name
            except OSError:
                if not (folder / name).exists():
                    raise
        raise RuntimeError(f"{folder}: could not find a free version name")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_version(root: str | Path, edits: Mapping[str, pd.DataFrame], *, base: str | None = "latest",
                 note: str = "", iou_min: float = 0.3, tol: float = 1e-6) -> SavedVersion | None:
    """Write the edited boxes as a new label version of the canonical dataset ``root``.

    ``edits`` maps image id -> that image's complete new boxes (``class, x1, y1, x2, y2`` in
    pixels; e.g. read back from a napari layer). Images not in ``edits`` keep the ``base``
    version's labels. Boxes are clipped to the image; boxes left without area are dropped
    (noted in ``summary.json``). Unknown images or classes and non-finite coordinates are
    collected and raised together as one ``ValueError`` before anything is written.
    Returns ``None`` when nothing differs from ``base``.
    """
    root = Path(root)
    parent = resolve_version(root, base)
    pdir = version_dir(root, parent)
    meta = read_meta(root).set_index("image_id", drop=False)
    classes = read_classes(root)
    class_id = {c: k for k, c in enumerate(classes)}
    log = ProblemLog()
    unknown = [i for i in edits if i not in meta.index]
    for image in unknown:
        log.add(root / "meta.csv", "unknown_image", f"image id {image!r} is not in this dataset",
                severity="error")
    checked = {i: _check_edit(i, b, classes, log)
               for i, b in edits.items() if i not in unknown}
    if log.errors:
        raise ValueError(f"{root}: cannot save the corrections, {len(log.errors)} problem(s):\n"
                         + "\n".join(f"  {p}" for p in log.errors))

    time = utc_now()
    new_text: dict[str, str] = {}
    changes = []
    for image, new in checked.items():
        row = meta.loc[image]
        old, old_lines = _image_boxes(pdir, row, classes)
        new = _clip_touched(image, old, new, int(row["width"]), int(row["height"]),
                            iou_min=iou_min, tol=tol, log=log)
        diff = diff_boxes(old, new, iou_min=iou_min, tol=tol)
        if diff.empty:  # unchanged, or unlabelled and still without boxes (stays unlabelled)
            continue
        partner = pair_boxes(old, new, iou_min=iou_min, tol=tol)
        lines = _new_lines(old_lines, new, partner, diff, class_id, int(row["width"]), int(row["height"]))
        new_text[image] = "".join(f"{ln}\n" for ln in lines)
        changes.append(changes_table(image, diff, time))
    if not new_text:
        return None
    table = pd.concat(changes, ignore_index=True) if changes else pd.DataFrame(columns=CHANGE_COLUMNS)
    names = {image: label_name(meta.at[image, "file"]) for image in new_text}

    def build(tmp: Path) -> None:
        (tmp / "labels").mkdir()
        _carry_labels(pdir, tmp, skip=set(names.values()))
        for image, text in new_text.items():
            (tmp / "labels" / names[image]).write_text(text, encoding="utf-8")
        table.to_csv(tmp / "changes.csv", index=False)

    summary = _summary(changes=table, kind="edit", note=note, created=time,
                       problems=[str(p) for p in log], extra={"iou_min": iou_min, "tol": tol})
    name, path = _write_version(root, build, parent=parent, summary={**summary,
                                **_label_counts_after(pdir, new_text, names)})
    return SavedVersion(name, path, parent, table)


def _carry_labels(src_dir: Path, tmp: Path, *, skip: set[str]) -> None:
    labels = src_dir / "labels"
    if labels.is_dir():
        for p in labels.iterdir():
            if p.is_file() and p.suffix == ".txt" and p.name not in skip:
                shutil.copyfile(p, tmp / "labels" / p.name)


def _label_counts_after(pdir: Path, new_text: Mapping[str, str], names: Mapping[str, str]) -> dict[str, Any]:
    """Boxes and label files of a version: the parent's files, with ``names`` replaced by ``new_text``."""
    n = 0
    files = 0
    changed = set(names.values())
    labels = pdir / "labels"
    if labels.is_dir():
        for p in labels.iterdir():
            if p.suffix == ".txt" and p.name not in changed:
                n += sum(1 for ln in p.read_text(encoding="utf-8").splitlines() if ln.split())
                files += 1
    for text in new_text.values():
        n += sum(1 for ln in text.splitlines() if ln.split())
        files += 1
    return {"n_boxes": n, "n_label_files": files}


def _summary(*, changes: pd.DataFrame, kind: str, note: str, created: str, problems: list[str],
             extra: Mapping[str, Any]) -> dict[str, Any]:
    counts = changes["action"].value_counts()
    return {"kind": kind, "created": created, "note": note,
            "actions": {a: int(counts.get(a, 0)) for a in ACTIONS},
            "images_changed": sorted(changes["image"].unique().tolist()),
            "problems": problems, **extra}


def revert(root: str | Path, to: str, *, note: str = "") -> SavedVersion | None:
    """Undo by version: write a new version whose labels equal version ``to``.

    The history is never rewritten; the new version's ``changes.csv`` lists the actions that
    take the current (latest) labels back to ``to``. Returns ``None`` if they already agree.
    """
    root = Path(root)
    target = resolve_version(root, to)
    current = resolve_version(root, "latest")
    tdir, cdir = version_dir(root, target), version_dir(root, current)
    meta = read_meta(root)
    classes = read_classes(root)
    time = utc_now()
    changes, differing = [], []
    for _, row in meta.iterrows():
        name = label_name(row["file"])
        a, b = cdir / "labels" / name, tdir / "labels" / name
        if a.is_file() == b.is_file() and (not a.is_file() or a.read_bytes() == b.read_bytes()):
            continue
        differing.append(name)
        old, _ = _image_boxes(cdir, row, classes)
        new, _ = _image_boxes(tdir, row, classes)
        changes.append(changes_table(str(row["image_id"]), diff_boxes(old, new), time))
    if not differing:
        return None
    table = pd.concat(changes, ignore_index=True)

    def build(tmp: Path) -> None:
        (tmp / "labels").mkdir()
        _carry_labels(tdir, tmp, skip=set())
        table.to_csv(tmp / "changes.csv", index=False)

    summary = _summary(changes=table, kind="revert", note=note or f"revert to {target}", created=time,
                       problems=[], extra={"reverted_to": target})
    summary.update(_label_counts_after(tdir, {}, {}))
    name, path = _write_version(root, build, parent=current, summary=summary)
    return SavedVersion(name, path, current, table)

