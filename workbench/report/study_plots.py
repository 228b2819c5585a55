"""Figures of the studies (tidy DataFrame in, matplotlib Figure out; no file I/O, no plt.show)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from workbench.report.figures import palette  # noqa: E402


def pr_curves(curves: pd.DataFrame, *, iou_thr: float = 0.5, title: str = "Precision-recall") -> Figure:
    """Interpolated PR curves per class at one IoU threshold (from ``EvalResult.pr_curves``)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    sel = curves[np.isclose(curves["iou_thr"], iou_thr)] if len(curves) else curves
    for cls, g in sel.groupby("class", sort=True):
        ax.plot(g["recall"], g["precision"].fillna(0), label=str(cls))
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    if len(sel):
        ax.legend(title="class", fontsize=8)
    fig.tight_layout()
    return fig


def metric_curves(table: pd.DataFrame, *, x: str = "epoch", y: str = "mAP50", hue: str = "arm",
                  title: str = "", ylabel: str | None = None) -> Figure:
    """Mean over seeds with the spread (min..max) shaded, one line per ``hue`` value."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    colours = palette(sorted(table[hue].unique()))
    for arm, g in table.groupby(hue, sort=True):
        s = g.groupby(x)[y].agg(["mean", "min", "max", "count"]).reset_index()
        ax.plot(s[x], s["mean"], marker="o", ms=3, color=colours[arm], label=f"{arm} (n={int(s['count'].max())})")
        ax.fill_between(s[x], s["min"], s["max"], color=colours[arm], alpha=0.2, linewidth=0)
    ax.set(xlabel=x, ylabel=ylabel or y, title=title)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def size_vs_accuracy(table: pd.DataFrame, *, title: str = "Model size vs mAP50") -> Figure:
    """Parameters (millions) against mAP50, marker area proportional to parameters."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    params_m = table["params"] / 1e6
    sizes = 600 * params_m / max(params_m.max(), 1e-9) + 20
    sc = ax.scatter(params_m, table["mAP50"], s=sizes, c=range(len(table)), cmap="viridis", alpha=0.7,
                    edgecolor="k")
    for _, r in table.iterrows():
        label = str(r["model"]) + (f"\n{r['latency_ms']:.0f} ms/img" if "latency_ms" in r and pd.notna(r["latency_ms"]) else "")
        ax.annotate(label, (r["params"] / 1e6, r["mAP50"]), textcoords="offset points", xytext=(8, 4), fontsize=8)
    top = float(np.nanmax(table["mAP50"])) if len(table) and np.isfinite(table["mAP50"]).any() else 0.0
    ax.set_ylim(0, max(0.1, top * 1.2))
    ax.set_xlim(0, float(params_m.max()) * 1.25 if len(table) else 1)
    del sc
    fig.tight_layout()
    return fig
