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


def accuracy_vs_cost(table: pd.DataFrame, *, y: str = "map50", title: str = "Model size vs test mAP50") -> Figure:
    """Two panels, one point per model: ``y`` against parameters (millions) and against latency
    (``latency_ms``, when the table has it), with ``<y>_lo``..``<y>_hi`` as error bars when known."""
    costs = [("params", "parameters (millions)", 1e-6)]
    if "latency_ms" in table and table["latency_ms"].notna().any():
        where = f" on {table['latency_device'].iloc[0]}" if "latency_device" in table else ""
        costs.append(("latency_ms", f"latency{where} (ms per image, batch 1)", 1.0))
    fig = Figure(figsize=(4.6 * len(costs), 4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(costs), squeeze=False)).ravel()
    colours = palette([str(m) for m in table["model"]])
    has_ci = {f"{y}_lo", f"{y}_hi"} <= set(table.columns) and table[[f"{y}_lo", f"{y}_hi"]].notna().all().all()
    top = float(np.nanmax(table[f"{y}_hi" if has_ci else y])) if len(table) else 0.0
    for ax, (col, label, scale) in zip(axes, costs):
        for _, r in table.iterrows():
            x, c = float(r[col]) * scale, colours[str(r["model"])]
            err = np.array([[r[y] - r[f"{y}_lo"]], [r[f"{y}_hi"] - r[y]]]).clip(min=0) if has_ci else None
            ax.errorbar([x], [r[y]], yerr=err, fmt="o", ms=7, color=c, ecolor="k", elinewidth=1, capsize=3)
            ax.annotate(str(r["model"]), (x, r[y]), textcoords="offset points", xytext=(7, -3), fontsize=8)
        xmax = float(np.nanmax(table[col])) * scale if len(table) else 1.0
        ax.set(xlim=(0, xmax * 1.3 if xmax > 0 else 1), ylim=(0, max(0.1, top * 1.1)), xlabel=label,
               ylabel=f"test {'mAP50' if y == 'map50' else y}" + (" (95 % bootstrap interval)" if has_ci else ""))
    fig.suptitle(title)
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
