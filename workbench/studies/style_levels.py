"""Style-level study: train on level subsets, test per level; grow a library batch by batch.

Two experiments on one canonical dataset (BCCD by default), both scored on a **fixed
test split** that never changes: the official validation images minus a fixed handful kept as
val, which chooses each run's ``best.pt`` and its operating score threshold (best F1 on val, for
the clinical rates) - so no training, early stopping or threshold choice sees a test image:

* **level subsets** - style levels are derived (:mod:`workbench.data.library.style_levels`; public data has
  no human style labels) on the training pool; for every subset of the profile (e.g. 0,
  0-1, all) a detector is trained on an equal number of images drawn from those levels
  (so level, not library size, differs), per seed, and scored on each test level
  separately: a train-subset x test-level table of mAP50 and of the clinical rates.
* **incremental additions** - a base library composed by :func:`workbench.data.library.composition.compose`
  (good : dense : sparse by the profile's ratios, a minimum share of positive images),
  then extension batches from the rest of the pool (:mod:`workbench.data.library.builder`); one run per
  step, metric vs library size on the same test images.

Training length follows the lab's rule of thumb (:func:`workbench.data.library.composition.training_length`)
unless the profile overrides the epochs; both values go into each run's ``run.json``.

Cells: one per (library, seed), i.e. per level subset and per incremental step; :meth:`StyleLevelsStudy.prepare`
writes every library, each cell trains on its own and scores the fixed test split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.core.paths import POSITIVE_CLASSES
from workbench.core.tables import MAP_CONF
from workbench.data import datasets
from workbench.data.canonical import read_meta
from workbench.data.library.builder import Batch, library_meta, partition, write_library
from workbench.data.library.composition import (
    Composition, TrainingLength, compose, parse_ratios, training_length)
from workbench.data.library.style_levels import (
    LEVEL, LevelRule, StyleLevels, crowding_groups, crowding_text, derive_levels, level_name, measure)
from workbench.studies.base import Cell, Profile, Study, register

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LEVELS, INCREMENTAL = "level subsets", "incremental"
GROUPS = ("good", "dense", "sparse")  # composition groups, in the lab's 6:2:2 order
SCORE_GRID = tuple(round(0.05 * k, 2) for k in range(1, 17))  # operating thresholds tried on val: 0.05 .. 0.8


@dataclass(frozen=True)
class TargetSpec:
    """How a dataset is levelled, grouped and scored."""

    positive: tuple[str, ...]  # classes counted as positive by the clinical rates
    image_positive: str  # an image is 'positive' for the library if it holds this class
    level_column: str = "sharpness"  # audit measurement the levels are derived from
    level_best: str = "high"  # which end of it is level 0
    group_column: str = "n_objects"  # crowding measurement for good/dense/sparse (tertiles)


TARGETS = {
    "bccd": TargetSpec(positive=POSITIVE_CLASSES["bccd"], image_positive="Platelets"),
    "mnfinder": TargetSpec(positive=POSITIVE_CLASSES["mnfinder"], image_positive="mn"),
    "monuseg": TargetSpec(positive=POSITIVE_CLASSES["monuseg"], image_positive="nucleus", level_column="contrast"),
}


@dataclass(frozen=True)
class StyleProfile(Profile):
    model: str = "yolov8n.yaml"  # architecture of every run (YAML name: built, never downloaded)
    imgsz: int = 640  # training and inference image size (px)
    batch: int = 16  # training batch (images); also sets the rule of thumb's steps per epoch
    seeds: tuple[int, ...] = (0, 1, 2)  # seeds of the level-subset runs (each draws its own subsets)
    incremental_seeds: tuple[int, ...] | None = None  # seeds of the incremental runs; None: the same as seeds
    n_levels: int = 3  # style levels derived from the level column (quantile bins of the training pool)
    subsets: tuple[tuple[int, ...], ...] = ((0,), (0, 1), (0, 1, 2))  # level subsets trained on, one run each
    subset_images: int | None = None  # training images of every level subset (equal); None: the smallest subset's
    val_images: int = 20  # fixed ultralytics validation images (choose best.pt), from the official val split
    test_images: int | None = None  # fixed test images; None: the rest of the official val split
    base_images: int = 60  # images of the composed base library (incremental experiment)
    batch_images: tuple[int, ...] = (40, 40)  # images of each extension batch, added in this order
    last_weight: int = 1  # repeat factor of the newest batch in each step (1: no repeat)
    ratios: str = "6:2:2"  # good : dense : sparse shares of the base library
    min_positive: float = 0.2  # least share of positive images in the base library (0.2: one in 5)
    factor: float = 2.0  # rule of thumb: optimiser iterations = factor x training images
    epochs: int | None = None  # override of the rule of thumb (recorded as such); None: the rule
    min_iterations: int = 0  # at least this many optimiser steps per run: shorter runs get more epochs
    #                          (recorded as an override beside the rule); 0: the rule or `epochs` alone
    score_thr: float | None = None  # clinical rates count predictions at or above this score (0-1);
    #                                 None: chosen per run on val (best micro F1 at IoU 0.5), never on test


PROFILES = {
    # CI: proves the pipeline on real BCCD in about a minute on 2 CPU cores; numbers mean nothing
    "smoke": StyleProfile("smoke", imgsz=128, batch=4, seeds=(0,), subsets=((0,), (0, 1, 2)), subset_images=8,
                          val_images=4, test_images=12, base_images=8, batch_images=(4,), epochs=1),
    # 2 CPU cores, estimated ~2.2 h (not yet measured; yolov8n, 416 px, batch 16 takes ~15 min for
    # 205 images x 20 epochs here, i.e. ~0.22 s per image and epoch). Level subsets: all the images of
    # the smallest level (BCCD: 69 of the 205 training images) per subset, so level, not size,
    # differs; 3 seeds. Incremental: base 85 + 60 + 60 = all 205 training images, one seed (the
    # caption says so). Training length: the rule of thumb (28-32 epochs at batch 16), raised to at
    # least 260 optimiser steps, what 205 images x 20 epochs gives and is known to learn here: the
    # rule's ~140-175 steps on 69-85 images are mostly ultralytics' 100-step warm-up, and ~120 steps
    # on ~50 images learned nothing in notebook 03's first CPU profile. So a level-subset run is 52
    # epochs (~13 min; 6 runs ~78 min) and the incremental steps 44 / 29 / 32 epochs (~53 min).
    # The middle subset (0, 1) is left out to stay near 2 h: add it for ~40 min more.
    "cpu": StyleProfile("cpu", imgsz=416, batch=16, seeds=(0, 1, 2), incremental_seeds=(0,),
                        subsets=((0,), (0, 1, 2)), subset_images=None, val_images=20, base_images=85,
                        batch_images=(60, 60), min_iterations=260),
    # a GPU: 640 px, three seeds, larger libraries, the rule of thumb at batch 16 (32 epochs)
    "full": StyleProfile("full", imgsz=640, batch=16, subset_images=None, base_images=60, batch_images=(60, 60)),
}


@dataclass
class StudyData:
    """Everything the runs are made from: the measured pool, levels, groups and splits."""

    dataset: Path
    images: pd.DataFrame  # image_id, role (train/val/test), measurements, style_level, group, positive
    levels: StyleLevels
    groups: StyleLevels


# ----------------------------------------------------------------------------- data

def spec_for(target: str | Path) -> TargetSpec:
    name = Path(str(target)).name.removesuffix("-full")
    if name not in TARGETS:
        raise ValueError(f"no style-study settings for {name!r}; known: {sorted(TARGETS)} (add a TargetSpec)")
    return TARGETS[name]


def fixed_splits(meta: pd.DataFrame, prof: StyleProfile, *, seed: int = 0) -> pd.Series:
    """Role per image: 'train' pool (official train), fixed 'val' and 'test' (from official val)."""
    train = meta["image_id"][meta["split"] == "train"].tolist()
    held = meta["image_id"][meta["split"].isin(["val", "test"])].tolist()
    if not train or len(held) < prof.val_images + 1:
        raise ValueError(f"need official train images and > {prof.val_images} val/test images; "
                         f"got {len(train)} train, {len(held)} held out")
    n_test = len(held) - prof.val_images if prof.test_images is None else min(prof.test_images, len(held) - prof.val_images)
    val, test = partition(held, [prof.val_images, n_test], seed=seed)
    role = pd.Series("", index=meta.index, dtype=object)
    role[meta["image_id"].isin(train)] = "train"
    role[meta["image_id"].isin(val)] = "val"
    role[meta["image_id"].isin(test)] = "test"
    return role


def prepare_data(target: str | Path, prof: StyleProfile, *, fmt: str | None = None) -> StudyData:
    """Measure the dataset (audit proxies), fix the splits, derive levels and crowding groups.

    Level and group cut points are fitted on the training pool and applied unchanged to
    the val/test images.
    """
    spec = spec_for(target)
    ds = datasets.prepare(target, fmt=fmt)
    meta = read_meta(ds)
    measured = measure(ds)
    role = dict(zip(meta["image_id"], fixed_splits(meta, prof)))
    images = measured.assign(role=measured["image_id"].map(role).fillna(""))
    images = images[images["role"] != ""].reset_index(drop=True)
    pool = images[images["role"] == "train"]
    lv_rule = derive_levels(pool, LevelRule("quantile", spec.level_column, k=prof.n_levels, best=spec.level_best)).rule
    levels = derive_levels(images, lv_rule)
    group, gr_rule = crowding_groups(images, column=spec.group_column, fit=images["role"] == "train")
    groups = derive_levels(images, gr_rule)
    from workbench.data.canonical import load_dataset

    objs = load_dataset(ds).objects
    pos_ids = set(objs.loc[objs["class"] == spec.image_positive, "image_id"].astype(str))
    images = images.assign(**{LEVEL: levels.table[LEVEL].to_numpy(),
                              "group": group.to_numpy(),
                              "positive": images["image_id"].isin(pos_ids).to_numpy()})
    return StudyData(Path(ds), images, levels, groups)


def group_rule_text(data: StudyData) -> str:
    return crowding_text(data.groups.rule) + " (cut points from the training pool)"


# ----------------------------------------------------------------------------- runs

def _held_out(data: StudyData) -> list[Batch]:
    im = data.images
    return [Batch("fixed_val", data.dataset, tuple(im.loc[im["role"] == "val", "image_id"]), split="val"),
            Batch("fixed_test", data.dataset, tuple(im.loc[im["role"] == "test", "image_id"]), split="test")]


def _image_meta(data: StudyData) -> pd.DataFrame:
    return data.images[["image_id", LEVEL, "group", "positive"]].rename(columns={"group": "density_class"})


def level_subset_libraries(data: StudyData, prof: StyleProfile, cache: Path, seed: int) -> dict[str, Path]:
    """One library per level subset: ``subset_images`` training images drawn from those levels."""
    pool = data.images[data.images["role"] == "train"]
    sizes = [int(pool[LEVEL].isin(s).sum()) for s in prof.subsets]
    n = prof.subset_images or min(sizes)
    out = {}
    for levels in prof.subsets:
        name = level_name(levels)
        ids = pool.loc[pool[LEVEL].isin(levels), "image_id"].tolist()
        if len(ids) < n:
            raise ValueError(f"level subset {name} has {len(ids)} training images, the profile needs {n}")
        (chosen,) = partition(ids, [n], seed=seed)
        path = cache / f"levels_{name}_s{seed}"
        _ensure_library(path, Batch(f"levels_{name}", data.dataset, chosen, meta={"style_level": name}, split="train"),
                        [], data, note={"experiment": LEVELS, "levels": list(levels), "seed": seed,
                                        "levels_rule": data.levels.rule.to_dict()})
        out[name] = path
    return out


def incremental_libraries(data: StudyData, prof: StyleProfile, cache: Path, seed: int
                          ) -> tuple[list[tuple[str, Path]], Composition]:
    """base, base+batch1, ...: the base composed by ratios, batches from the rest of the pool."""
    pool = data.images[data.images["role"] == "train"]
    comp = compose(pool, n=prof.base_images, ratios=parse_ratios(prof.ratios, GROUPS), by="group",
                   min_positive=prof.min_positive, seed=seed)
    rest = pool.loc[~pool["image_id"].isin(comp.selected["image_id"]), "image_id"].tolist()
    chunks = partition(rest, list(prof.batch_images), seed=seed)
    base = Batch("base", data.dataset, tuple(comp.selected["image_id"]), meta={"centre": data.dataset.name}, split="train")
    out = []
    for step in range(len(chunks) + 1):
        name = "base" + "".join(f"+b{k + 1}" for k in range(step))
        path = cache / f"incremental_{step}_s{seed}"
        # the newest batch of each step counts last_weight times
        grown = [Batch(f"batch{k + 1}", data.dataset, chunks[k], split="train",
                       weight=prof.last_weight if k == step - 1 else 1) for k in range(step)]
        _ensure_library(path, base, grown, data, note={"experiment": INCREMENTAL, "step": step, "seed": seed,
                                                       "composition": comp.settings,
                                                       "composition_warnings": comp.warnings})
        out.append((name, path))
    return out, comp


def _ensure_library(path: Path, base: Batch, batches: list[Batch], data: StudyData, *, note: dict[str, Any]) -> Path:
    """Write the library unless ``path`` already holds exactly these images, batches, splits and weights."""
    want = library_meta(base, batches, _held_out(data), _image_meta(data))
    cols = ["image_id", "batch", "split", "batch_weight"]
    if (path / "meta.csv").exists():
        have = read_meta(path)
        if set(cols) <= set(have.columns) and \
                have[cols].astype(str).values.tolist() == want[cols].astype(str).values.tolist():
            return path
    return write_library(base, batches, path, held_out=_held_out(data), image_meta=_image_meta(data),
                         overwrite=True, note=note)


def _train_entries(library: Path) -> int:
    return sum(1 for line in (library / "train.txt").read_text().splitlines() if line.strip())


def run_length(n_entries: int, prof: StyleProfile) -> TrainingLength:
    """The run's training length: the rule of thumb (or the profile's epochs), raised to at least
    ``prof.min_iterations`` optimiser steps (then recorded as an override beside the rule)."""
    length = training_length(n_entries, batch=prof.batch, factor=prof.factor, epochs=prof.epochs)
    steps = math.ceil(n_entries / prof.batch)
    if length.epochs * steps >= prof.min_iterations:
        return length
    return training_length(n_entries, batch=prof.batch, factor=prof.factor,
                           epochs=math.ceil(prof.min_iterations / steps))


def choose_score_thr(gt: pd.DataFrame, pred: pd.DataFrame, *, grid: Sequence[float] = SCORE_GRID,
                     iou_thr: float = 0.5) -> tuple[float, float]:
    """The operating threshold of ``grid`` with the best class-aware micro F1 (IoU ``iou_thr``) of
    ``pred`` against ``gt`` (the val split: never test); ties go to the higher threshold.
    Returns (threshold, its F1)."""
    from workbench.evaluation import metrics

    if not len(grid):
        raise ValueError("grid must hold at least one threshold")
    m = metrics.match(gt, pred, iou_thr=iou_thr, max_dets=metrics.default_max_dets(gt))
    scored = []
    for thr in grid:  # matching is greedy by score, so cutting afterwards equals matching the kept boxes
        prf = metrics.prf_from_matches(m, score_thr=thr)
        overall = prf.loc[prf["class"] == metrics.OVERALL, "f1"]
        scored.append((float(overall.iloc[0]) if len(overall) else float("nan"), float(thr)))
    f1, thr = max(scored, key=lambda r: (r[0] if np.isfinite(r[0]) else -np.inf, r[1]))
    return thr, f1


def operating_threshold(run_dir: Path, library: Path, prof: StyleProfile, *,
                        device: str | None = None) -> dict[str, Any]:
    """The score threshold of the clinical rates: the profile's fixed value, or chosen on the
    library's val split (:func:`choose_score_thr`). Returns ``score_thr``, ``score_thr_from``, ``val_f1``."""
    if prof.score_thr is not None:
        return {"score_thr": float(prof.score_thr), "score_thr_from": "fixed (profile)", "val_f1": None}
    from workbench.core.device import pick_device
    from workbench.evaluation.files import load_ground_truth
    from workbench.inference.predict import predict

    gt = load_ground_truth(library, split="val")
    pred = predict(run_dir, library, split="val", conf=MAP_CONF, device=pick_device(device))
    thr, f1 = choose_score_thr(gt.boxes, pred)
    return {"score_thr": thr, "score_thr_from": "val (best F1)", "val_f1": f1}


def score_per_level(run_dir: Path, library: Path, spec: TargetSpec, *, score_thr: float,
                    device: str | None = None) -> pd.DataFrame:
    """mAP50 / mAP50-95 (workbench.evaluation.metrics) and clinical rates at ``score_thr`` (chosen
    on val) on the test split, per style level and 'all'."""
    from workbench.core.device import pick_device
    from workbench.evaluation.clinical import clinical_rates
    from workbench.evaluation.files import evaluate_tables, load_ground_truth
    from workbench.inference.predict import predict

    gt = load_ground_truth(library, split="test")
    pred = predict(run_dir, library, split="test", conf=MAP_CONF, device=pick_device(device))
    meta = gt.meta.reset_index()
    meta[LEVEL] = meta[LEVEL].astype(int).astype(str)
    rates = clinical_rates(gt.boxes, pred, positive=[c for c in spec.positive if c in gt.classes], group_by=LEVEL,
                           meta=meta, n_boot=0, score_thr=score_thr)
    rows = []
    for level in ["all"] + sorted(meta[LEVEL].unique(), key=int):
        ids = meta["image_id"] if level == "all" else meta.loc[meta[LEVEL] == level, "image_id"]
        sub = type(gt)(gt.boxes[gt.boxes["image"].isin(set(ids))], list(ids), gt.classes, None, None, gt.source)
        doc, _ = evaluate_tables(sub, pred, n_boot=0)
        r = rates[rates["group"] == level].set_index("metric")["value"]
        rows.append({"test_level": level, "test_images": len(ids), "map50": doc["map50"], "map50_95": doc["map50_95"],
                     **{m: float(r.get(m, np.nan)) for m in ("detection_rate", "classification_rate", "fp_rate", "fn_rate")}})
    return pd.DataFrame(rows)


def run_key(experiment: str, key: str, seed: int) -> str:
    """The cell key (and run folder name) of one library and seed: ``lv_0-2_s0``, ``inc_base_b1_s0``."""
    return f"{'lv' if experiment == LEVELS else 'inc'}_{key.replace('+', '_').replace(',', '_')}_s{seed}"


@register
class StyleLevelsStudy(Study):
    """Level subsets x test levels, and incremental library additions, on one fixed test split.

    ``seeds`` replaces the profile's seeds for both experiments (each seed draws its own
    subsets, base and batches).
    """

    name = "02_style_levels"
    profiles = PROFILES
    headline_tables = ("heatmap_map50", "incremental")
    profile: StyleProfile

    def __init__(self, dataset: str | Path | None = None, *, seeds: Sequence[int] | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.seeds = None if seeds is None else [int(s) for s in seeds]
        if self.seeds is not None:
            self.profile = replace(self.profile, seeds=tuple(self.seeds), incremental_seeds=None)

    def study_args(self) -> dict[str, Any]:
        return {**super().study_args(), "seeds": self.seeds}

    @property
    def incremental_seeds(self) -> tuple[int, ...]:
        p = self.profile
        return p.seeds if p.incremental_seeds is None else p.incremental_seeds

    def prepare(self) -> None:
        """Measure and level the dataset, fix the splits and write every run's library (idempotent)."""
        p, cache = self.profile, self.work_dir / "data"
        cache.mkdir(parents=True, exist_ok=True)
        self.spec = spec_for(self.dataset)
        self.data = prepare_data(self.dataset, p, fmt=self.fmt)
        self.libraries: dict[str, Path] = {}  # cell key -> library folder
        for seed in p.seeds:
            for name, lib in level_subset_libraries(self.data, p, cache, seed).items():
                self.libraries[run_key(LEVELS, name, seed)] = lib
        self.composition: Composition | None = None  # the first incremental seed's base library
        for seed in self.incremental_seeds:
            steps, comp = incremental_libraries(self.data, p, cache, seed)
            self.composition = self.composition or comp
            for name, lib in steps:
                self.libraries[run_key(INCREMENTAL, name, seed)] = lib

    def cells(self) -> list[Cell]:
        """Incremental cells first, largest library first, then the level subsets: none needs
        another, and on few cores a grid that starts its longest runs first ends sooner."""
        p, levels_cells, incremental = self.profile, [], []
        for seed in p.seeds:
            for levels in p.subsets:
                name = level_name(levels)
                levels_cells.append(self.cell(run_key(LEVELS, name, seed), experiment=LEVELS, library=name,
                                              seed=seed, train_subset=name, step=None))
        for seed in self.incremental_seeds:
            for step in reversed(range(len(p.batch_images) + 1)):
                name = "base" + "".join(f"+b{k + 1}" for k in range(step))
                incremental.append(self.cell(run_key(INCREMENTAL, name, seed), experiment=INCREMENTAL,
                                             library=name, seed=seed, train_subset=None, step=step))
        return incremental + levels_cells

    def run_cell(self, cell: Cell) -> list[dict[str, Any]]:
        """Train on the cell's library (epochs from :func:`run_length`; the training length and the
        study's record go into ``run.json``), choose the operating threshold on val, then score the
        test split per level."""
        from workbench.models.runs import record_training_length, update_run_record

        p, c = self.profile, dict(cell.config)
        library, seed = self.libraries[cell.key], int(c["seed"])
        length = run_length(_train_entries(library), p)
        run_dir = self.train_or_reuse(self.work_dir / "runs" / cell.key, library, model=p.model,
                                      epochs=length.epochs, imgsz=p.imgsz, batch=p.batch, seed=seed)
        record_training_length(run_dir, length)
        extra = {"train_subset": c["train_subset"], "step": c["step"]}
        rec = update_run_record(run_dir, style_study={"experiment": c["experiment"], "key": c["library"], "seed": seed,
                                                      "profile": p.name, **extra,
                                                      "levels_rule": self.data.levels.rule.to_dict()})
        thr = operating_threshold(run_dir, library, p, device=self.device)
        scores = score_per_level(run_dir, library, self.spec, score_thr=thr["score_thr"], device=self.device)
        return [{"experiment": c["experiment"], "key": c["library"], "seed": seed, "run_id": cell.key, **thr,
                 "train_images": int((read_meta(library)["split"] == "train").sum()),
                 "train_list_entries": _train_entries(library), **extra,
                 "epochs": length.epochs, "epochs_rule": length.epochs_rule, "iterations_rule": length.iterations,
                 "duration_s": rec.get("duration_s"), "library_dir": str(library),
                 "per_level": scores.to_dict("records")}]

    def tables(self, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
        keys = ("experiment", "key", "seed", "run_id", "train_images", "train_subset", "step")
        per_level = pd.DataFrame([{**lv, **{k: r[k] for k in keys}}
                                  for r in rows.to_dict("records") for lv in r["per_level"]])
        runs = rows.drop(columns=["cell", "per_level"], errors="ignore")
        for t in (runs, per_level):  # steps are integers; level-subset runs have none
            t["step"] = t["step"].astype("Int64")
        return {"runs": runs, "per_level": per_level,
                "images": self.data.images, "heatmap_map50": heatmap(per_level, "map50").reset_index(),
                "incremental": incremental(per_level), "composition": self.composition.report}

    def figures(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
        from workbench.report.study_plots import metric_curves

        per_level = tables["per_level"]
        n = per_level.drop_duplicates("test_level").set_index("test_level")["test_images"]

        def labelled(t: pd.DataFrame) -> pd.DataFrame:  # test images per level on the axis
            return t.rename(columns={c: f"{c}\n(n={int(n[c])})" for c in t.columns if c in n.index})

        figs = {"heatmap_map50": heatmap_figure(labelled(heatmap(per_level, "map50")),
                                                title="mAP50 by train subset and test level")}
        for rate in ("detection_rate", "fn_rate"):
            figs[f"heatmap_{rate}"] = heatmap_figure(labelled(heatmap(per_level, rate)),
                                                     title=f"{rate} by train subset and test level")
        inc = tables["incremental"].assign(curve="mAP50 (fixed TEST split)")
        figs["incremental_map50"] = metric_curves(inc, x="train_images", y="map50", hue="curve",
                                                  ylabel="test mAP50",
                                                  title="Incremental additions: base -> +batch 1 -> ...")
        return figs

    def caption(self, name: str, tables: Mapping[str, pd.DataFrame]) -> str:
        """What is shown, how levels were derived, the fixed test split, profile, seeds and runs."""
        p, i, runs = self.profile, self.settings(), tables["runs"]
        thr = (f"fixed at score >= {p.score_thr:g}" if p.score_thr is not None else
               f"at each run's score threshold chosen on val by best F1 ({_span(runs['score_thr'])})")
        few = " - under 3 seeds, so no seed spread is measured" if len(p.seeds) < 3 else ""
        one_seed = ", one seed to fit this profile's budget" if len(self.incremental_seeds) == 1 else ""
        return (f"{CAPTIONS[name]} Dataset {Path(i['data']).name}; {i['levels_rule']['description']}; "
                f"{i['groups_text']}. Fixed test split of {i['test_images']} images (never changes as the library "
                f"grows), scored once: no training, early stopping or threshold choice saw it; val "
                f"({i['val_images']} images) chose each run's best.pt and threshold. Profile {p.name}: {p.model}, "
                f"{p.imgsz} px, batch {p.batch}, epochs {_span(runs['epochs'])}; seeds {list(p.seeds)}{few} "
                f"(incremental: {list(self.incremental_seeds)}{one_seed}); clinical rates {thr}, positive "
                f"classes {i['positive_classes']}. Runs: {', '.join(runs['run_id'])}.")

    def settings(self) -> dict[str, Any]:
        data = self.data
        return {"data": str(data.dataset), "levels_rule": data.levels.rule.to_dict(),
                "groups_rule": data.groups.rule.to_dict(), "groups_text": group_rule_text(data),
                "composition_warnings": self.composition.warnings if self.composition else [],
                "positive_classes": list(self.spec.positive), "image_positive": self.spec.image_positive,
                "test_images": int((data.images["role"] == "test").sum()),
                "val_images": int((data.images["role"] == "val").sum())}


# ----------------------------------------------------------------------------- tables and figures

CAPTIONS = {
    "heatmap_map50": "Test-split mAP50 (workbench.evaluation.metrics) of detectors trained on style-level subsets "
                     "(equal training size), scored on each level of the test split; mean over seeds.",
    "heatmap_detection_rate": "Test-split detection rate by train subset and test level; mean over seeds.",
    "heatmap_fn_rate": "Test-split false-negative rate of positive cells by train subset and test level; mean over "
                       "seeds.",
    "incremental_map50": "Test-split mAP50 vs library size: base library (composed by ratio) plus extension batches.",
}


def _span(values: pd.Series) -> str:
    """``a`` or ``a-b``: the range of a column, for captions."""
    lo, hi = values.min(), values.max()
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def heatmap(per_level: pd.DataFrame, value: str = "map50") -> pd.DataFrame:
    """Train subset x test level, mean over seeds (level-subset experiment)."""
    t = per_level[per_level["experiment"] == LEVELS]
    return t.pivot_table(index="train_subset", columns="test_level", values=value, aggfunc="mean", sort=False)


def incremental(per_level: pd.DataFrame) -> pd.DataFrame:
    """Metric vs library size (all test images), one row per step and seed."""
    t = per_level[(per_level["experiment"] == INCREMENTAL) & (per_level["test_level"] == "all")]
    return t[["step", "key", "train_images", "seed", "map50", "map50_95", "detection_rate", "fn_rate",
              "fp_rate", "classification_rate"]].rename(columns={"key": "library"}).sort_values(
                  ["step", "seed"], kind="stable").reset_index(drop=True)


def heatmap_figure(table: pd.DataFrame, *, title: str, fmt: str = ".2f") -> Figure:
    """Annotated heatmap of a train-subset x test-level table (DataFrame in, Figure out; no pyplot)."""
    import seaborn as sns
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.2 * table.shape[1] + 2.5, 0.7 * table.shape[0] + 1.8))
    ax = fig.subplots()
    sns.heatmap(table.astype(float), annot=True, fmt=fmt, cmap="viridis", vmin=0, vmax=1, ax=ax,
                cbar_kws={"shrink": 0.8})
    ax.set(xlabel="test style level", ylabel="trained on levels", title=title)
    fig.tight_layout()
    return fig


def derived_levels_overview(names: tuple[str, ...] = ("bccd", "monuseg", "mnfinder"), *, k: int = 3,
                            full: bool = True) -> pd.DataFrame:
    """Derived levels on each dataset (the fuller ../shared copies when present): one row per
    dataset with its images per level and the rule, stated in words. No training."""
    rows = []
    for name in names:
        spec = spec_for(name)
        ds = datasets.prepare(name, full=full)
        images = measure(ds)
        lv = derive_levels(images, LevelRule("quantile", spec.level_column, k=min(k, len(images)), best=spec.level_best))
        rows.append({"dataset": Path(ds).name, "images": len(images),
                     **{f"level {int(level)}": int(n) for level, n in lv.counts().items()},
                     "rule": lv.rule.describe()})
    return pd.DataFrame(rows).fillna(0)
