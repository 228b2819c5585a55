"""Figures of the studies (tidy DataFrame in, matplotlib Figure out; no file I/O).

Built on :class:`matplotlib.figure.Figure` directly, never through pyplot: no backend is chosen
here and no figure stays open in pyplot's state (Jupyter would show it a second time).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from workbench.report.figures import palette


def pr_curves(curves: pd.DataFrame, *, iou_thr: float = 0.5, title: str = "Precision-recall") -> Figure:
    """Interpolated PR curves per class at one IoU threshold (from ``EvalResult.pr_curves``)."""
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
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
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    colours = palette(sorted(table[hue].unique()))
    for arm, g in table.groupby(hue, sort=True):
        s = g.groupby(x)[y].agg(["mean", "min", "max", "count"]).reset_index()
        lo, hi = int(s["count"].min()), int(s["count"].max())  # seeds per point (fewer below 100 % in 03)
        ax.plot(s[x], s["mean"], marker="o", ms=3, color=colours[arm],
                label=f"{arm} (n={lo if lo == hi else f'{lo}-{hi}'} per point)")
        ax.fill_between(s[x], s["min"], s["max"], color=colours[arm], alpha=0.2, linewidth=0)
    ax.set(xlabel=x, ylabel=ylabel or y, title=title)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def size_vs_accuracy(table: pd.DataFrame, *, title: str = "Model size vs mAP50") -> Figure:
    """Parameters (millions) against mAP50, marker area proportional to parameters."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
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


def arm_comparison(table: pd.DataFrame, *, y: str = "map50", group: str = "arm", order: list[str] | None = None,
                   title: str = "") -> Figure:
    """One column per arm: every seed's score as a point with its ``<y>_lo``..``<y>_hi`` interval
    (when the table has them), and the mean over seeds as a bar."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    arms = [a for a in (order or sorted(table[group].unique())) if a in set(table[group])]
    colours = palette(arms)
    for i, arm in enumerate(arms):
        g = table[table[group] == arm].sort_values("seed") if "seed" in table else table[table[group] == arm]
        ax.bar(i, g[y].mean(), color=colours[arm], alpha=0.35, width=0.7)
        xs = i + np.linspace(-0.2, 0.2, len(g)) if len(g) > 1 else np.array([float(i)])
        if f"{y}_lo" in g and f"{y}_hi" in g and g[f"{y}_lo"].notna().all():
            err = np.vstack([g[y] - g[f"{y}_lo"], g[f"{y}_hi"] - g[y]]).clip(min=0)
            ax.errorbar(xs, g[y], yerr=err, fmt="o", color=colours[arm], ecolor="k", elinewidth=1, capsize=3, ms=5)
        else:
            ax.plot(xs, g[y], "o", color=colours[arm], ms=5)
        # the mean above the highest interval, so it never sits on a seed's point or error bar
        top = float(np.nanmax(g[f"{y}_hi"])) if f"{y}_hi" in g and g[f"{y}_hi"].notna().any() else float(g[y].max())
        ax.annotate(f"mean {g[y].mean():.3f}", (i, top), textcoords="offset points", xytext=(0, 5),
                    ha="center", fontsize=8)
    ax.set_xticks(range(len(arms)), arms, fontsize=8)
    ax.set(ylabel=y, title=title, ylim=(0, 1.05))
    fig.tight_layout()
    return fig
