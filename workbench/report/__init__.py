"""Report: figures in one style (``matplotlib.figure.Figure`` objects, no pyplot state), saving
them as PNG + PDF with captions, and the plots every layer draws. Depends only on :mod:`workbench.core`.
"""
