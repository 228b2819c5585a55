"""Seeded, stable, grouped train/val/test splits of a canonical dataset.

:func:`assign_splits` is pure (meta table in, split column out); :func:`split_dataset` reads
and rewrites a dataset folder's ``meta.csv``, split lists and ``dataset.yaml``.

The algorithm (documented once here, used by both):

1. *Units.* Without ``group_by`` every image is a unit. With ``group_by`` (a meta column such
   as slide, patient or acquisition set) all images sharing a value form one unit, so a group
   never straddles splits. Images with an empty group value are units of their own.
2. *Existing assignments stay.* With ``keep_existing`` an image that already has a split
   (an official split, or an earlier run) is never moved, and a group that already has a
   split takes new images of that group into it. A group already spread over several splits
   is an error naming the group (see :func:`check_groups`).
3. *New units in a seeded hash order.* Each unassigned unit gets the key
   ``sha256(f"{seed}:{unit}")``; units are placed in key order. The key of a unit does not
   depend on which other units exist, so adding images never reshuffles the others.
4. *Largest deficit first.* Each unit goes to the split whose count is furthest below its
   target at the new total, ``argmax_k(ratio_k / sum(ratios) * N_after - n_k)`` (ties go to
   the earlier split). For a unit of ``w`` images this is also the choice that minimises the
   squared distance of the counts from the targets, so it works for the first split (all
   units new) and when a library grows. With single-image units every split ends within one
   image of its target; with groups within about one group.

Ratios count images, not objects. Two ratios mean train:val, three train:val:test.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from workbench.core.atomic import write_text
from workbench.data.canonical import SPLITS, read_classes, read_meta, save_meta

SPLIT_NAMES = {2: ("train", "val"), 3: ("train", "val", "test")}
METHOD = "largest-deficit placement in seeded sha256 order, existing assignments kept"


def parse_ratios(ratios: str | Sequence[float]) -> tuple[float, ...]:
    """Validate split ratios given as ``"8:1:1"`` or ``(8, 1, 1)``; return them as floats.

    Raises ``ValueError`` for a wrong number of parts, non-numbers, negative or
    non-finite values, or an all-zero set.
    """
    text = ratios if isinstance(ratios, str) else ":".join(
        f"{r:g}" if isinstance(r, (int, float)) else str(r) for r in ratios)
    parts = text.replace(",", ":").split(":") if isinstance(ratios, str) else list(ratios)
    if len(parts) not in SPLIT_NAMES:
        raise ValueError(f"ratios must have 2 (train:val) or 3 (train:val:test) parts, "
                         f"got {len(parts)}: {text!r}")
    vals = []
    for name, p in zip(SPLIT_NAMES[len(parts)], parts):
        try:
            v = float(p)
        except (TypeError, ValueError):
            raise ValueError(f"ratios must be numbers, got {p!r} for {name} in {text!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"ratios must be finite, got {p!r} for {name} in {text!r}")
        if v < 0:
            raise ValueError(f"ratios must not be negative, got {v:g} for {name} in {text!r}")
        vals.append(v)
    if sum(vals) <= 0:
        raise ValueError(f"ratios must not all be zero, got {text!r}")
    return tuple(vals)


def _existing(meta: pd.DataFrame) -> pd.Series:
    if "split" not in meta:
        return pd.Series("", index=meta.index, dtype=str)
    split = meta["split"].fillna("").astype(str).str.strip()
    bad = split[~split.isin(("",) + SPLITS)]
    if len(bad):
        ids = meta.loc[bad.index, "image_id"].astype(str)
        examples = ", ".join(f"{i!r}: {s!r}" for i, s in list(zip(ids, bad))[:5])
        raise ValueError(f"meta 'split' must be one of {SPLITS} or empty; {len(bad)} image(s) have "
                         f"other values ({examples})")
    return split


def _units(meta: pd.DataFrame, group_by: str | None) -> pd.Series:
    ids = meta["image_id"].astype(str)
    if group_by is None:
        return ids
    if group_by not in meta:
        raise ValueError(f"group_by column {group_by!r} is not in meta.csv; columns are "
                         f"{list(meta.columns)}")
    groups = meta[group_by].astype(str).fillna("").str.strip()
    # An image without a group value cannot leak through its group: it is its own unit.
    return pd.Series(np.where(groups.ne("") & groups.ne("nan"), "group:" + groups, "image:" + ids),
                     index=meta.index)


def check_groups(meta: pd.DataFrame, group_by: str, *, split_column: str = "split") -> pd.DataFrame:
    """Groups of ``group_by`` whose images lie in more than one split (empty splits ignored).

    Returns one row per straddling group: ``group``, ``splits`` (e.g. ``"train:12, val:3"``),
    ``images``. Empty when every group sits in one split.
    """
    if group_by not in meta:
        raise ValueError(f"group_by column {group_by!r} is not in meta.csv; columns are "
                         f"{list(meta.columns)}")
    split = meta[split_column].fillna("").astype(str).str.strip() if split_column in meta else \
        pd.Series("", index=meta.index)
    df = pd.DataFrame({"group": meta[group_by].astype(str).str.strip(), "split": split})
    df = df[df["split"].ne("") & df["group"].ne("") & df["group"].ne("nan")]
    rows = []
    for group, part in df.groupby("group", sort=True):
        counts = part["split"].value_counts()
        if len(counts) > 1:
            counts = counts.reindex([s for s in SPLITS if s in counts.index])
            rows.append({"group": group, "splits": ", ".join(f"{s}:{n}" for s, n in counts.items()),
                         "images": int(counts.sum())})
    return pd.DataFrame(rows, columns=["group", "splits", "images"])


def _order_key(seed: int, unit: str) -> str:
    return hashlib.sha256(f"{seed}:{unit}".encode("utf-8")).hexdigest()


def assign_splits(meta: pd.DataFrame, *, ratios: str | Sequence[float] = (8, 1, 1), seed: int = 0,
                  group_by: str | None = None, keep_existing: bool = True) -> pd.Series:
    """Return a split name per image (a Series aligned with ``meta``); see the module docstring.

    ``meta`` needs ``image_id``; its ``split`` column (if any) holds existing assignments,
    kept when ``keep_existing``. Deterministic for a given ``seed``.
    """
    vals = parse_ratios(ratios)
    names = SPLIT_NAMES[len(vals)]
    if "image_id" not in meta:
        raise ValueError("meta has no 'image_id' column")
    ids = meta["image_id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ValueError(f"image ids must be unique; repeated: {sorted(set(dup))[:5]}")
    existing = _existing(meta) if keep_existing else pd.Series("", index=meta.index, dtype=str)
    units = _units(meta, group_by)

    if group_by is not None:
        straddling = check_groups(meta.assign(split=existing), group_by)
        if len(straddling):
            first = straddling.iloc[0]
            raise ValueError(
                f"{len(straddling)} group(s) of {group_by!r} already lie in several splits, e.g. "
                f"{first['group']!r} ({first['splits']}); fix meta.csv or re-split with "
                f"keep_existing=False (CLI: --reassign)")

    # A unit with an assigned image takes all its new images into that split.
    assigned = existing[existing.ne("")]
    unit_split: dict[str, str] = dict(zip(units[assigned.index], assigned))
    result = units.map(unit_split).fillna("").astype(str)

    all_names = list(dict.fromkeys(names + SPLITS))  # kept 'test' images count with 2 ratios too
    target = np.array([vals[names.index(s)] if s in names else 0.0 for s in all_names]) / sum(vals)
    counts = np.array([float((result == s).sum()) for s in all_names])
    todo = units[result.eq("")]
    sizes = todo.value_counts()
    order = sorted(sizes.index, key=lambda u: _order_key(seed, u))
    total = counts.sum()
    placed: dict[str, str] = {}
    for unit in order:
        w = float(sizes[unit])
        total += w
        k = int(np.argmax(target * total - counts))
        counts[k] += w
        placed[unit] = all_names[k]
    new = todo.map(placed)
    result.loc[new.index] = new
    return result.rename("split")


def split_summary(meta: pd.DataFrame, split: pd.Series, *, ratios: str | Sequence[float] = (8, 1, 1),
                  previous: pd.Series | None = None, group_by: str | None = None) -> pd.DataFrame:
    """Per split: images, objects, groups, fraction vs target, kept / newly assigned / moved."""
    vals = parse_ratios(ratios)
    names = SPLIT_NAMES[len(vals)]
    prev = (previous if previous is not None else pd.Series("", index=meta.index)).fillna("").astype(str)
    n_obj = pd.to_numeric(meta.get("n_objects", pd.Series(0, index=meta.index)), errors="coerce").fillna(0)
    rows = []
    for s in SPLITS:
        m = split.eq(s)
        if not m.any() and s not in names:
            continue
        row = {"split": s, "images": int(m.sum()), "objects": int(n_obj[m].sum())}
        if group_by is not None:
            row["groups"] = int(meta.loc[m, group_by].astype(str).nunique())
        row.update({
            "fraction": round(float(m.mean()) if len(m) else 0.0, 4),
            "target": round(vals[names.index(s)] / sum(vals) if s in names else 0.0, 4),
            "kept": int((m & prev.eq(s)).sum()),
            "assigned": int((m & prev.eq("")).sum()),
            "moved": int((m & prev.ne("") & prev.ne(s)).sum()),
        })
        rows.append(row)
    return pd.DataFrame(rows)


def split_dataset(root: str | Path, *, ratios: str | Sequence[float] = (8, 1, 1), seed: int = 0,
                  group_by: str | None = None, keep_existing: bool = True) -> pd.DataFrame:
    """Assign splits in the canonical dataset ``root`` and rewrite its split files.

    Rewrites ``meta.csv``, ``{train,val,test}.txt`` and ``dataset.yaml`` (each atomically,
    via :func:`workbench.data.canonical.save_meta`) and records the settings in ``dataset.json``.
    Returns :func:`split_summary`. Official splits are kept unless ``keep_existing=False``.
    """
    root = Path(root)
    meta = read_meta(root)
    classes = read_classes(root)
    previous = meta["split"].fillna("").astype(str) if "split" in meta else pd.Series("", index=meta.index)
    split = assign_splits(meta, ratios=ratios, seed=seed, group_by=group_by, keep_existing=keep_existing)
    out = meta.assign(split=split)
    save_meta(root, out, classes)
    summary = split_summary(out, split, ratios=ratios, previous=previous, group_by=group_by)
    _record(root, ratios=parse_ratios(ratios), seed=seed, group_by=group_by,
            keep_existing=keep_existing, summary=summary)
    return summary


def _record(root: Path, *, ratios: tuple[float, ...], seed: int, group_by: str | None,
            keep_existing: bool, summary: pd.DataFrame) -> None:
    info_path = root / "dataset.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    kept = int(summary["kept"].sum())
    changed = int(summary["assigned"].sum() + summary["moved"].sum())
    official = info.get("split_source", "none") in ("official", "official + workbench")
    info["split_source"] = ("official" if official and changed == 0 else
                            "official + workbench" if official and keep_existing else "workbench")
    info["split"] = {"ratios": list(ratios), "seed": seed, "group_by": group_by,
                     "keep_existing": keep_existing, "method": METHOD, "kept": kept,
                     "assigned": int(summary["assigned"].sum()), "moved": int(summary["moved"].sum()),
                     "images": {r.split: r.images for r in summary.itertuples()}}
    write_text(info_path, json.dumps(info, indent=2, default=str) + "\n")


def hold_out(meta: pd.DataFrame, *, source: str = "val", target: str = "test", fraction: float = 0.5,
             seed: int = 0, group_by: str | None = None) -> pd.Series:
    """Move a seeded ``fraction`` of the ``source`` split into ``target``; return the new split column.

    For datasets whose official split has no test part (BCCD has train/val only): half of
    val becomes an independent test set that models are never tuned on. Same hash order and
    grouping as :func:`assign_splits`, so the choice is stable and a group never straddles.
    """
    if target not in SPLITS or source not in SPLITS or source == target:
        raise ValueError(f"source and target must be two different splits of {SPLITS}, got {source!r} -> {target!r}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {fraction}")
    split = _existing(meta)
    if split.eq(target).any():
        raise ValueError(f"the dataset already has {int(split.eq(target).sum())} {target!r} image(s); "
                         f"nothing to hold out")
    pool = split.eq(source)
    if not pool.any():
        raise ValueError(f"no image is in split {source!r}; splits present: {sorted(set(split) - {''})}")
    units = _units(meta, group_by)[pool]
    sizes = units.value_counts()
    want = fraction * float(pool.sum())
    taken: set[str] = set()
    n = 0.0
    for unit in sorted(sizes.index, key=lambda u: _order_key(seed, u)):
        if n + sizes[unit] / 2 > want:  # a unit that would overshoot by more than half of it stays
            continue
        taken.add(unit)
        n += float(sizes[unit])
    moved = units[units.isin(taken)].index
    return split.where(~split.index.isin(moved), target).rename("split")
