"""Figures from tidy DataFrames: each function returns a matplotlib ``Figure``.

No file I/O and no ``plt.show``: figures are built on :class:`matplotlib.figure.Figure`
directly (not pyplot), so they never pile up in pyplot's global state; callers save or
display them (Jupyter renders a returned Figure).
"""
from __future__ import annotations

# seaborn is imported inside the drawing functions: ~1 s (scipy.stats) that importing the module need not cost

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from workbench.report.figures import palette

SPLIT_ORDER = ["train", "val", "test", "(none)"]
DENSITY_ORDER = ["unlabelled", "empty", "sparse", "clustered", "dense"]


def _splits(values: pd.Series) -> list[str]:
    present = set(values.replace("", "(none)"))
    return [s for s in SPLIT_ORDER if s in present] + sorted(present - set(SPLIT_ORDER))


def _plain_log_ticks(axis) -> None:
    """Log axis labelled 1, 2, 5, 10, 20, ... instead of overlapping 2x10^1 style labels."""
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def class_counts(table: pd.DataFrame, *, title: str = "Objects per class and split") -> Figure:
    """Bar chart from a table with ``split``, ``class``, ``objects`` columns."""
    import seaborn as sns
    df = table.assign(split=table["split"].replace("", "(none)"))
    fig = Figure(figsize=(max(5.0, 1.2 * df["class"].nunique() + 3), 4), layout="constrained")
    ax = fig.subplots()
    sns.barplot(df, x="class", y="objects", hue="split", hue_order=_splits(df["split"]), ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fontsize=7)
    ax.set(title=title, xlabel="", ylabel="objects")
    return fig


def box_size_distribution(objects: pd.DataFrame, *, classes: Sequence[str] | None = None,
                          title: str = "Box sizes per class") -> Figure:
    """Histograms of box width and height (pixels, log scale) per class."""
    import seaborn as sns
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    df = objects[(objects["width_px"] > 0) & (objects["height_px"] > 0)]
    present = set(df["class"])
    classes = [c for c in (classes or sorted(present)) if c in present]
    for ax, col, label in zip(axes, ["width_px", "height_px"], ["box width (px)", "box height (px)"]):
        if len(df):
            sns.histplot(df, x=col, hue="class", hue_order=classes, log_scale=True, element="step",
                         palette=palette(classes), ax=ax, bins=40)
            _plain_log_ticks(ax.xaxis)
        ax.set(xlabel=label, ylabel="boxes")
    fig.suptitle(title)
    return fig


def objects_per_image(images: pd.DataFrame, *, title: str = "Objects per image") -> Figure:
    """Histogram of ``n_objects`` per image, stacked by ``split``."""
    import seaborn as sns
    df = images.assign(split=images["split"].replace("", "(none)"))
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    top = int(df["n_objects"].max()) if len(df) else 0
    bins = np.arange(0, top + 2) - 0.5 if top <= 60 else 40
    sns.histplot(df, x="n_objects", hue="split", hue_order=_splits(df["split"]), multiple="stack",
                 bins=bins, ax=ax)
    ax.set(title=title, xlabel="objects in the image", ylabel="images")
    return fig


def density_classes(images: pd.DataFrame, *, title: str = "Density class per image") -> Figure:
    """Counts of density classes (unlabelled/empty/sparse/clustered/dense) per split."""
    import seaborn as sns
    df = images.assign(split=images["split"].replace("", "(none)"))
    order = [d for d in DENSITY_ORDER if d in set(df["density"])]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    sns.countplot(df, x="density", order=order, hue="split", hue_order=_splits(df["split"]), ax=ax)
    ax.set(title=title, xlabel="", ylabel="images")
    return fig


def quality_proxies(images: pd.DataFrame, *, title: str = "Image quality proxies") -> Figure:
    """Histograms of brightness, contrast, sharpness (log) and colourfulness, by split."""
    import seaborn as sns
    df = images.assign(split=images["split"].replace("", "(none)")).dropna(subset=["brightness"])
    fig = Figure(figsize=(10, 6), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    hue_order = _splits(df["split"]) if len(df) else None
    specs = [("brightness", False, "mean grey level"), ("contrast", False, "std of grey"),
             ("sharpness", True, "variance of Laplacian"), ("colourfulness", False, "mean channel spread")]
    for ax, (col, log, label) in zip(axes, specs):
        data = df[df[col] > 0] if log else df
        if len(data):
            sns.histplot(data, x=col, hue="split", hue_order=hue_order, element="step", log_scale=log,
                         bins=30, ax=ax)
            if log:
                _plain_log_ticks(ax.xaxis)
        ax.set(xlabel=f"{col} ({label})", ylabel="images")
    fig.suptitle(title)
    return fig


def example_grid(images: Sequence[np.ndarray], boxes: Sequence[pd.DataFrame | np.ndarray], *,
                 titles: Sequence[str] | None = None, classes: Sequence[str] | None = None,
                 ncols: int = 4, panel_size: float = 3.2) -> Figure:
    """A grid of images (RGB or grey arrays) with their boxes drawn, coloured by class.

    ``boxes[i]`` is a DataFrame with ``x1, y1, x2, y2`` (pixels of ``images[i]``) and
    optionally ``class``, or an array of rows ``x1 y1 x2 y2 [class_id]``.
    """
    if len(images) != len(boxes):
        raise ValueError(f"got {len(images)} images but {len(boxes)} box sets")
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    names = list(classes or [])
    for b in boxes:
        if isinstance(b, pd.DataFrame) and "class" in b:
            names += [c for c in dict.fromkeys(b["class"].astype(str)) if c not in names]
    colours = palette(names)
    fig = Figure(figsize=(panel_size * ncols, panel_size * nrows * 0.8 + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for k, (arr, b) in enumerate(zip(images, boxes)):
        ax = axes[k]
        ax.imshow(arr, cmap="gray" if np.ndim(arr) == 2 else None)
        if isinstance(b, pd.DataFrame):
            rows = zip(b["x1"], b["y1"], b["x2"], b["y2"],
                       b["class"].astype(str) if "class" in b else [""] * len(b))
        else:
            a = np.asarray(b, dtype=float).reshape(-1, np.shape(b)[1] if np.ndim(b) == 2 else 4)
            cls = [names[int(c)] if a.shape[1] > 4 and int(c) < len(names) else "" for c in
                   (a[:, 4] if a.shape[1] > 4 else np.zeros(len(a)))]
            rows = zip(a[:, 0], a[:, 1], a[:, 2], a[:, 3], cls)
        for x1, y1, x2, y2, c in rows:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=0.8,
                                   edgecolor=colours.get(c, "yellow")))
        if titles is not None and k < len(titles):
            ax.set_title(titles[k], fontsize=7)
    if names:
        handles = [Rectangle((0, 0), 1, 1, fill=False, edgecolor=colours[c]) for c in names]
        fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 6), fontsize=8)
    return fig
