"""Style-level study: train on level subsets, test per level; grow a library batch by batch.

Two experiments on one canonical dataset (BCCD by default), both scored on a **fixed
test split** that never changes (the official validation images, minus a fixed handful
kept as ultralytics' own validation set for choosing ``best.pt``):

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
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.data import datasets
from workbench.data.canonical import read_meta
from workbench.models.runs import record_training_length
from workbench.data.library.composition import (
    Composition, compose, parse_ratios, training_length)
from workbench.data.library.builder import Batch, library_meta, partition, write_library
from workbench.data.library.style_levels import (
    LEVEL, LevelRule, StyleLevels, crowding_groups, crowding_text, derive_levels, level_name, measure)

LEVELS, INCREMENTAL = "level subsets", "incremental"
GROUPS = ("good", "dense", "sparse")  # composition groups, in the lab's 6:2:2 order


@dataclass(frozen=True)
class TargetSpec:
    """How a dataset is levelled, grouped and scored."""

    positive: tuple[str, ...]  # classes counted as positive by the clinical rates
    image_positive: str  # an image is 'positive' for the library if it holds this class
    level_column: str = "sharpness"  # audit measurement the levels are derived from
    level_best: str = "high"  # which end of it is level 0
    group_column: str = "n_objects"  # crowding measurement for good/dense/sparse (tertiles)


TARGETS = {
    "bccd": TargetSpec(positive=("Platelets", "WBC"), image_positive="Platelets"),
    "mnfinder": TargetSpec(positive=("mn",), image_positive="mn"),
    "monuseg": TargetSpec(positive=("nucleus",), image_positive="nucleus", level_column="contrast"),
}


@dataclass(frozen=True)
class StyleProfile:
    name: str
    model: str = "yolov8n.yaml"
    imgsz: int = 640
    batch: int = 16
    seeds: tuple[int, ...] = (0, 1, 2)
    incremental_seeds: tuple[int, ...] | None = None  # None: the same as seeds
    n_levels: int = 3
    subsets: tuple[tuple[int, ...], ...] = ((0,), (0, 1), (0, 1, 2))
    subset_images: int | None = None  # equal training size per level subset (None: smallest subset)
    val_images: int = 20  # fixed ultralytics validation images, taken from the official val split
    test_images: int | None = None  # fixed test images (None: the rest of the official val split)
    base_images: int = 60
    batch_images: tuple[int, ...] = (40, 40)  # extension batch sizes
    last_weight: int = 1  # repeat factor of the newest batch
    ratios: str = "6:2:2"  # good : dense : sparse
    min_positive: float = 0.2  # at least one positive image in every 5
    factor: float = 2.0  # rule of thumb: iterations = factor x images
    epochs: int | None = None  # override of the rule of thumb (recorded as such)
    score_thr: float = 0.25  # clinical rates count predictions at or above this score


PROFILES = {
    # CI: proves the pipeline on real BCCD in about a minute on 2 CPU cores; numbers mean nothing
    "smoke": StyleProfile("smoke", imgsz=128, batch=4, seeds=(0,), subsets=((0,), (0, 1, 2)), subset_images=8,
                          val_images=4, test_images=12, base_images=8, batch_images=(4,), epochs=1),
    # a real CPU study (~35 min on 2 busy cores). The rule of thumb gives 8 epochs at batch 4
    # (= 2 x images optimiser steps), which from scratch stays inside ultralytics' 100-step
    # warm-up on these library sizes; 25 epochs is the override (recorded beside the rule).
    # Two seeds for the level-subset heatmap, one for the incremental curve (~40 min in all).
    "modest": StyleProfile("modest", imgsz=256, batch=4, seeds=(0, 1), incremental_seeds=(0,), subset_images=40,
                           val_images=16,
                           base_images=30, batch_images=(30, 30), epochs=25),
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


@dataclass
class StyleResult:
    profile: StyleProfile
    runs: pd.DataFrame  # one row per run
    per_level: pd.DataFrame  # one row per run x test level (and 'all'): mAP and clinical rates
    images: pd.DataFrame
    composition: Composition
    info: dict[str, Any] = field(default_factory=dict)

    def heatmap(self, value: str = "map50") -> pd.DataFrame:
        """Train subset x test level, mean over seeds (level-subset experiment)."""
        t = self.per_level[self.per_level["experiment"] == LEVELS]
        return t.pivot_table(index="train_subset", columns="test_level", values=value, aggfunc="mean",
                             sort=False)

    def incremental(self) -> pd.DataFrame:
        """Metric vs library size (all test images), one row per step and seed."""
        t = self.per_level[(self.per_level["experiment"] == INCREMENTAL) & (self.per_level["test_level"] == "all")]
        return t[["step", "key", "train_images", "seed", "map50", "map50_95", "detection_rate", "fn_rate",
                  "fp_rate", "classification_rate"]].rename(columns={"key": "library"}).reset_index(drop=True)


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


def train_or_reuse(library: Path, run_dir: Path, prof: StyleProfile, seed: int, *, device: str | None,
                   workers: int | None, record: Mapping[str, Any], log: Callable[[str], None]) -> tuple[Path, dict]:
    """Train on ``library`` (epochs from the rule of thumb or the override) unless a finished
    run with the same settings exists; record the training length in ``run.json``."""
    from workbench.models.runs import finished_with
    from workbench.models.yolo import train

    length = training_length(_train_entries(library), batch=prof.batch, factor=prof.factor, epochs=prof.epochs)
    if finished_with(run_dir, model=prof.model, epochs=length.epochs, imgsz=prof.imgsz, batch=prof.batch) \
            and _same_data(run_dir, library):
        log(f"[style] reuse {run_dir.name}")
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an unfinished or differently configured earlier attempt
        t0 = time.perf_counter()
        train(library, model=prof.model, epochs=length.epochs, imgsz=prof.imgsz, batch=prof.batch, seed=seed,
              device=device, run_name=run_dir.name, runs_root=run_dir.parent, workers=workers)
        log(f"[style] {run_dir.name}: {length.epochs} epochs in {time.perf_counter() - t0:.0f} s")
    record_training_length(run_dir, length)
    from workbench.models.runs import update_run_record

    rec = update_run_record(run_dir, style_study=dict(record))
    return run_dir, {"epochs": length.epochs, "epochs_rule": length.epochs_rule, "iterations_rule": length.iterations,
                     "duration_s": rec.get("duration_s")}


def _same_data(run_dir: Path, library: Path) -> bool:
    """The finished run was trained on this library's current images, labels and split lists."""
    from workbench.models.runs import dataset_fingerprint, read_run_record

    got = (read_run_record(run_dir).get("dataset") or {}).get("fingerprint") or {}
    now = dataset_fingerprint(library)
    return got.get("sha256") == now["sha256"] and got.get("splits") == now["splits"]


def score_per_level(run_dir: Path, library: Path, prof: StyleProfile, spec: TargetSpec) -> pd.DataFrame:
    """mAP50 / mAP50-95 (workbench.evaluation.metrics) and clinical rates on the test split, per style level and 'all'."""
    from workbench.evaluation.clinical import clinical_rates
    from workbench.core.device import pick_device
    from workbench.evaluation.files import evaluate_tables, load_ground_truth
    from workbench.inference.predict import predict

    gt = load_ground_truth(library, split="test")
    pred = predict(run_dir, library, split="test", conf=0.001, device="cpu" if pick_device(None) == "cpu" else None)
    meta = gt.meta.reset_index()
    meta[LEVEL] = meta[LEVEL].astype(int).astype(str)
    rates = clinical_rates(gt.boxes, pred, positive=[c for c in spec.positive if c in gt.classes], group_by=LEVEL,
                           meta=meta, n_boot=0, score_thr=prof.score_thr)
    rows = []
    for level in ["all"] + sorted(meta[LEVEL].unique(), key=int):
        ids = meta["image_id"] if level == "all" else meta.loc[meta[LEVEL] == level, "image_id"]
        sub = type(gt)(gt.boxes[gt.boxes["image"].isin(set(ids))], list(ids), gt.classes, None, None, gt.source)
        doc, _ = evaluate_tables(sub, pred, n_boot=0)
        r = rates[rates["group"] == level].set_index("metric")["value"]
        rows.append({"test_level": level, "test_images": len(ids), "map50": doc["map50"], "map50_95": doc["map50_95"],
                     **{m: float(r.get(m, np.nan)) for m in ("detection_rate", "classification_rate", "fp_rate", "fn_rate")}})
    return pd.DataFrame(rows)


def run_study(target: str | Path = "bccd", *, profile: str | StyleProfile = "smoke", out_dir: Path,
              fmt: str | None = None, device: str | None = None, workers: int | None = None,
              seeds: Sequence[int] | None = None, log: Callable[[str], None] = print) -> StyleResult:
    """Both experiments (reusing finished runs under ``out_dir/runs``); tables in the result.

    ``seeds`` replaces the profile's seeds for both experiments (each seed draws its own
    subsets, base and batches).
    """
    from workbench.studies.base import pick

    prof = pick(profile, PROFILES)
    if seeds is not None:
        prof = replace(prof, seeds=tuple(int(s) for s in seeds), incremental_seeds=None)
    spec = spec_for(target)
    out_dir = Path(out_dir)
    cache, runs_root = out_dir / "data", out_dir / "runs"
    cache.mkdir(parents=True, exist_ok=True)
    data = prepare_data(target, prof, fmt=fmt)
    runs, scores = [], []
    comp = None

    def one(experiment: str, key: str, library: Path, seed: int, extra: dict[str, Any]) -> None:
        run_dir = runs_root / f"{'lv' if experiment == LEVELS else 'inc'}_{key.replace('+', '_')}_s{seed}"
        rec = {"experiment": experiment, "key": key, "seed": seed, "profile": prof.name, **extra,
               "levels_rule": data.levels.rule.to_dict()}
        _, info = train_or_reuse(library, run_dir, prof, seed, device=device, workers=workers, record=rec, log=log)
        row = {"experiment": experiment, "key": key, "seed": seed, "run_id": run_dir.name,
               "train_images": int((read_meta(library)["split"] == "train").sum()),
               "train_list_entries": _train_entries(library), **extra, **info, "library_dir": str(library)}
        runs.append(row)
        keys = ("experiment", "key", "seed", "run_id", "train_images", "train_subset", "step")
        scores.append(score_per_level(run_dir, library, prof, spec).assign(**{k: row.get(k) for k in keys}))

    for seed in prof.seeds:
        for name, lib in level_subset_libraries(data, prof, cache, seed).items():
            one(LEVELS, name, lib, seed, {"train_subset": name, "step": None})
    for seed in prof.seeds if prof.incremental_seeds is None else prof.incremental_seeds:
        steps, comp_s = incremental_libraries(data, prof, cache, seed)
        comp = comp if comp is not None else comp_s
        for step, (name, lib) in enumerate(steps):
            one(INCREMENTAL, name, lib, seed, {"train_subset": None, "step": step})
    per_level = pd.concat(scores, ignore_index=True)
    runs_t = pd.DataFrame(runs)
    info = {"dataset": str(data.dataset), "profile": asdict(prof), "levels_rule": data.levels.rule.to_dict(),
            "groups_rule": data.groups.rule.to_dict(), "groups_text": group_rule_text(data),
            "composition_warnings": comp.warnings if comp else [], "positive_classes": list(spec.positive),
            "image_positive": spec.image_positive,
            "test_images": int((data.images["role"] == "test").sum()),
            "val_images": int((data.images["role"] == "val").sum())}
    return StyleResult(prof, runs_t, per_level, data.images, comp, info)


# ----------------------------------------------------------------------------- reporting

def caption(result: StyleResult, what: str) -> str:
    """Figure caption: what is shown, how levels were derived, profile, seeds."""
    i = result.info
    return (f"{what} Dataset {Path(i['dataset']).name}; {i['levels_rule']['description']}; {i['groups_text']}. "
            f"Fixed test split of {i['test_images']} images (never changes as the library grows); "
            f"profile {result.profile.name}, seeds {list(result.profile.seeds)} (incremental: "
            f"{list(result.profile.incremental_seeds or result.profile.seeds)}), clinical rates at score >= "
            f"{result.profile.score_thr:g} with positive classes {i['positive_classes']}.")


def heatmap_figure(table: pd.DataFrame, *, title: str, fmt: str = ".2f"):
    """Annotated heatmap of a train-subset x test-level table (DataFrame in, Figure out)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.2 * table.shape[1] + 2.5, 0.7 * table.shape[0] + 1.8))
    sns.heatmap(table.astype(float), annot=True, fmt=fmt, cmap="viridis", vmin=0, vmax=1, ax=ax,
                cbar_kws={"shrink": 0.8})
    ax.set(xlabel="test style level", ylabel="trained on levels", title=title)
    fig.tight_layout()
    return fig


def figures(result: StyleResult) -> dict[str, Any]:
    from workbench.report.study_plots import metric_curves

    n = result.per_level.drop_duplicates("test_level").set_index("test_level")["test_images"]

    def labelled(t: pd.DataFrame) -> pd.DataFrame:  # test images per level on the axis
        return t.rename(columns={c: f"{c}\n(n={int(n[c])})" for c in t.columns if c in n.index})

    figs = {"heatmap_map50": heatmap_figure(labelled(result.heatmap("map50")), title="mAP50 by train subset and test level")}
    for rate in ("detection_rate", "fn_rate"):
        figs[f"heatmap_{rate}"] = heatmap_figure(labelled(result.heatmap(rate)),
                                                 title=f"{rate} by train subset and test level")
    inc = result.incremental().assign(curve="mAP50 (fixed test split)")
    figs["incremental_map50"] = metric_curves(inc, x="train_images", y="map50", hue="curve", ylabel="mAP50",
                                              title="Incremental additions: base -> +batch 1 -> ...")
    return figs


def write_outputs(result: StyleResult, out: Path) -> list[Path]:
    """CSV tables, ``style_study.json`` and PNG/PDF figures (captions state the level derivation)."""
    import json

    from workbench.core.atomic import write_text
    from workbench.report.figures import save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    tables = {"runs": result.runs, "per_level": result.per_level, "images": result.images,
              "heatmap_map50": result.heatmap("map50").reset_index(), "incremental": result.incremental(),
              "composition": result.composition.report}
    for name, t in tables.items():
        written.append(write_text(out / f"{name}.csv", t.to_csv(index=False)))
    written.append(write_text(out / "style_study.json", json.dumps(result.info, indent=2, default=str) + "\n"))
    prov = {"profile": result.profile.name, "seeds": list(result.profile.seeds), "runs": result.runs["run_id"].tolist()}
    texts = {"heatmap_map50": "mAP50 (workbench.evaluation.metrics) of detectors trained on style-level subsets (equal "
                              "training size), scored on each test level; mean over seeds.",
             "heatmap_detection_rate": "Detection rate by train subset and test level; mean over seeds.",
             "heatmap_fn_rate": "False-negative rate of positive cells by train subset and test level; mean over seeds.",
             "incremental_map50": "mAP50 vs library size: base library (composed by ratio) plus extension batches."}
    for name, fig in figures(result).items():
        written += save_figure(fig, out / name, caption=caption(result, texts[name]), provenance=prov)
    return written


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
