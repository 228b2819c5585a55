"""Figures of the cell statistics (tables of :mod:`workbench.analysis.stats` in, matplotlib Figure out).

No file I/O and no ``plt.show``: figures are built on :class:`matplotlib.figure.Figure`
directly, like :mod:`workbench.report.plots`; callers save them (:func:`workbench.report.figures.save_figure`)
or let Jupyter display them. Group values that are empty or missing are shown as "(none)".
"""
from __future__ import annotations

# seaborn is imported inside the drawing functions: ~1 s (scipy.stats) that importing the module need not cost

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from workbench.report.figures import palette

NONE = "(none)"


def _group_values(df: pd.DataFrame, group: str | None) -> tuple[pd.DataFrame, str, list[str]]:
    """Add a string column ``_group`` (one value "all" without a group) and its order."""
    if group is None:
        return df.assign(_group="all"), "_group", ["all"]
    if group not in df.columns:
        raise ValueError(f"group column {group!r} is not in the table (columns: {list(df.columns)})")
    values = df[group].astype("string").fillna(NONE).replace("", NONE).astype(str)
    order = sorted(set(values), key=lambda v: (v == NONE, v))
    return df.assign(_group=values.to_numpy()), "_group", order


def _finite(df: pd.DataFrame, y: str) -> tuple[pd.DataFrame, int]:
    v = pd.to_numeric(df[y], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(v)
    return df[keep], int((~keep).sum())


def _box_and_points(ax, df: pd.DataFrame, *, x: str, y: str, order: list[str], hue: str | None = None,
                    hue_order: list[str] | None = None, log: bool = False) -> None:
    """Box plot without fliers (every point is drawn) plus one jittered point per row."""
    import seaborn as sns
    kw = dict(data=df, x=x, y=y, order=order, ax=ax, log_scale=log or None)
    if hue:
        kw.update(hue=hue, hue_order=hue_order, palette=palette(hue_order))
    sns.boxplot(**kw, showfliers=False, fill=False, **({} if hue else {"color": "0.35"}))
    sns.stripplot(**kw, dodge=bool(hue), size=3, alpha=0.6, jitter=0.25, legend=False,
                  **({} if hue else {"color": "C0"}))


def per_image_boxplot(table: pd.DataFrame, y: str, *, group: str | None = None, log: bool = False,
                      title: str = "", ylabel: str | None = None) -> Figure:
    """Box plot of one per-image value (``y``) per group, one point per image.

    For a table from :func:`~workbench.analysis.stats.per_image_counts` (``y`` a class or ``total``)
    or :func:`~workbench.analysis.stats.positive_ratio` (``y="ratio"`` or ``"positive_fraction"``).
    Non-finite values (a ratio of an image without normal cells) are left out; the title
    says how many.
    """
    if y not in table.columns:
        raise ValueError(f"column {y!r} is not in the table (columns: {list(table.columns)})")
    df, gcol, order = _group_values(table, group)
    df, dropped = _finite(df, y)
    if log:
        positive = df[y] > 0
        dropped += int((~positive).sum())
        df = df[positive]
    fig = Figure(figsize=(max(4.0, 1.1 * len(order) + 2.5), 4), layout="constrained")
    ax = fig.subplots()
    if len(df):
        _box_and_points(ax, df, x=gcol, y=y, order=order, log=log)
    note = f" ({dropped} image(s) without a {'finite positive' if log else 'finite'} value left out)" if dropped else ""
    ax.set(title=(title or f"{y} per image") + note, xlabel=group or "", ylabel=ylabel or y)
    ax.title.set_fontsize(9)
    return fig


def class_count_boxplot(counts: pd.DataFrame, classes: Sequence[str], *, group: str | None = None,
                        title: str = "Cells per image") -> Figure:
    """Counts per image for each class (x) and group (hue): box plots with one point per image."""
    missing = [c for c in classes if c not in counts.columns]
    if missing:
        raise ValueError(f"class column(s) {missing} are not in the counts table")
    df, gcol, order = _group_values(counts, group)
    long = df.melt(id_vars=["image", gcol], value_vars=list(classes), var_name="class", value_name="cells")
    fig = Figure(figsize=(max(5.0, 1.2 * len(classes) * max(1, len(order) / 2) + 2.5), 4), layout="constrained")
    ax = fig.subplots()
    if len(long):
        _box_and_points(ax, long, x="class", y="cells", order=list(classes),
                        hue=gcol if group else None, hue_order=order if group else None)
    ax.set(title=title, xlabel="", ylabel="cells per image")
    if group and ax.get_legend() is not None:
        ax.get_legend().set_title(group)
    return fig


def class_share_pie(counts: pd.DataFrame, classes: Sequence[str], *, group: str | None = None,
                    order: Sequence[str] | None = None, title: str = "Share of cells per class") -> Figure:
    """Pie of the summed class counts (one pie per group with ``group``, in ``order`` when given,
    else sorted), labels with n and %."""
    missing = [c for c in classes if c not in counts.columns]
    if missing:
        raise ValueError(f"class column(s) {missing} are not in the counts table")
    df, gcol, found = _group_values(counts, group)
    if order is not None and sorted(map(str, order)) != sorted(found):
        raise ValueError(f"order {list(order)} must list the groups found, {found}")
    order = [str(g) for g in order] if order is not None else found
    colours = palette(list(classes))
    fig = Figure(figsize=(3.6 * len(order) + 0.5, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(order), squeeze=False)).ravel()
    for ax, g in zip(axes, order):
        sums = df.loc[df[gcol] == g, list(classes)].sum()
        total = int(sums.sum())
        if total:
            ax.pie(sums.to_numpy(), colors=[colours[c] for c in classes], startangle=90, counterclock=False,
                   autopct=lambda p: f"{p:.1f}%" if p >= 3 else "", pctdistance=0.75,
                   wedgeprops={"linewidth": 0.8, "edgecolor": "white"}, textprops={"fontsize": 8})
        ax.set_title(f"{g if group else 'all images'} (n={total})", fontsize=9)
        ax.set_aspect("equal")
    # counts in the legend only for one pie: summed over several pies they would match none of them
    labels = [f"{c} ({int(df[c].sum())})" if len(order) == 1 else c for c in classes]
    fig.legend([Patch(color=colours[c]) for c in classes], labels, loc="outside right center", fontsize=8)
    fig.suptitle(title)
    return fig


def count_agreement(truth: pd.DataFrame, predicted: pd.DataFrame, classes: Sequence[str], *,
                    label: str = "predicted", jitter: float = 0.15, seed: int = 0,
                    title: str = "Cells per image: counted vs true") -> Figure:
    """One panel per class: each image's true count (x) against its predicted count (y), the
    diagonal, and MAE and bias (predicted minus true) in the panel title. ``truth`` and
    ``predicted`` are :func:`~workbench.analysis.stats.per_image_counts` tables of the same images;
    points are jittered by up to ``jitter`` so images with equal counts stay visible."""
    missing = [c for t in (truth, predicted) for c in ["image", *classes] if c not in t.columns]
    if missing:
        raise ValueError(f"column(s) {sorted(set(missing))} are not in the counts tables")
    both = truth[["image", *classes]].merge(predicted[["image", *classes]], on="image", how="outer",
                                            suffixes=("_true", "_pred"), validate="one_to_one")
    if both.isna().any().any():
        raise ValueError("the truth and predicted count tables must list the same images")
    rng = np.random.default_rng(seed)
    colours = palette(list(classes))
    fig = Figure(figsize=(3.3 * len(classes) + 0.4, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(classes), squeeze=False)).ravel()
    for ax, c in zip(axes, classes):
        x, y = both[f"{c}_true"].to_numpy(float), both[f"{c}_pred"].to_numpy(float)
        top = max(float(np.max(x, initial=0)), float(np.max(y, initial=0)), 1.0) + 0.5
        ax.plot([0, top], [0, top], color="0.6", lw=1, zorder=1)
        ax.scatter(x + rng.uniform(-jitter, jitter, len(x)), y + rng.uniform(-jitter, jitter, len(y)), s=12,
                   color=colours[c], alpha=0.7, zorder=2)
        err = y - x
        mae = f"{np.abs(err).mean():.2f}" if len(err) else "n/a"
        bias = f"{err.mean():+.2f}" if len(err) else "n/a"
        ax.set(xlim=(-0.5, top), ylim=(-0.5, top), xlabel="true cells per image",
               title=f"{c}: MAE {mae}, bias {bias}")
        ax.title.set_fontsize(9)
        ax.set_aspect("equal")
    axes[0].set_ylabel(f"{label} cells per image")
    fig.suptitle(f"{title} ({len(both)} images)")
    return fig


def cell_size_violins(sizes: pd.DataFrame, *, group: str | None = None, log: bool = True,
                      title: str = "Cell size per class") -> Figure:
    """Violins per class of the area fraction of the image and of the area relative to the
    mean normal cell of the same image (table of :func:`~workbench.analysis.stats.cell_sizes`).

    Log scale by default (platelets and white cells differ by orders of magnitude); zero-area
    and non-finite values are left out and counted in the panel title.
    """
    import seaborn as sns
    need = ["class", "area_fraction", "rel_normal_area"]
    missing = [c for c in need if c not in sizes.columns]
    if missing:
        raise ValueError(f"cell size table lacks column(s) {missing}")
    df, gcol, order = _group_values(sizes, group)
    classes = sorted(set(df["class"].astype(str)))
    fig = Figure(figsize=(max(8.0, 1.6 * len(classes) * max(1, len(order) / 2) * 2), 4), layout="constrained")
    axes = fig.subplots(1, 2)
    specs = [("area_fraction", "box area / image area"),
             ("rel_normal_area", "box area / mean normal area (same image)")]
    for ax, (y, label) in zip(axes, specs):
        d, dropped = _finite(df, y)
        if log:
            pos = d[y] > 0
            dropped += int((~pos).sum())
            d = d[pos]
        if len(d):
            kw = dict(hue=gcol, hue_order=order, palette=palette(order)) if group else {"color": "C0"}
            sns.violinplot(d, x="class", y=y, order=classes, ax=ax, cut=0, inner="quart",
                           density_norm="width", log_scale=log or None, linewidth=0.8, **kw)
        ax.set(xlabel="", ylabel=label)
        if dropped:
            ax.set_title(f"{dropped} box(es) without a {'finite positive' if log else 'finite'} value left out", fontsize=8)
    if group:
        for ax in axes[:1]:
            if ax.get_legend() is not None:
                ax.get_legend().remove()
        leg = axes[1].get_legend()
        if leg is not None:
            leg.set_title(group)
    if len(axes) and "rel_normal_area" in sizes:
        axes[1].axhline(1.0, color="0.5", linewidth=0.8, linestyle=":")
    fig.suptitle(title)
    return fig


def neighbourhood_curves(neigh: pd.DataFrame, *, group: str | None = None,
                         title: str = "Normal cells near positive cells") -> Figure:
    """Mean normal neighbours per positive cell against k, one line per group.

    From :func:`~workbench.analysis.stats.neighbourhood_counts`: each image contributes the mean over
    its positive cells; the line is the mean over images (each image weighs the same) and
    the band spans the minimum to maximum over images.
    """
    need = ["image", "k", "n_neighbours"]
    missing = [c for c in need if c not in neigh.columns]
    if missing:
        raise ValueError(f"neighbourhood table lacks column(s) {missing}")
    df, gcol, order = _group_values(neigh, group)
    per_image = df.groupby([gcol, "image", "k"], sort=True)["n_neighbours"].mean().reset_index()
    colours = palette(order)
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for g in order:
        s = (per_image[per_image[gcol] == g].groupby("k")["n_neighbours"]
             .agg(["mean", "min", "max"]).reset_index())
        n_img = per_image.loc[per_image[gcol] == g, "image"].nunique()
        if not len(s):
            continue
        ax.plot(s["k"], s["mean"], marker="o", ms=4, color=colours[g],
                label=f"{g if group else 'all images'} ({n_img} images)")
        ax.fill_between(s["k"], s["min"], s["max"], color=colours[g], alpha=0.2, linewidth=0)
    ks = sorted(set(per_image["k"]))
    if ks:
        ax.set_xticks(ks)
    ax.set(xlabel="k (reach = k × mean positive-cell radius)", ylabel="normal cells per positive cell",
           title=title)
    ax.set_ylim(bottom=0)
    if len(per_image):
        ax.legend(fontsize=8, title=group)
    return fig


def flag_bars(flags: pd.DataFrame, flag_col: str = "flagged", *, group: str | None = None,
              title: str = "") -> Figure:
    """Share of flagged rows (cells or images, from :func:`~workbench.analysis.stats.flag`) per group."""
    if flag_col not in flags.columns:
        raise ValueError(f"column {flag_col!r} is not in the table (columns: {list(flags.columns)})")
    df, gcol, order = _group_values(flags, group)
    s = df.groupby(gcol)[flag_col].agg(["sum", "size"]).reindex(order).fillna(0)
    fig = Figure(figsize=(max(4.0, 1.0 * len(order) + 2.5), 3.6), layout="constrained")
    ax = fig.subplots()
    share = (s["sum"] / s["size"].where(s["size"] > 0)).fillna(0).to_numpy()
    bars = ax.bar(order, share, color=[palette(order)[g] for g in order])
    ax.bar_label(bars, labels=[f"{int(a)}/{int(b)}" for a, b in zip(s["sum"], s["size"])], fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel=f"share {flag_col}", xlabel=group or "",
           title=title or flags.attrs.get("rule", flag_col))
    ax.title.set_fontsize(9)
    return fig
