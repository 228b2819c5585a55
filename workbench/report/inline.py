"""Figures inline in Jupyter: ``matplotlib.figure.Figure`` objects display as PNG through IPython's
display formatters, without pyplot and without choosing a matplotlib backend.

The plots of this package build ``Figure`` objects directly (no pyplot state, nothing to close).
IPython only knows how to show such an object once a formatter is registered for its type; the
inline backend registers one when pyplot is imported under it, which a Figure-only notebook
never does (it then prints ``<Figure size 660x400 with 1 Axes>``). :func:`show_figures_inline`
registers the same PNG printer IPython's inline backend uses, once, in a running IPython kernel
or shell; importing :mod:`workbench.report` calls it. Outside IPython it does nothing.
"""
from __future__ import annotations

import sys
from functools import partial
from typing import Any

__all__ = ["show_figures_inline"]

# the MIME types IPython's inline backend may already print figures as (``InlineBackend.figure_formats``)
_FIGURE_MIME = ("image/png", "image/svg+xml", "image/jpeg", "application/pdf")


def show_figures_inline(shell: Any = None) -> bool:
    """Make ``Figure`` objects display as ``image/png`` in IPython; return whether a printer is set.

    ``shell`` defaults to the running IPython shell (none: nothing happens, False is returned).
    A printer the user or the inline backend already set (e.g. ``%config
    InlineBackend.figure_formats = ['svg']``) is kept as it is.
    """
    if shell is None:
        ipython = sys.modules.get("IPython")  # never import IPython just to find it is not running
        shell = ipython.get_ipython() if ipython is not None else None
    formatters = getattr(getattr(shell, "display_formatter", None), "formatters", None)
    if not formatters or "image/png" not in formatters:
        return False
    from IPython.core.pylabtools import print_figure

    key = ("matplotlib.figure", "Figure")
    if any(key in formatters[m].deferred_printers or _has_figure_printer(formatters[m])
           for m in _FIGURE_MIME if m in formatters):
        return True
    # by name: no matplotlib import needed here, IPython resolves it when a Figure is shown
    formatters["image/png"].for_type_by_name(*key, partial(print_figure, fmt="png", base64=True))
    return True


def _has_figure_printer(formatter: Any) -> bool:
    figure = getattr(sys.modules.get("matplotlib.figure"), "Figure", None)
    return figure is not None and figure in formatter.type_printers
