"""Figures of notebook 08 (micronuclei): tidy tables in, ``matplotlib.figure.Figure`` out, no pyplot state."""
from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.analysis.micronuclei import MN, NUCLEUS


def frequency_scatter(freq: pd.DataFrame, *, title: str = "MN frequency per image: predicted vs true"):
    """Predicted against true MN frequency, one marker per approach and image, identity line
    (a ``matplotlib.figure.Figure``, no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for a, g in freq.groupby("approach", sort=False):
        ax.scatter(g["true_mn_frequency"], g["pred_mn_frequency"], label=a, s=45, edgecolor="k", alpha=0.8)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="identity")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="true MN frequency (cells with >= 1 MN / cells)",
           ylabel="predicted MN frequency", title=title)
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def criteria_chart(criteria: pd.DataFrame, *, cls: str = MN, title: str = "Micronuclei: recall and precision by matching criterion"):
    """Recall and precision of ``cls`` per approach, one group of bars per criterion (a Figure)."""
    from matplotlib.figure import Figure

    t = criteria[criteria["class"] == cls]
    names = list(dict.fromkeys(t["criterion"]))
    approaches = list(dict.fromkeys(t["approach"]))
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2, sharey=True)
    width = 0.8 / max(len(approaches), 1)
    for ax, metric in zip(axes, ("recall", "precision")):
        for k, a in enumerate(approaches):
            v = t[t["approach"] == a].set_index("criterion").reindex(names)[metric].fillna(0)
            ax.bar(np.arange(len(names)) + k * width, v.to_numpy(), width, label=a)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
        ax.set(title=metric, ylim=(0, 1))
    axes[0].set_ylabel(cls)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    return fig


def error_overlay(image: np.ndarray, gt: pd.DataFrame, pred: pd.DataFrame, *, title: str):
    """One image with its MN outcomes (centre <= 3 px): found (blue), spurious (vermillion),
    missed (black), predicted nuclei (grey); ``pred`` already thresholded (a Figure)."""
    from workbench.evaluation import tiny_matching as tm
    from workbench.report.overlays import overlay_figure

    g, p = gt.assign(image="i"), pred.assign(image="i")
    m = tm.match(g[g["class"] == MN], p[p["class"] == MN], {MN: tm.CENTRE3})
    is_gt = (m["kind"] == "gt").to_numpy()
    missed = is_gt & (m["outcome"] == "fn").to_numpy()
    role = np.where(is_gt, "MN missed", np.where(m["outcome"] == "tp", "MN found", "MN spurious"))
    shown = m.assign(**{"class": role, "missed": missed})[~is_gt | missed][["x1", "y1", "x2", "y2", "class", "missed"]]
    nuclei = p.loc[p["class"] == NUCLEUS, ["x1", "y1", "x2", "y2"]].assign(**{"class": "predicted nucleus",
                                                                             "missed": False})
    boxes = pd.concat([nuclei, shown], ignore_index=True)
    return overlay_figure(image, boxes, positive="MN spurious", normal="MN found", thickness=1, title=title, size=9)
