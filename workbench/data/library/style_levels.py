"""Style levels per image: from a user CSV, or derived from measurable image properties.

The source lab labels its images by *style* (for chromosome aberrations: 0 long,
1 medium-long, 2 medium-short, 3 short-thick, 4 mid-division, 5 noodle-like) and trains
on level subsets. Public data has no such human labels, so levels can also be *derived*
from the audit's measurements (:mod:`workbench.data.audit`: sharpness, contrast, brightness,
object count, density class ...). A derived level is not a style label: every result
carries a :class:`LevelRule` whose :meth:`LevelRule.describe` says exactly how the levels
were made, and ``derived`` is True, so captions can state it.

Two rule kinds, both pure functions over a per-image table:

* ``quantile`` - cut a numeric column into ``k`` equally populated bins (level 0 = the
  best end: ``best="high"`` for sharpness, ``"low"`` for crowding); the cut points are
  recorded so the same rule can be re-applied to new images (``edges``);
* ``categories`` - map the values of a column (e.g. the density class) to levels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

LEVEL = "style_level"


@dataclass(frozen=True)
class LevelRule:
    """How levels were obtained. ``edges`` are filled in by :func:`derive_levels` for quantiles."""

    source: Literal["user_csv", "quantile", "categories"]
    column: str
    k: int | None = None  # quantile bins
    best: Literal["high", "low"] = "high"  # quantile: which end of the column is level 0
    edges: tuple[float, ...] | None = None  # quantile cut points (inner edges, increasing)
    mapping: Mapping[str, int] | None = None  # categories: value -> level
    path: str | None = None  # user_csv: the file

    @property
    def derived(self) -> bool:
        """True when levels come from measurements, not from human style labels."""
        return self.source != "user_csv"

    def describe(self) -> str:
        """One sentence for captions and reports."""
        if self.source == "user_csv":
            return f"style levels from the user table {self.path} (column {self.column!r})"
        if self.source == "categories":
            pairs = ", ".join(f"{v}->{lv}" for v, lv in sorted((self.mapping or {}).items(), key=lambda x: x[1]))
            return f"levels DERIVED (not human style labels) from {self.column!r} by category: {pairs}"
        edges = ", ".join(f"{e:.4g}" for e in (self.edges or ()))
        end = "highest" if self.best == "high" else "lowest"
        return (f"levels DERIVED (not human style labels) from {self.column!r} in {self.k} quantile bins, "
                f"level 0 = {end} values; cut points [{edges}]")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mapping"] = dict(self.mapping) if self.mapping is not None else None
        d["edges"] = list(self.edges) if self.edges is not None else None
        d["derived"] = self.derived
        d["description"] = self.describe()
        return d


@dataclass
class StyleLevels:
    """Levels per image (``image_id``, ``style_level``) and the rule that made them."""

    table: pd.DataFrame
    rule: LevelRule
    notes: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> pd.Series:
        return self.table[LEVEL].value_counts().sort_index()


def _check_images(images: pd.DataFrame, column: str) -> None:
    if "image_id" not in images:
        raise ValueError("the image table needs an 'image_id' column")
    if column not in images:
        raise ValueError(f"the image table has no column {column!r}; it has {list(images.columns)}")
    if images["image_id"].duplicated().any():
        raise ValueError(f"image ids repeat: {images['image_id'][images['image_id'].duplicated()].head(3).tolist()}")


def quantile_edges(values: pd.Series, k: int) -> tuple[float, ...]:
    """Inner cut points of ``k`` equally populated bins of ``values`` (NaN ignored)."""
    if k < 2:
        raise ValueError(f"need k >= 2 quantile bins, got {k}")
    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(float)
    if len(v) < k:
        raise ValueError(f"{len(v)} measured values cannot fill {k} bins")
    return tuple(float(e) for e in np.quantile(v, np.arange(1, k) / k))


def apply_edges(values: pd.Series, edges: Sequence[float], *, best: str = "high") -> pd.Series:
    """Level per value given inner cut points; level 0 is the ``best`` end. NaN -> -1."""
    if best not in ("high", "low"):
        raise ValueError(f"best must be 'high' or 'low', got {best!r}")
    v = pd.to_numeric(values, errors="coerce").to_numpy(float)
    k = len(edges) + 1
    up = np.searchsorted(np.asarray(edges, float), v, side="right")  # 0 = lowest bin
    lv = up if best == "low" else (k - 1 - up)
    return pd.Series(np.where(np.isnan(v), -1, lv).astype(int), index=values.index)


def derive_levels(images: pd.DataFrame, rule: LevelRule) -> StyleLevels:
    """Levels from the measurements in ``images`` (e.g. ``AuditResult.images``) by ``rule``.

    A quantile rule without ``edges`` is fitted on ``images`` (the fitted edges are recorded
    in the returned rule); with ``edges`` it is re-applied unchanged.
    """
    _check_images(images, rule.column)
    col = images[rule.column]
    if rule.source == "quantile":
        if rule.k is None:
            raise ValueError("a quantile rule needs k (number of levels)")
        edges = rule.edges if rule.edges is not None else quantile_edges(col, rule.k)
        if len(edges) != rule.k - 1:
            raise ValueError(f"{rule.k} levels need {rule.k - 1} cut points, got {len(edges)}")
        rule = LevelRule(**{**asdict(rule), "edges": tuple(edges)})
        levels = apply_edges(col, edges, best=rule.best)
    elif rule.source == "categories":
        if not rule.mapping:
            raise ValueError("a categories rule needs mapping= {value: level}")
        unknown = sorted(set(col.astype(str)) - set(map(str, rule.mapping)))
        if unknown:
            raise ValueError(f"values of {rule.column!r} without a level in the mapping: {unknown}")
        levels = col.astype(str).map({str(k): int(v) for k, v in rule.mapping.items()}).astype(int)
    else:
        raise ValueError(f"derive_levels cannot apply a {rule.source!r} rule (use levels_from_csv)")
    table = pd.DataFrame({"image_id": images["image_id"].astype(str).to_numpy(), LEVEL: levels.to_numpy()})
    unmeasured = int((table[LEVEL] < 0).sum())
    return StyleLevels(table, rule, {"unmeasured": unmeasured} if unmeasured else {})


def levels_from_csv(path: str | Path, image_ids: Sequence[str], *, id_column: str = "image_id",
                    level_column: str = LEVEL) -> StyleLevels:
    """Human style levels from a CSV (one row per image); every image of ``image_ids`` needs one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: style level table not found")
    df = pd.read_csv(path, dtype={id_column: str}, keep_default_na=False)
    for c in (id_column, level_column):
        if c not in df:
            raise ValueError(f"{path}: no column {c!r}; it has {list(df.columns)}")
    dup = df[id_column][df[id_column].duplicated()]
    if len(dup):
        raise ValueError(f"{path}: images listed twice: {sorted(set(dup))[:5]}")
    lv = pd.to_numeric(df[level_column], errors="coerce")
    bad = df[id_column][lv.isna() | (lv < 0) | (lv != lv.round())]
    if len(bad):
        raise ValueError(f"{path}: {level_column!r} must be a non-negative integer; bad rows for {bad.head(5).tolist()}")
    given = dict(zip(df[id_column], lv.astype(int)))
    missing = [i for i in image_ids if str(i) not in given]
    if missing:
        raise ValueError(f"{path}: no style level for {len(missing)} image(s), e.g. {missing[:5]}")
    table = pd.DataFrame({"image_id": [str(i) for i in image_ids], LEVEL: [given[str(i)] for i in image_ids]})
    extra = sorted(set(given) - set(table["image_id"]))
    return StyleLevels(table, LevelRule("user_csv", level_column, path=str(path)),
                       {"rows_not_in_dataset": len(extra)} if extra else {})


def level_name(levels: Sequence[int]) -> str:
    """``[0, 1, 2]`` -> ``"0-2"``; ``[0, 2]`` -> ``"0,2"``; ``[3]`` -> ``"3"``."""
    lv = sorted(set(int(x) for x in levels))
    if not lv:
        raise ValueError("no levels given")
    if len(lv) > 1 and lv == list(range(lv[0], lv[-1] + 1)):
        return f"{lv[0]}-{lv[-1]}"
    return ",".join(map(str, lv))


def measure(root: str | Path, *, workers: int | None = 1) -> pd.DataFrame:
    """The audit's per-image measurements (quality proxies, object count, density class)."""
    from workbench.data.audit import audit_dataset

    return audit_dataset(root, workers=workers, near_dup_distance=-1).images


CROWDING = {0: "sparse", 1: "good", 2: "dense"}  # fewest objects = sparse, middle = good, most = dense


def crowding_groups(images: pd.DataFrame, *, column: str = "n_objects", fit: pd.Series | None = None
                    ) -> tuple[pd.Series, LevelRule]:
    """good / dense / sparse per image from tertiles of ``column`` (fitted on rows where ``fit``).

    A stand-in for the lab's judgement of image density where none is recorded; the rule
    (with its cut points) is returned so captions can state it.
    """
    fitted = derive_levels(images[fit] if fit is not None else images, LevelRule("quantile", column, k=3, best="low")).rule
    lv = derive_levels(images, fitted).table[LEVEL]
    return pd.Series(lv.map(CROWDING).fillna("unmeasured").to_numpy(), index=images.index), fitted


def crowding_text(rule: LevelRule) -> str:
    """Caption text for :func:`crowding_groups`."""
    e = rule.edges or ()
    if len(e) != 2:
        return rule.describe()
    return (f"composition groups DERIVED from {rule.column!r} tertiles: sparse <= {e[0]:.4g} < good <= {e[1]:.4g} "
            f"< dense")
