"""Composing a training library: select by level/metadata, mix by target ratios, keep enough
positives, report what was achieved against the target; plus the training-length rule.

The source lab mixes good : dense : sparse images 6 : 2 : 2 and wants at least one
micronucleus in every 5 images (a minimum positive share of 0.2). :func:`compose` does
that deterministically from a seed:

1. filter the pool (``levels``, ``where`` = column equals value / is in values);
2. split ``n`` into per-group targets by the ratios (largest remainder);
3. in each group take images in a seeded hash order (so a larger library from the same
   seed contains a smaller one where the pool allows);
4. where positives fall short of ``min_positive`` x selected, swap the last-chosen negative
   of a group for its next positive (group sizes, hence ratios, stay the same);
5. groups whose pool is too small give what they have; with ``fill=True`` the shortfall
   is taken from other groups in ratio order, else the library is smaller.

Every shortfall is a warning in the result and a row of its report; nothing is silent.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

POSITIVE = "positive"


@dataclass
class Composition:
    """The chosen images (rows of the pool), the achieved-vs-target report, and warnings."""

    selected: pd.DataFrame
    report: pd.DataFrame  # one row per group + a 'positive' row: target vs achieved
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.warnings


def apportion(n: int, ratios: Mapping[str, float]) -> dict[str, int]:
    """Split ``n`` into integer counts proportional to ``ratios`` (largest remainder; ties by order)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not ratios:
        raise ValueError("ratios must name at least one group")
    w = np.array([float(v) for v in ratios.values()])
    if (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"ratios must be non-negative with a positive sum, got {dict(ratios)}")
    exact = n * w / w.sum()
    base = np.floor(exact).astype(int)
    rest = n - int(base.sum())
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[:rest]:
        base[i] += 1
    return dict(zip(ratios.keys(), (int(x) for x in base)))


def parse_ratios(text: str, groups: Sequence[str]) -> dict[str, float]:
    """``"6:2:2"`` with groups ``good, dense, sparse`` -> ``{"good": 6, "dense": 2, "sparse": 2}``."""
    parts = [float(p) for p in str(text).split(":")]
    if len(parts) != len(groups):
        raise ValueError(f"ratios {text!r} give {len(parts)} numbers for {len(groups)} groups {list(groups)}")
    return dict(zip(groups, parts))


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def _filter(pool: pd.DataFrame, levels: Sequence[int] | None, where: Mapping[str, Any] | None,
            level_column: str) -> pd.DataFrame:
    keep = pd.Series(True, index=pool.index)
    if levels is not None:
        if level_column not in pool:
            raise ValueError(f"levels= given but the pool has no {level_column!r} column")
        keep &= pool[level_column].isin(list(levels))
    for col, want in (where or {}).items():
        if col not in pool:
            raise ValueError(f"where: the pool has no column {col!r}; it has {list(pool.columns)}")
        vals = list(want) if isinstance(want, (list, tuple, set)) else [want]
        keep &= pool[col].isin(vals)
    return pool[keep]


def compose(pool: pd.DataFrame, *, n: int, ratios: Mapping[str, float], by: str,
            min_positive: float = 0.0, positive: str = POSITIVE, levels: Sequence[int] | None = None,
            where: Mapping[str, Any] | None = None, fill: bool = False, seed: int = 0,
            level_column: str = "style_level") -> Composition:
    """Choose ``n`` images of ``pool`` mixed by ``ratios`` over column ``by`` (see module doc).

    ``pool`` needs ``image_id``, ``by`` and (when ``min_positive`` > 0) a boolean ``positive``
    column. Groups of ``by`` not named in ``ratios`` are never chosen.
    """
    for col in ("image_id", by):
        if col not in pool:
            raise ValueError(f"the pool has no column {col!r}; it has {list(pool.columns)}")
    if not 0 <= min_positive <= 1:
        raise ValueError(f"min_positive is a share in [0, 1], got {min_positive}")
    if min_positive > 0 and positive not in pool:
        raise ValueError(f"min_positive needs a boolean {positive!r} column in the pool")
    if pool["image_id"].duplicated().any():
        raise ValueError("the pool lists an image twice")
    targets = apportion(int(n), ratios)
    sub = _filter(pool, levels, where, level_column)
    is_pos = sub[positive].astype(bool) if positive in sub else pd.Series(False, index=sub.index)
    ranked = {g: sorted(sub.index[sub[by].astype(str) == str(g)], key=lambda i: _rank(seed, str(sub.at[i, "image_id"])))
              for g in ratios}
    warnings: list[str] = []
    take = {g: min(targets[g], len(ranked[g])) for g in ratios}
    for g in ratios:
        if take[g] < targets[g]:
            warnings.append(f"group {g!r}: pool has {len(ranked[g])} image(s), target {targets[g]}")
    if fill:
        short = sum(targets.values()) - sum(take.values())
        for g in sorted(ratios, key=lambda g: -float(ratios[g])):
            extra = min(short, len(ranked[g]) - take[g])
            if extra > 0 and float(ratios[g]) > 0:
                take[g] += extra
                short -= extra
                warnings.append(f"group {g!r}: {extra} extra image(s) to fill the shortfall (ratio not met)")
    chosen = {g: list(ranked[g][:take[g]]) for g in ratios}
    need = math.ceil(min_positive * sum(take.values()) - 1e-9)
    have = sum(int(is_pos[i]) for g in ratios for i in chosen[g])
    for g in sorted(ratios, key=lambda g: -float(ratios[g])):  # swap within groups, largest first
        spare = [i for i in ranked[g][take[g]:] if is_pos[i]]
        negs = [i for i in reversed(chosen[g]) if not is_pos[i]]
        while have < need and spare and negs:
            out, new = negs.pop(0), spare.pop(0)
            chosen[g][chosen[g].index(out)] = new
            have += 1
    if have < need:
        warnings.append(f"positives: {have} of {sum(take.values())} selected image(s) are positive, "
                        f"the minimum share {min_positive:g} needs {need}; the pool has no more to swap in")
    idx = [i for g in ratios for i in chosen[g]]
    selected = sub.loc[idx].assign(composition_group=[g for g in ratios for _ in chosen[g]])
    report = composition_report(selected, ratios=ratios, by=by, n=n, available={g: len(ranked[g]) for g in ratios},
                                min_positive=min_positive, positive=positive)
    settings = {"n": int(n), "ratios": {str(k): float(v) for k, v in ratios.items()}, "by": by,
                "min_positive": min_positive, "levels": list(levels) if levels is not None else None,
                "where": {k: (list(v) if isinstance(v, (list, tuple, set)) else v) for k, v in (where or {}).items()},
                "fill": fill, "seed": seed, "pool_images": int(len(pool)), "after_filter": int(len(sub))}
    return Composition(selected.reset_index(drop=True), report, warnings, settings)


def composition_report(selected: pd.DataFrame, *, ratios: Mapping[str, float], by: str, n: int,
                       available: Mapping[str, int] | None = None, min_positive: float = 0.0,
                       positive: str = POSITIVE) -> pd.DataFrame:
    """Achieved vs target per group (count and share) and for the positive share."""
    targets = apportion(int(n), ratios)
    total_w = sum(float(v) for v in ratios.values())
    got = selected[by].astype(str).value_counts() if len(selected) else pd.Series(dtype=int)
    k = max(len(selected), 1)
    rows = []
    for g, w in ratios.items():
        c = int(got.get(str(g), 0))
        rows.append({"item": str(g), "target_share": float(w) / total_w, "achieved_share": c / k if len(selected) else np.nan,
                     "target_n": targets[g], "achieved_n": c,
                     "available": (available or {}).get(g, np.nan), "met": c == targets[g]})
    n_pos = int(selected[positive].astype(bool).sum()) if positive in selected else 0
    need = math.ceil(min_positive * len(selected) - 1e-9)
    rows.append({"item": POSITIVE, "target_share": float(min_positive),
                 "achieved_share": n_pos / k if len(selected) else np.nan, "target_n": need, "achieved_n": n_pos,
                 "available": np.nan, "met": n_pos >= need})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- training length

RULE_OF_THUMB = "iterations ~ 1.5-2.5 x training images (source lab); one iteration = one optimiser step of `batch` images"


@dataclass(frozen=True)
class TrainingLength:
    """Epochs derived from the lab's rule of thumb (or overridden), for the run record."""

    n_images: int
    batch: int
    factor: float
    iterations: int  # optimiser steps the rule asks for
    epochs_rule: int  # epochs that give at least those steps
    epochs: int  # what is used (= epochs_rule unless overridden)
    overridden: bool
    rule: str = RULE_OF_THUMB

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_length(n_images: int, *, batch: int, factor: float = 2.0, epochs: int | None = None) -> TrainingLength:
    """Iterations = ``factor`` x ``n_images``; epochs = ceil(iterations / steps per epoch).

    ``factor`` outside 1.5-2.5 is allowed but is not the rule of thumb (the record says so
    through ``factor``); ``epochs`` overrides the result and is recorded as overridden.
    """
    if n_images < 1:
        raise ValueError(f"need at least one training image, got {n_images}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    iterations = math.ceil(factor * n_images)
    steps = math.ceil(n_images / batch)
    rule = max(1, math.ceil(iterations / steps))
    return TrainingLength(int(n_images), int(batch), float(factor), iterations, rule,
                          int(epochs) if epochs is not None else rule, epochs is not None)
