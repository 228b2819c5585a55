"""An independent test split for datasets that ship without one.

BCCD's official split is train/val only, and val is what early stopping and threshold tuning
look at. :func:`with_test_split` writes a copy of a canonical dataset in which a seeded part
of val is moved to ``test`` (:func:`workbench.data.splits.hold_out`); models trained on the copy
never see those images, so the cascade can be judged on them honestly. Each val image's fate
follows from its own hash, so a re-imported, grown dataset holds out the same images again.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from workbench.core.atomic import write_text
from workbench.data.canonical import read_classes, read_meta, save_meta
from workbench.data.subsets import subset_dataset
from workbench.data.splits import hold_out

DATA_SEED = 0  # seed of every study's held-out test split and caps: models' seeds never move test images


def with_test_split(src: str | Path, out: str | Path, *, source: str = "val", fraction: float = 0.5,
                    seed: int = 0, group_by: str | None = None, exact: bool = False,
                    overwrite: bool = False) -> Path:
    """Copy ``src`` to ``out`` (images hard-linked) with ``fraction`` of ``source`` moved to test.

    A dataset that already has test images is copied unchanged. The choice is recorded in
    ``out/dataset.json`` under ``"hold_out"``. ``src`` is never modified.
    """
    src, out = Path(src), Path(out)
    if (out / "meta.csv").exists() and not overwrite:
        return out
    subset_dataset(src, out, keep={}, overwrite=True)
    meta = read_meta(out)
    record: dict = {"source": source, "fraction": fraction, "seed": seed, "group_by": group_by,
                    "method": "exact count" if exact else "per-unit hash (stable when the dataset grows)"}
    if meta["split"].eq("test").any():
        record["skipped"] = "dataset already has a test split"
    else:
        meta = meta.assign(split=hold_out(meta, source=source, fraction=fraction, seed=seed, group_by=group_by,
                                          exact=exact))
        save_meta(out, meta, read_classes(out))
    record["images"] = {s: int(n) for s, n in meta["split"].value_counts().items()}
    info_path = out / "dataset.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    info["hold_out"] = record
    write_text(info_path, json.dumps(info, indent=2, default=str) + "\n")
    return out


def held_out_dataset(dataset: str | Path, work: str | Path, *, test_fraction: float = 0.5,
                     caps: Mapping[str, float | int] | Sequence[tuple[str, float | int]] = (),
                     tag: str = "capped", fmt: str | None = None) -> Path:
    """A study's copy of ``dataset`` (a vendored name or a raw folder, imported by
    :func:`workbench.data.datasets.prepare`) with an independent test split, under ``work``:
    ``test_fraction`` of val held out as test when it ships none (:func:`with_test_split`,
    recorded in the copy's ``dataset.json``), then capped per split by ``caps`` (a share or a
    count of images; ``1.0`` keeps all) in a copy named by ``tag`` (e.g. the profile).

    The split and the caps use :data:`DATA_SEED`. Idempotent: an existing copy is reused."""
    from workbench.data import datasets

    work = Path(work)
    held = with_test_split(datasets.prepare(dataset, fmt=fmt), work / f"{Path(str(dataset)).name}_heldout",
                           fraction=test_fraction, seed=DATA_SEED)
    keep = {split: n for split, n in dict(caps).items() if n != 1.0}
    if not keep:
        return held
    capped = work / f"{held.name}_{tag}"
    if not (capped / "meta.csv").exists():
        subset_dataset(held, capped, keep=keep, seed=DATA_SEED, overwrite=True)
    return capped
