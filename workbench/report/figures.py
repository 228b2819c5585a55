"""One figure style and saving figures for papers: the colour palette, PNG (300 dpi) + PDF with the
caption and provenance embedded."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure


def palette(names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per name, in order, from seaborn's colour-blind safe palette (RGB 0-1).

    Every plot colours groups, classes and arms through this, so a name keeps its colour
    within a figure and figures look alike.
    """
    import seaborn as sns  # ~1 s to import (scipy.stats): only when a figure is coloured

    return dict(zip(names, sns.color_palette("colorblind", max(len(names), 1))))


def save_figure(fig: Figure, stem: str | Path, *, caption: str = "", provenance: dict[str, Any] | None = None,
                dpi: int = 300) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf``; caption and provenance (run ids, seeds, dataset
    fingerprint) go into the files' metadata and into ``stem.caption.txt`` beside them."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    prov = json.dumps(provenance or {}, sort_keys=True, default=str)
    png, pdf, txt = stem.with_suffix(".png"), stem.with_suffix(".pdf"), stem.with_suffix(".caption.txt")
    fig.savefig(png, dpi=dpi, bbox_inches="tight",
                metadata={"Title": stem.name, "Description": caption, "Comment": prov, "Software": "Cell Workbench"})
    fig.savefig(pdf, bbox_inches="tight",
                metadata={"Title": stem.name, "Subject": caption, "Keywords": prov, "Creator": "Cell Workbench"})
    txt.write_text(caption + ("\n\nProvenance: " + prov if provenance else "") + "\n", encoding="utf-8")
    return [png, pdf, txt]
