"""Seeded, grouped train/val/test splits that survive a re-import of a grown library.

:func:`assign_splits` is pure (meta table in, split column out); :func:`split_dataset` reads
and rewrites a dataset folder's ``meta.csv``, split lists and ``dataset.yaml``.

The algorithm (documented once here, used by both):

1. *Units.* Images that must share a split form one unit: exact duplicates (equal
   ``pixel_sha256``: the same pixels under any name), images of one ``group_by`` value (a
   slide, patient or acquisition set; an empty value groups nothing), and, when asked
   (``near_duplicates``), images whose perceptual hashes lie within that many bits. A unit's
   *key* is what it is, not where it sits in a table: its group value, else its pixel hash
   (the file hash, else the image id, where none was recorded). A renamed or moved file, or a
   copy that arrives later, therefore keeps its unit and its split.
2. *Existing assignments stay.* With ``keep_existing`` an image that already has a split (an
   official split, or an earlier run) is never moved, and a unit with an assigned image takes
   its new images into that split. A group already spread over several splits is an error
   naming the group (see :func:`check_groups`); duplicates already spread over several splits
   (kept assignments) are reported, and their new copies join the most common split.
3. *New units by their own hash* (default, the "repeatable splitting" pattern): the unit's
   position ``u = sha256(f"{seed}:{key}")`` mapped to [0, 1) is cut at the cumulative
   ratios (8:1:1: train below 0.8, val below 0.9, test above). The split of a unit depends on
   nothing but (seed, key, ratios), so re-importing a grown raw folder, into a new folder or
   over the old one, keeps every existing image where it was. The shares converge to the
   ratios; a small set may be a few images off (the summary says how far).
4. *Exact counts* (``exact=True``, CLI ``--exact``): units in hash order, each to the split
   furthest below its target at the new total (``argmax_k(ratio_k / sum * N_after - n_k)``).
   Every split ends within one image (about one unit) of its target, but where a unit goes
   depends on which other units exist: **not stable across re-imports into a new folder**
   (stable inside one folder, where existing assignments are kept).

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
from workbench.data.leakage import find_duplicates

SPLIT_NAMES = {2: ("train", "val"), 3: ("train", "val", "test")}
METHODS = {
    False: "hash placement: each unit's split follows from sha256(seed:unit key) cut at the cumulative "
           "ratios; existing assignments kept",
    True: "exact counts: largest-deficit placement in seeded sha256 order, existing assignments kept "
          "(not stable across re-imports into a new folder)",
}


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


def unit_keys(meta: pd.DataFrame, *, group_by: str | None = None,
              near_duplicates: int | None = None) -> pd.Series:
    """The unit key of every image (a Series aligned with ``meta``); see the module docstring.

    Images linked by an exact duplicate, a shared ``group_by`` value or (``near_duplicates``:
    a perceptual-hash distance in bits) a near duplicate get one key: the smallest group key
    among them, else the smallest pixel key.
    """
    ids = meta["image_id"].astype(str)
    own = pd.Series("image:" + ids, index=meta.index)
    for col in ("sha256", "pixel_sha256"):  # later columns win, as in leakage.find_duplicates
        if col in meta:
            v = meta[col].fillna("").astype(str).str.strip()
            own = own.where(v.eq(""), "pixels:" + v)
    keys = own
    if group_by is not None:
        if group_by not in meta:
            raise ValueError(f"group_by column {group_by!r} is not in meta.csv; columns are "
                             f"{list(meta.columns)}")
        groups = meta[group_by].astype(str).fillna("").str.strip()
        has = groups.ne("") & groups.ne("nan")  # an image without a group value groups nothing
        keys = own.where(~has, "group:" + groups)
    parent = {k: k for k in keys.unique()}

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    def link(a: str, b: str) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:  # the smaller key (groups sort before pixels) represents the unit
            parent[max(ra, rb)] = min(ra, rb)

    for k_own, k in zip(own, keys):  # a copy outside the group pulls the group along
        if k_own != k:
            parent.setdefault(k_own, k_own)
            link(k_own, k)
    if near_duplicates is not None and near_duplicates >= 0:
        pairs = find_duplicates(meta.reset_index(drop=True), threshold=near_duplicates)
        pos = {i: k for i, k in zip(ids, keys)}
        for a, b in pairs[["image_a", "image_b"]].itertuples(index=False):
            link(pos[a], pos[b])
    return keys.map(lambda k: root(k)).rename("unit")


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


def unit_position(seed: int, key: str, salt: str = "") -> float:
    """Where a unit falls in [0, 1): sha256 of ``"{seed}:{salt}{key}"``, its first 64 bits."""
    digest = hashlib.sha256(f"{seed}:{salt}{key}".encode("utf-8")).hexdigest()
    return int(digest[:16], 16) / 2.0 ** 64


def assign_splits(meta: pd.DataFrame, *, ratios: str | Sequence[float] = (8, 1, 1), seed: int = 0,
                  group_by: str | None = None, keep_existing: bool = True, exact: bool = False,
                  near_duplicates: int | None = None) -> pd.Series:
    """Return a split name per image (a Series aligned with ``meta``); see the module docstring.

    ``meta`` needs ``image_id`` (and, for duplicates to stay together, ``pixel_sha256``; for
    ``near_duplicates``, ``phash``); its ``split`` column (if any) holds existing assignments,
    kept when ``keep_existing``. Deterministic for a given ``seed``; with ``exact`` the counts
    are exact but the placement is not stable across re-imports.
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
    units = unit_keys(meta, group_by=group_by, near_duplicates=near_duplicates)

    if group_by is not None:
        straddling = check_groups(meta.assign(split=existing), group_by)
        if len(straddling):
            first = straddling.iloc[0]
            raise ValueError(
                f"{len(straddling)} group(s) of {group_by!r} already lie in several splits, e.g. "
                f"{first['group']!r} ({first['splits']}); fix meta.csv or re-split with "
                f"keep_existing=False (CLI: --reassign)")

    result = existing.copy()
    todo = units[existing.eq("")]
    unit_split = _kept_unit_splits(units, existing)
    joined = todo.map(unit_split).dropna()  # new images of a unit that already has a split
    result.loc[joined.index] = joined
    todo = todo.drop(joined.index)
    if exact:
        placed = _exact_placement(todo, result, names, vals, seed)
    else:
        cuts = np.cumsum(vals) / sum(vals)
        placed = {u: names[min(int(np.searchsorted(cuts, unit_position(seed, u), side="right")), len(names) - 1)]
                  for u in todo.unique()}
    new = todo.map(placed)
    result.loc[new.index] = new
    return result.astype(str).rename("split")


def _kept_unit_splits(units: pd.Series, existing: pd.Series) -> dict[str, str]:
    """unit -> the split its assigned images lie in (the most common one, when they straddle)."""
    assigned = pd.DataFrame({"unit": units, "split": existing})[existing.ne("")]
    order = {s: i for i, s in enumerate(SPLITS)}
    out = {}
    for unit, part in assigned.groupby("unit", sort=False)["split"]:
        counts = part.value_counts()
        out[unit] = min(counts.index, key=lambda s: (-counts[s], order[s]))
    return out


def _exact_placement(todo: pd.Series, result: pd.Series, names: tuple[str, ...], vals: tuple[float, ...],
                     seed: int) -> dict[str, str]:
    """Largest-deficit placement of the new units in seeded hash order (module docstring, 4)."""
    all_names = list(dict.fromkeys(names + SPLITS))  # kept 'test' images count with 2 ratios too
    target = np.array([vals[names.index(s)] if s in names else 0.0 for s in all_names]) / sum(vals)
    counts = np.array([float((result == s).sum()) for s in all_names])
    sizes = todo.value_counts()
    total = counts.sum()
    placed: dict[str, str] = {}
    for unit in sorted(sizes.index, key=lambda u: unit_position(seed, u)):
        w = float(sizes[unit])
        total += w
        k = int(np.argmax(target * total - counts))
        counts[k] += w
        placed[unit] = all_names[k]
    return placed


def straddling_duplicates(meta: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    """Sets of exact duplicates (equal pixel hash) whose images lie in different splits.

    One row per set: ``unit`` (its key), ``images`` (ids, ';'-joined), ``splits``. Only kept
    assignments can produce them; new images never straddle.
    """
    units = unit_keys(meta)
    df = pd.DataFrame({"unit": units, "image": meta["image_id"].astype(str), "split": split.astype(str)})
    df = df[df["split"].ne("")]
    rows = [{"unit": u, "images": ";".join(g["image"]), "splits": ", ".join(sorted(set(g["split"])))}
            for u, g in df.groupby("unit", sort=True) if g["split"].nunique() > 1]
    return pd.DataFrame(rows, columns=["unit", "images", "splits"])


def split_summary(meta: pd.DataFrame, split: pd.Series, *, ratios: str | Sequence[float] = (8, 1, 1),
                  previous: pd.Series | None = None, group_by: str | None = None) -> pd.DataFrame:
    """Per split: images, objects, groups, achieved fraction vs target, off (images away from
    the target), kept / newly assigned / moved."""
    vals = parse_ratios(ratios)
    names = SPLIT_NAMES[len(vals)]
    prev = (previous if previous is not None else pd.Series("", index=meta.index)).fillna("").astype(str)
    n_obj = pd.to_numeric(meta.get("n_objects", pd.Series(0, index=meta.index)), errors="coerce").fillna(0)
    rows = []
    for s in SPLITS:
        m = split.eq(s)
        if not m.any() and s not in names:
            continue
        target = vals[names.index(s)] / sum(vals) if s in names else 0.0
        row = {"split": s, "images": int(m.sum()), "objects": int(n_obj[m].sum())}
        if group_by is not None:
            row["groups"] = int(meta.loc[m, group_by].astype(str).nunique())
        row.update({
            "fraction": round(float(m.mean()) if len(m) else 0.0, 4),
            "target": round(target, 4),
            "off": round(float(m.sum()) - target * len(m), 1),
            "kept": int((m & prev.eq(s)).sum()),
            "assigned": int((m & prev.eq("")).sum()),
            "moved": int((m & prev.ne("") & prev.ne(s)).sum()),
        })
        rows.append(row)
    return pd.DataFrame(rows)


def split_notes(summary: pd.DataFrame, *, exact: bool, units: int, straddling: int) -> list[str]:
    """Plain-language notes for a split summary: method, expected spread, duplicates across splits."""
    notes = [METHODS[exact] + "."]
    if not exact and int(summary["assigned"].sum()):
        n = int(summary["assigned"].sum())
        spread = max((math.sqrt(n * p * (1 - p)) for p in summary["target"] if 0 < p < 1), default=0.0)
        notes.append(f"{n} image(s) in {units} new unit(s) placed by their own hash: shares converge to the "
                     f"ratios, but a small set may be a few images off (about +-{spread:.1f} images here; "
                     "see 'off'). --exact gives exact counts that are not stable across re-imports.")
    if straddling:
        notes.append(f"warning: {straddling} set(s) of exact duplicates lie in different splits through kept "
                     "assignments (leakage); re-split with --reassign to put each set in one split.")
    return notes


def split_dataset(root: str | Path, *, ratios: str | Sequence[float] = (8, 1, 1), seed: int = 0,
                  group_by: str | None = None, keep_existing: bool = True, exact: bool = False,
                  near_duplicates: int | None = None) -> pd.DataFrame:
    """Assign splits in the canonical dataset ``root`` and rewrite its split files.

    Rewrites ``meta.csv``, ``{train,val,test}.txt`` and ``dataset.yaml`` (each atomically,
    via :func:`workbench.data.canonical.save_meta`) and records the settings in ``dataset.json``.
    Returns :func:`split_summary`, with :func:`split_notes` in ``.attrs["notes"]``. Official
    splits are kept unless ``keep_existing=False``.
    """
    root = Path(root)
    meta = read_meta(root)
    classes = read_classes(root)
    previous = meta["split"].fillna("").astype(str) if "split" in meta else pd.Series("", index=meta.index)
    split = assign_splits(meta, ratios=ratios, seed=seed, group_by=group_by, keep_existing=keep_existing,
                          exact=exact, near_duplicates=near_duplicates)
    out = meta.assign(split=split)
    save_meta(root, out, classes)
    summary = split_summary(out, split, ratios=ratios, previous=previous, group_by=group_by)
    units = unit_keys(meta, group_by=group_by, near_duplicates=near_duplicates)
    kept_units = set(units[previous.ne("")]) if keep_existing else set()
    new_units = len(set(units[previous.eq("") | (not keep_existing)]) - kept_units)
    straddling = len(straddling_duplicates(out, split))
    summary.attrs["notes"] = split_notes(summary, exact=exact, units=new_units, straddling=straddling)
    _record(root, ratios=parse_ratios(ratios), seed=seed, group_by=group_by, keep_existing=keep_existing,
            exact=exact, near_duplicates=near_duplicates, summary=summary, straddling=straddling)
    return summary


def _record(root: Path, *, ratios: tuple[float, ...], seed: int, group_by: str | None, keep_existing: bool,
            exact: bool, near_duplicates: int | None, summary: pd.DataFrame, straddling: int) -> None:
    info_path = root / "dataset.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    kept = int(summary["kept"].sum())
    changed = int(summary["assigned"].sum() + summary["moved"].sum())
    official = info.get("split_source", "none") in ("official", "official + workbench")
    info["split_source"] = ("official" if official and changed == 0 else
                            "official + workbench" if official and keep_existing else "workbench")
    info["split"] = {"ratios": list(ratios), "seed": seed, "group_by": group_by,
                     "keep_existing": keep_existing, "exact": exact, "near_duplicates": near_duplicates,
                     "method": METHODS[exact], "kept": kept,
                     "assigned": int(summary["assigned"].sum()), "moved": int(summary["moved"].sum()),
                     "images": {r.split: r.images for r in summary.itertuples()},
                     "fraction": {r.split: r.fraction for r in summary.itertuples()},
                     "straddling_duplicate_sets": straddling}
    write_text(info_path, json.dumps(info, indent=2, default=str) + "\n")


def hold_out(meta: pd.DataFrame, *, source: str = "val", target: str = "test", fraction: float = 0.5,
             seed: int = 0, group_by: str | None = None, exact: bool = False) -> pd.Series:
    """Move a seeded ``fraction`` of the ``source`` split into ``target``; return the new split column.

    For datasets whose official split has no test part (BCCD has train/val only): half of
    val becomes an independent test set that models are never tuned on. Units as in
    :func:`assign_splits` (duplicates and groups never straddle). By default a unit moves when
    its own position (salted apart from the split's) lies below ``fraction``, so the choice is
    stable when the library grows; ``exact`` takes units in hash order up to the exact count.
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
    units = unit_keys(meta, group_by=group_by)[pool]
    sizes = units.value_counts()
    salt = f"hold_out:{target}:"  # independent of where assign_splits put the unit
    order = sorted(sizes.index, key=lambda u: unit_position(seed, u, salt))
    if exact:
        want, n, taken = fraction * float(pool.sum()), 0.0, set()
        for unit in order:
            if n + sizes[unit] / 2 > want:  # a unit that would overshoot by more than half of it stays
                continue
            taken.add(unit)
            n += float(sizes[unit])
    else:
        taken = {u for u in order if unit_position(seed, u, salt) < fraction}
    moved = units[units.isin(taken)].index
    return split.where(~split.index.isin(moved), target).rename("split")
