"""Saving figures for papers: PNG (300 dpi) + PDF, with the caption and provenance embedded."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


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
