"""Report: figures in one style (``matplotlib.figure.Figure`` objects, no pyplot state, no backend
chosen), saving them as PNG + PDF with captions, and the plots every layer draws. Depends only on
:mod:`workbench.core`.

Importing it lets Figure objects display inline in a running IPython kernel
(:func:`workbench.report.inline.show_figures_inline`); outside IPython that is a no-op.
"""
from workbench.report.inline import show_figures_inline as _show_figures_inline

_show_figures_inline()
