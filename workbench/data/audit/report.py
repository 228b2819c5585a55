"""The audit run, its summary tables and its output folder.

:func:`audit_dataset` reads the dataset once (images decoded in a process pool while labels are
parsed), takes the measurements of :mod:`.checks`, collects the findings of :mod:`.problems` and
returns an :class:`AuditResult`; :func:`summary_tables` condenses it; :func:`write_audit` writes
``audit.json``, the CSV tables and the figures to a new folder outside the dataset.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench import __version__
from workbench.core.problems import ProblemLog
from workbench.data.audit.checks import (DENSITY_CLASSES, GREY_COLOURFULNESS, AuditSettings, clark_evans,
                                         density_class, duplicate_boxes, label_path, read_labels,
                                         start_image_checks)
from workbench.data.audit.problems import (PROBLEM_COLUMNS, absent_class_problems, box_problems,
                                           duplicate_box_problems, duplicate_image_problems, folder_problems,
                                           image_problems, import_problems, label_log_problems, meta_problems)
from workbench.data.canonical import META_COLUMNS, SPLITS, read_classes, read_meta
from workbench.data.leakage import DEFAULT_THRESHOLD, find_duplicates


@dataclass
class AuditResult:
    """Tidy tables of one audit. ``images``/``objects`` have one row per image/box."""

    root: Path
    classes: list[str]
    images: pd.DataFrame
    objects: pd.DataFrame
    problems: pd.DataFrame
    duplicates: pd.DataFrame
    settings: AuditSettings
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        return summary_tables(self)

    def summary(self) -> dict[str, Any]:
        """The ``audit.json`` document."""
        objs = self.objects
        known = objs[objs["class_id"].between(0, len(self.classes) - 1)]
        split = self.images["split"].replace("", "(none)")
        sev = self.problems["severity"].value_counts()
        return {
            "dataset": str(self.root),
            "workbench_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "images": int(len(self.images)),
            "objects": int(len(known)),
            "classes": {c: int((known["class"] == c).sum()) for c in self.classes},
            "splits": {s: int(n) for s, n in split.value_counts().items()},
            "density": {d: int(n) for d, n in self.images["density"].value_counts().items()},
            "settings": asdict(self.settings),
            "problem_counts": {s: int(sev.get(s, 0)) for s in ("error", "warning", "info")},
            "problem_kinds": {k: int(n) for k, n in self.problems["kind"].value_counts().items()},
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "problems": self.problems[PROBLEM_COLUMNS].to_dict(orient="records"),
        }


# ----------------------------------------------------------------------------- audit

def audit_dataset(root: str | Path, *, dense_threshold: int = 100, cluster_ratio: float = 0.6,
                  cluster_min_objects: int = 10, tiny_box_px: float = 3.0, dup_iou: float = 0.9,
                  near_dup_distance: int = DEFAULT_THRESHOLD, reduce: int = 2, common_class_share: float = 0.9,
                  workers: int | None = None) -> AuditResult:
    """Audit the canonical dataset at ``root`` (read-only) and return tidy tables.

    See :mod:`.checks` for what each threshold means. ``workers``: processes that
    decode images (default ``os.cpu_count()``; 1 = in this process).
    """
    settings = AuditSettings(dense_threshold, cluster_ratio, cluster_min_objects, tiny_box_px,
                             dup_iou, near_dup_distance, reduce, common_class_share)
    root = Path(root)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    meta = read_meta(root)
    classes = read_classes(root)
    for col in ("file", "width", "height", "split"):
        if col not in meta:
            raise ValueError(f"{root / 'meta.csv'}: missing column {col!r}")
    meta = meta.assign(split=meta["split"].astype(str), image_id=meta["image_id"].astype(str))
    workers = os.cpu_count() or 1 if workers is None else max(1, int(workers))

    collect = start_image_checks([str(root / f) for f in meta["file"]], settings.reduce, workers)
    t = time.perf_counter()
    log = ProblemLog()
    objects, states = read_labels(root, meta, classes, log)
    timings["labels"] = time.perf_counter() - t
    t = time.perf_counter()
    checks = pd.DataFrame(collect(), index=meta.index)
    timings["images"] = time.perf_counter() - t

    t = time.perf_counter()
    images = _images_frame(meta, checks, states, objects, settings)
    label_of = dict(zip(images["image_id"], images["label_path"]))
    file_of = dict(zip(images["image_id"], images["file"]))
    dup_boxes = duplicate_boxes(objects, iou=settings.dup_iou)
    duplicates = find_duplicates(meta, threshold=settings.near_dup_distance)

    rows = import_problems(root, meta) + meta_problems(meta) + folder_problems(root, meta)
    rows += label_log_problems(log, label_of)
    rows += image_problems(images)
    rows += box_problems(objects, classes, settings, label_of)
    rows += absent_class_problems(objects, images, classes, settings)
    rows += duplicate_box_problems(dup_boxes, label_of, settings)
    rows += duplicate_image_problems(duplicates, file_of)
    problems = pd.DataFrame(rows, columns=PROBLEM_COLUMNS).fillna("").astype(str)
    order = {"error": 0, "warning": 1, "info": 2}
    problems = (problems.assign(_s=problems["severity"].map(order).fillna(3))
                .sort_values(["_s", "kind", "image", "file"], kind="stable").drop(columns="_s")
                .reset_index(drop=True))
    timings["checks"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return AuditResult(root, classes, images, objects, problems, duplicates, settings, timings)


def _images_frame(meta: pd.DataFrame, checks: pd.DataFrame, states: list[str], objects: pd.DataFrame,
                  settings: AuditSettings) -> pd.DataFrame:
    ids = meta["image_id"]
    counts = objects["image_id"].value_counts().reindex(ids, fill_value=0).to_numpy()
    ce = clark_evans(objects, meta, min_objects=settings.cluster_min_objects).reindex(ids).to_numpy()
    df = pd.DataFrame({
        "image_id": ids.to_numpy(), "split": meta["split"].to_numpy(), "file": meta["file"].to_numpy(),
        "label_path": [label_path(str(f), str(lf)) for f, lf in
                       zip(meta["file"], meta.get("label_file", [""] * len(meta)))],
        "width": meta["width"].to_numpy(), "height": meta["height"].to_numpy(),
        "channels": meta["channels"].to_numpy() if "channels" in meta else -1,
        "bit_depth": meta["bit_depth"].to_numpy() if "bit_depth" in meta else -1,
        "label_state": states, "n_objects": counts, "clark_evans": ce,
    }, index=meta.index)
    df = pd.concat([df, checks], axis=1)
    df["density"] = density_class(df["n_objects"], df["label_state"], df["clark_evans"], settings)
    df["grey"] = df["colourfulness"] < GREY_COLOURFULNESS
    extra = [c for c in meta.columns if c not in META_COLUMNS and c not in df.columns]
    return pd.concat([df, meta[extra]], axis=1).reset_index(drop=True)


# ----------------------------------------------------------------------------- tables

def summary_tables(result: AuditResult) -> dict[str, pd.DataFrame]:
    """The audit's summary tables (tidy), by name; written as CSV by :func:`write_audit`."""
    im, ob = result.images, result.objects
    split = im["split"].replace("", "(none)")
    ob_known = ob[ob["class_id"].between(0, len(result.classes) - 1)].assign(
        split=lambda d: d["split"].replace("", "(none)"),
        side_px=lambda d: np.minimum(d["width_px"], d["height_px"]))
    splits = [s for s in SPLITS + ("(none)",) if (split == s).any()]
    g = im.assign(split=split).groupby("split", sort=False)
    per_split = pd.DataFrame({
        "images": g.size(),
        "labelled": g["label_state"].apply(lambda s: int((s == "labelled").sum())),
        "empty": g["label_state"].apply(lambda s: int((s == "empty").sum())),
        "unlabelled": g["label_state"].apply(lambda s: int(s.isin(["unlabelled", "missing"]).sum())),
        "objects": g["n_objects"].sum(),
        "objects_per_image": g["n_objects"].mean().round(2),
    }).reindex(splits).reset_index()

    cls_split = (ob_known.groupby(["split", "class"]).agg(objects=("image_id", "size"),
                                                         images=("image_id", "nunique"))
                 .reindex(pd.MultiIndex.from_product([splits, result.classes], names=["split", "class"]),
                          fill_value=0).reset_index())

    opi = (im.assign(split=split).groupby("split")["n_objects"]
           .describe(percentiles=[0.1, 0.5, 0.9]).reindex(splits).reset_index())

    def q(p):
        return lambda s: float(np.nanpercentile(s, p)) if len(s) else np.nan
    box = (ob_known.groupby("class").agg(
        boxes=("class", "size"), width_p05=("width_px", q(5)), width_median=("width_px", "median"),
        width_p95=("width_px", q(95)), height_p05=("height_px", q(5)), height_median=("height_px", "median"),
        height_p95=("height_px", q(95)), area_frac_median=("area_frac", "median"),
        aspect_median=("aspect", "median"),
        tiny=("side_px", lambda s: int(((s > 0) & (s < result.settings.tiny_box_px)).sum())))
           .reindex(result.classes).reset_index())

    sizes = (im.groupby(["width", "height", "channels", "bit_depth", "file_format"], dropna=False)
             .size().reset_index(name="images").sort_values("images", ascending=False))
    dens = (im.assign(split=split).groupby(["split", "density"]).size()
            .reindex(pd.MultiIndex.from_product([splits, list(DENSITY_CLASSES)], names=["split", "density"]),
                     fill_value=0).reset_index(name="images"))
    quality = (im.assign(split=split).groupby("split")
               .agg(brightness=("brightness", "median"), contrast=("contrast", "median"),
                    sharpness=("sharpness", "median"), colourfulness=("colourfulness", "median"),
                    clipped=("clipped", "median"), grey_images=("grey", "sum"))
               .reindex(splits).reset_index())
    kinds = (result.problems.groupby(["severity", "kind", "source"]).size().reset_index(name="n")
             if len(result.problems) else pd.DataFrame(columns=["severity", "kind", "source", "n"]))
    return {"images_per_split": per_split, "objects_per_class_split": cls_split,
            "objects_per_image": opi, "box_sizes": box, "image_properties": sizes,
            "density": dens, "quality": quality, "problem_kinds": kinds}


# ----------------------------------------------------------------------------- writing

def write_audit(result: AuditResult, out: str | Path, *, overwrite: bool = False,
                figures: bool = True, examples: int = 8, dpi: int = 150) -> Path:
    """Write ``audit.json``, CSV tables and PNG + PDF figures to a new folder ``out``.

    ``figures=False`` skips the figures (they take most of the time); ``examples`` is the
    number of example images with their boxes in ``figures/examples``.

    The folder appears atomically. An existing earlier audit (a folder holding
    ``audit.json``) is replaced; any other non-empty folder only with ``overwrite``.
    ``out`` must lie outside the dataset: an audit never changes the dataset.
    """
    from workbench.core.atomic import new_folder

    out = Path(out)
    root = result.root.resolve()
    if out.resolve() == root or root in out.resolve().parents:
        raise ValueError(f"{out}: audit output must lie outside the dataset folder {root} "
                         "(an audit never modifies the dataset)")
    replace = overwrite or (out / "audit.json").is_file()
    with new_folder(out, overwrite=replace) as tmp:
        (tmp / "audit.json").write_text(json.dumps(result.summary(), indent=1, default=_json_default) + "\n",
                                        encoding="utf-8")
        result.images.to_csv(tmp / "images.csv", index=False)
        result.objects.to_csv(tmp / "objects.csv", index=False)
        result.problems.to_csv(tmp / "problems.csv", index=False)
        result.duplicates.to_csv(tmp / "duplicates.csv", index=False)
        tables = result.tables
        for name, table in tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False)
        if figures:
            (tmp / "figures").mkdir()
            for name, fig in _figures(result, tables, examples).items():
                # constrained layout already fits the figure: no bbox_inches="tight" (a second draw)
                fig.savefig(tmp / "figures" / f"{name}.png", dpi=dpi, pil_kwargs={"compress_level": 1})
                fig.savefig(tmp / "figures" / f"{name}.pdf")
    return out


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, Path):
        return str(v)
    return str(v)


def _figures(result: AuditResult, tables: dict[str, pd.DataFrame], examples: int) -> dict[str, Any]:
    from workbench.report import plots

    figs = {
        "class_counts": plots.class_counts(tables["objects_per_class_split"]),
        "box_sizes": plots.box_size_distribution(result.objects[result.objects["class"] != "?"],
                                                 classes=result.classes),
        "objects_per_image": plots.objects_per_image(result.images),
        "density_classes": plots.density_classes(result.images),
        "quality_proxies": plots.quality_proxies(result.images),
    }
    if examples > 0:
        arrays, boxes, titles = example_images(result, n=examples)
        if arrays:
            figs["examples"] = plots.example_grid(arrays, boxes, titles=titles, classes=result.classes)
    return figs


def example_images(result: AuditResult, *, n: int = 8, max_side: int = 384, seed: int = 0
                   ) -> tuple[list[np.ndarray], list[pd.DataFrame], list[str]]:
    """Up to ``n`` readable labelled images (one per density class first, then seeded picks),
    as RGB arrays scaled to ``max_side``, with their boxes in those pixels."""
    import cv2

    ok = result.images["readable"].astype(bool) & result.images["label_state"].isin(["labelled", "empty"])
    im = result.images[ok]
    if im.empty:
        return [], [], []
    picks = list(im.groupby("density", sort=True).head(1).index)
    rest = im.drop(index=picks).sample(frac=1.0, random_state=seed).index.tolist()
    chosen = im.loc[(picks + rest)[:n]]
    arrays, boxes, titles = [], [], []
    for r in chosen.itertuples(index=False):
        arr = cv2.imread(str(result.root / r.file), cv2.IMREAD_COLOR)
        if arr is None:
            continue
        scale = min(1.0, max_side / max(arr.shape[:2]))
        if scale < 1:
            arr = cv2.resize(arr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        arrays.append(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB))
        b = result.objects.loc[result.objects["image_id"] == r.image_id, ["class", "x1", "y1", "x2", "y2"]].copy()
        b[["x1", "y1", "x2", "y2"]] *= scale
        boxes.append(b)
        titles.append(f"{r.image_id} ({r.split or 'no split'}, {r.n_objects} obj., {r.density})")
    return arrays, boxes, titles
