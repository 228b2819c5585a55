"""The pretrain-vs-scratch study (notebook 03, "transferable cell recognition").

Arms, each trained with every seed of the profile:

* ``pretrain (source)`` – a detector trained on H&E nuclei (MoNuSeg, tiled to patches), once per
  seed, or once (seed ``source_seed``) and shared by every seed when the budget needs it; or the
  committed source model (``data/models/monuseg_yolov8n``, shared by every seed) when the profile
  names it. The captions say which;
* ``scratch`` – the same architecture trained on the target set from random weights;
* ``fine-tune`` – initialised from the pretrained weights (matching layers; the class head
  is new), trained on the target set for the same number of epochs as ``scratch``;
* ``scratch, equal compute`` – scratch trained for as many *extra* epochs as the
  pretraining cost, counted in pixels seen (a detector's compute grows with image area):
  ``ceil(pretrain_epochs * n_source_train * (source_imgsz / imgsz)**2 / n_target_train)``,
  so the comparison is not won by compute alone;
* label efficiency – ``fine-tune`` and ``scratch`` on nested subsets of the target training
  images (fractions of the profile).

Cells: one pretraining run per seed (or one shared by every seed; none with a committed source
model), then one cell per (arm, seed, fraction); a fine-tune cell needs its pretraining cell and
finds its weights in that cell's run folder.

Splits: the target's val split chooses each run's ``best.pt``; a test split that no training,
early stopping or checkpoint choice saw is held out of val when the dataset ships none
(:func:`workbench.data.holdout.with_test_split`, recorded in its ``dataset.json``) and is what
the tables and the headline report: mAP50 and mAP50-95 with per-image bootstrap intervals and
per-class AP, recomputed with :mod:`workbench.evaluation.metrics` (equal to pycocotools) from
the best weights' predictions. The per-epoch curves are ultralytics' *validation* metrics and
are labelled so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from workbench.core.tables import MAP_CONF
from workbench.data import datasets
from workbench.data.canonical import read_meta
from workbench.data.holdout import DATA_SEED, held_out_dataset
from workbench.data.subsets import subset_dataset
from workbench.studies.base import Cell, Profile, Study, register

SCRATCH, FINETUNE, EQUAL, PRETRAIN = "scratch", "fine-tune", "scratch, equal compute", "pretrain (source)"
# run-folder prefix of each arm (cell keys are <prefix>_f<percent>_s<seed>)
ARM_KEYS = {PRETRAIN: "pretrain", SCRATCH: "scratch", FINETUNE: "fine-tune", EQUAL: "scratch-eq"}
SOURCE_OVERLAP = 0.1  # share of a source patch that overlaps its neighbour
SOURCE_MIN_VISIBILITY = 0.5  # a nucleus cut by a patch edge is kept when this share of its box is inside
SOURCE_RATIOS = (8, 2)  # train : val split of the source patches, grouped by MoNuSeg tile


@dataclass(frozen=True)
class TransferProfile(Profile):
    model: str = "yolov8n.yaml"  # architecture of every arm (YAML name: built, never downloaded)
    imgsz: int = 640  # training and inference image size (px)
    pretrain_epochs: int = 100  # epochs of the source pretraining on MoNuSeg patches
    finetune_epochs: int = 100  # epochs of scratch and fine-tune on the target (equal compute adds to it)
    seeds: tuple[int, ...] = (0, 1, 2)  # every arm, pretraining included, is trained once per seed
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)  # shares of the target training images (nested per seed)
    target_train: float | int = 1.0  # cap on target training images: a share (float) or a count (int); 1.0 = all
    target_val: float | int = 1.0  # cap on target validation images, the same way
    source_tile: int = 640  # side of the patches MoNuSeg's images are cut into (px)
    pretrain_imgsz: int | None = None  # image size of the source pretraining (px); None: imgsz
    full_source: bool = False  # use the fuller ../shared copy of MoNuSeg when present
    equal_compute: bool = True  # also train the equal-compute scratch arm (all target images)
    batch: int | None = None  # training batch (images); None: what fits the device
    source_model: str | None = None  # a finished source run folder (e.g. data/models/monuseg_yolov8n) to fine-tune
    #   from, shared by every seed, instead of pretraining per seed; None: pretrain in the study
    source_seed: int | None = None  # pretrain once with this seed and share it across seeds; None: once per seed
    fraction_seeds: tuple[int, ...] | None = None  # seeds of the label-efficiency runs (fractions < 1); None: all seeds
    equal_seeds: tuple[int, ...] | None = None  # seeds of the equal-compute arm; None: all seeds
    test_fraction: float = 0.5  # share of the target's val images held out as test when it ships no test split
    n_boot: int = 1000  # bootstrap resamples over test images for the intervals (0: none)


PROFILES = {
    # CI: proves the whole pipeline on real data in about two minutes on 2 CPU cores
    "smoke": TransferProfile("smoke", imgsz=160, pretrain_epochs=1, finetune_epochs=2, seeds=(0,),
                             fractions=(0.5, 1.0), target_train=16, target_val=8, source_tile=256, batch=8),
    # 2 CPU cores: what is known to learn here (yolov8n, BCCD at 416 px, batch 16, 20 epochs ~ 15 min per run;
    # smaller sets or batches do not learn platelets). The source is pretrained in the study on all 13 MoNuSeg
    # tiles of ../shared (320 px patches, 30 epochs, ~12 min), once (seed 0) and shared by the three seeds
    # (an earlier source model on 8 tiles did not let the fine-tune learn platelets).
    # Equal compute adds the pretraining's pixels seen (34 epochs). 3 seeds x (scratch 20 + fine-tune 20 +
    # equal compute 34) + label efficiency (10/25/50 %, seed 0, both arms). The cells run headline first
    # (every seed at 100 %), so a partial run still answers the main question.
    "cpu": TransferProfile("cpu", imgsz=416, finetune_epochs=20, seeds=(0, 1, 2), fractions=(0.1, 0.25, 0.5, 1.0),
                           batch=16, pretrain_epochs=30, source_tile=320, pretrain_imgsz=320, full_source=True,
                           source_seed=0,
                           fraction_seeds=(0,)),
    # a GPU: all data, 640 px, three seeds, the full label-efficiency curve
    "full": TransferProfile("full", imgsz=640, pretrain_epochs=100, finetune_epochs=100,
                            source_tile=640, full_source=True),
}


def equal_compute_epochs(profile: TransferProfile, n_source_train: int, n_target_train: int,
                         source_imgsz: int | None = None) -> int:
    """Epochs for the equal-compute scratch arm: the fine-tune epochs plus the pretraining's pixels seen
    (``source_imgsz``, default the profile's ``imgsz``) in target epochs, rounded up (see the module docstring)."""
    if n_target_train < 1:
        raise ValueError("the target training split is empty")
    area = ((source_imgsz or profile.imgsz) / profile.imgsz) ** 2
    # the small epsilon keeps an exact ratio (e.g. 60 / 48 * 8 = 10.000000000000002) from rounding up
    return profile.finetune_epochs + math.ceil(profile.pretrain_epochs * n_source_train * area / n_target_train - 1e-9)


def run_key(arm: str, seed: int, fraction: float) -> str:
    """The cell key (and run folder name) of one arm, seed and fraction."""
    return f"{ARM_KEYS[arm]}_f{int(round(fraction * 100))}_s{seed}"


def prepare_source(profile: TransferProfile, cache: Path) -> Path:
    """MoNuSeg tiled into training patches, split 8:2 by source tile (no tile straddles)."""
    from workbench.data.splits import split_dataset
    from workbench.data.tiling import tile_dataset

    out = cache / f"monuseg_tiles{profile.source_tile}{'_full' if profile.full_source else ''}"
    if not (out / "meta.csv").exists():
        base = datasets.prepare("monuseg", full=profile.full_source)
        tile_dataset(base, out, tile=profile.source_tile, overlap=SOURCE_OVERLAP,
                     min_visibility=SOURCE_MIN_VISIBILITY, overwrite=True)
        # a derived patch set: exact per-tile counts matter here, stability across re-imports does not
        split_dataset(out, ratios=SOURCE_RATIOS, seed=0, group_by="tile_of", keep_existing=False, exact=True)
    return out


def prepare_target(target: str | Path, profile: TransferProfile, cache: Path, *, fmt: str | None = None,
                   seeds: tuple[int, ...] = ()) -> dict[tuple[int, float], Path]:
    """The target set capped by the profile, and nested training subsets per (seed, fraction)."""
    name = Path(str(target)).name
    # val chooses checkpoints; test (held out of val when the dataset ships none) is scored once
    capped = held_out_dataset(target, cache, test_fraction=profile.test_fraction, fmt=fmt, tag=profile.name,
                              caps={"train": profile.target_train, "val": profile.target_val})
    out: dict[tuple[int, float], Path] = {}
    for seed in seeds:
        for frac in profile.fractions:
            if frac >= 1.0:
                out[(seed, 1.0)] = capped
                continue
            sub = cache / f"{name}_{profile.name}_train{int(round(frac * 100))}pct_s{seed}"
            if not (sub / "meta.csv").exists():
                subset_dataset(capped, sub, keep={"train": float(frac)}, seed=seed, overwrite=True)
            out[(seed, frac)] = sub
    return out


def n_train(ds: Path) -> int:
    """Training images of a canonical dataset."""
    return int((read_meta(ds)["split"] == "train").sum())


@register
class PretrainVsScratchStudy(Study):
    """Pretrain on MoNuSeg, fine-tune on the target vs scratch (and equal-compute scratch)."""

    name = "03_pretrain_vs_scratch"
    profiles = PROFILES
    headline_tables = ("by_arm", "headline")
    profile: TransferProfile

    def prepare(self) -> None:
        cache = self.work_dir / "data"
        cache.mkdir(parents=True, exist_ok=True)
        self.source = None if self.profile.source_model else prepare_source(self.profile, cache)
        self.targets = prepare_target(self.dataset, self.profile, cache, fmt=self.fmt, seeds=self.profile.seeds)

    def cells(self) -> list[Cell]:
        # headline first (every seed at 100 %), then equal compute, then label efficiency: a run cut short
        # (or a grid still going) has answered the main question before the curves
        p, out = self.profile, []
        pre_seeds = p.seeds if p.source_seed is None else (p.source_seed,)
        pre = {seed: run_key(PRETRAIN, seed if p.source_seed is None else p.source_seed, 1.0) for seed in p.seeds}
        if p.source_model is None:
            out += [self.cell(run_key(PRETRAIN, seed, 1.0), arm=PRETRAIN, seed=seed, fraction=1.0) for seed in pre_seeds]
        needs = {seed: [] if p.source_model else [pre[seed]] for seed in p.seeds}
        fracs = sorted({min(float(f), 1.0) for f in p.fractions}, reverse=True)
        for frac in fracs:
            seeds = [s for s in p.seeds if frac >= 1.0 or p.fraction_seeds is None or s in p.fraction_seeds]
            for seed in seeds:
                out.append(self.cell(run_key(SCRATCH, seed, frac), arm=SCRATCH, seed=seed, fraction=frac))
                out.append(self.cell(run_key(FINETUNE, seed, frac), needs=needs[seed],
                                     arm=FINETUNE, seed=seed, fraction=frac))
            if p.equal_compute and frac >= 1.0:
                out += [self.cell(run_key(EQUAL, seed, frac), arm=EQUAL, seed=seed, fraction=frac)
                        for seed in p.seeds if p.equal_seeds is None or seed in p.equal_seeds]
        return out

    def run_dir(self, key: str) -> Path:
        """The run folder of the cell ``key``."""
        return self.work_dir / "runs" / key

    def run_cell(self, cell: Cell) -> list[dict[str, Any]]:
        from workbench.models.runs import load_run

        p, arm = self.profile, str(cell.config["arm"])
        seed, frac = int(cell.config["seed"]), float(cell.config["fraction"])
        ds = self.source if arm == PRETRAIN else self.targets[(seed, frac)]
        epochs = p.pretrain_epochs if arm == PRETRAIN else p.finetune_epochs
        imgsz = self.source_imgsz() if arm == PRETRAIN else p.imgsz
        if arm == EQUAL:
            epochs = equal_compute_epochs(p, self.source_train_images(), n_train(ds), self.source_imgsz())
        pretrained = None
        if arm == FINETUNE:
            pretrained = self.source_weights(cell)
            if not pretrained.is_file():
                raise FileNotFoundError(f"{cell.key} needs the pretraining cell {cell.needs[0]} first ({pretrained})")
        run_dir = self.train_or_reuse(self.run_dir(cell.key), ds, model=p.model, epochs=epochs, imgsz=imgsz,
                                      batch=p.batch, seed=seed, pretrained=pretrained)
        rec = load_run(run_dir)
        m = rec["metrics"]
        curve = [] if m is None else [{"epoch": int(e), "mAP50": float(a), "mAP50_95": float(b)} for e, a, b in
                                      m.reindex(columns=["epoch", "mAP50", "mAP50_95"]).itertuples(index=False)]
        sha = (rec.get("dataset", {}).get("fingerprint") or {}).get("sha256", "")[:12]
        return [{"arm": arm, "seed": seed, "fraction": frac, "run_id": cell.key, "run_dir": str(run_dir),
                 "dataset": str(ds), "train_images": n_train(ds), "epochs": epochs,
                 "duration_s": rec.get("duration_s"), "dataset_sha256": sha,
                 # the source run has no target test split: its own val scores describe it (labelled val)
                 **self._final_metrics(run_dir, ds, split="val" if arm == PRETRAIN else "test"), "curve": curve}]

    def source_weights(self, cell: Cell) -> Path:
        """The weights a fine-tune cell starts from: the committed source model, or its seed's pretraining run."""
        if self.profile.source_model is not None:
            from workbench.models.runs import run_weights

            return run_weights(resolve_source(self.profile.source_model))
        return self.run_dir(cell.needs[0]) / "weights" / "best.pt"

    def source_train_images(self) -> int:
        """Source training images (patches) the pretraining saw per epoch, for the equal-compute arm."""
        if self.profile.source_model is not None:
            from workbench.models.runs import read_run_record

            return int(read_run_record(resolve_source(self.profile.source_model))["dataset"]["images"]["train"])
        return n_train(self.source)

    def source_imgsz(self) -> int:
        """Image size the pretraining trained at (the committed source model's, else the profile's)."""
        if self.profile.source_model is not None:
            from workbench.models.runs import read_run_record

            return int(read_run_record(resolve_source(self.profile.source_model))["config"]["imgsz"])
        return self.profile.pretrain_imgsz or self.profile.imgsz

    def _final_metrics(self, run_dir: Path, dataset: Path, *, split: str = "test") -> dict[str, Any]:
        """Scores of the run's best weights (chosen on val) on ``split`` (test for every target run), by
        workbench.evaluation.metrics: mAP50 and mAP50-95 with per-image bootstrap intervals, AP50 per class."""
        from workbench.core.device import pick_device
        from workbench.evaluation.files import evaluate_tables, load_ground_truth
        from workbench.inference.predict import predict

        gt = load_ground_truth(dataset, split=split)
        pred = predict(run_dir, dataset, split=split, conf=MAP_CONF, device=pick_device(self.device))
        doc, _ = evaluate_tables(gt, pred, n_boot=self.profile.n_boot, seed=DATA_SEED)
        ci = doc.get("ci") or {}
        out: dict[str, Any] = {"split": split, "test_images": len(gt.images), "map50": doc["map50"],
                               "map50_95": doc["map50_95"]}
        for m in ("map50", "map50_95"):
            out[f"{m}_lo"], out[f"{m}_hi"] = (ci.get(m) or {}).get("lo"), (ci.get(m) or {}).get("hi")
        for cls, v in (doc.get("per_class") or {}).items():
            out[f"ap50_{cls}"] = v.get("ap50")
        return out

    def tables(self, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
        runs = rows.drop(columns=["cell", "curve"], errors="ignore")
        return {"runs": runs, "epochs": epoch_table(rows), "headline": headline(runs), "summary": summary(runs),
                "by_arm": by_arm(runs)}

    def figures(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
        """Val curves per arm (full data), test mAP50 per arm and the label-efficiency curve."""
        from workbench.report.study_plots import metric_curves

        figs = {}
        ep = tables["epochs"]
        ep = ep[(ep["fraction"] >= 1.0) & (ep["arm"] != PRETRAIN)] if len(ep) else ep
        if len(ep):
            figs["map50_vs_epoch"] = metric_curves(ep, y="mAP50", title="Target val mAP50 (shaded: min-max over seeds)")
            figs["map50_95_vs_epoch"] = metric_curves(ep, y="mAP50_95", ylabel="mAP50-95",
                                                      title="Target val mAP50-95 (shaded: min-max over seeds)")
        runs = tables["runs"]
        full = runs[(runs["fraction"] >= 1.0) & (runs["arm"] != PRETRAIN)]
        if len(full):
            from workbench.report.study_plots import arm_comparison

            figs["test_map50"] = arm_comparison(full, order=[SCRATCH, EQUAL, FINETUNE],
                                                title="Test mAP50 per arm (points: seeds; bars: 95 % bootstrap CI)")
        le = runs[runs["arm"].isin([SCRATCH, FINETUNE])]
        if le["fraction"].nunique() > 1:
            figs["label_efficiency"] = metric_curves(le, x="fraction", y="map50",
                                                     ylabel="test mAP50 (workbench.evaluation.metrics)",
                                                     title="Label efficiency: share of target training images")
        return figs

    def caption(self, name: str, tables: Mapping[str, pd.DataFrame]) -> str:
        p, runs = self.profile, tables["runs"]
        what = {"map50_vs_epoch": "Per-epoch mAP50 on the VALIDATION split (ultralytics' own validation, which "
                                  "also chose best.pt): training curves, not results.",
                "map50_95_vs_epoch": "Per-epoch mAP50-95 on the VALIDATION split (ultralytics' own validation, "
                                     "which also chose best.pt): training curves, not results.",
                "test_map50": "Test-split mAP50 of each arm's best.pt (chosen on val) at full target data; bars are "
                              "per-image bootstrap 95 % intervals of each run.",
                "label_efficiency": "Test-split mAP50 against the share of target training images"
                                    + (f" (seeds {list(p.fraction_seeds)} below 100 %)" if p.fraction_seeds else "")
                                    + "."}.get(name, "")
        tiles = "all MoNuSeg tiles of ../shared" if p.full_source else "the vendored MoNuSeg tiles"
        source = (f"the committed source model {p.source_model} (shared by every seed)" if p.source_model
                  else f"one MoNuSeg pretraining run (seed {p.source_seed}, {tiles}, {p.pretrain_epochs} epochs, "
                       f"shared by every seed)" if p.source_seed is not None
                  else f"a MoNuSeg pretraining run per seed ({tiles}, {p.pretrain_epochs} epochs)")
        test_n = int(runs["test_images"].max()) if "test_images" in runs and len(runs) else 0
        return (f"{what} Pretrain (MoNuSeg H&E nuclei) vs scratch on {Path(self.dataset).name}: fine-tune starts "
                f"from {source}. Profile {p.name}: {p.model}, {p.imgsz} px, batch {p.batch or 'auto'}, "
                f"{p.finetune_epochs} epochs; equal-compute scratch adds the pretraining's pixels seen"
                f"{f' (seeds {list(p.equal_seeds)})' if p.equal_seeds is not None else ''}; seeds {list(p.seeds)}. Test split: {test_n} images held out of val, seen by no training, early stopping "
                f"or checkpoint choice; scored by workbench.evaluation.metrics (equal to pycocotools). Runs: "
                f"{', '.join(runs['run_id'])}; dataset fingerprints (sha256, first 12): "
                f"{', '.join(sorted(set(runs['dataset_sha256'])))}.")

    def settings(self) -> dict[str, Any]:
        return {"source": str(self.profile.source_model or self.source), "source_train_images": self.source_train_images(),
                "source_shared_across_seeds": self.profile.source_model is not None or self.profile.source_seed is not None,
                "targets": {f"seed{s}_f{f}": str(d) for (s, f), d in self.targets.items()}}


# ----------------------------------------------------------------------------- tables

def resolve_source(path: str | Path) -> Path:
    """A source model folder, relative paths taken from the project root (profiles name data/models/...)."""
    from workbench.core.paths import PROJECT_ROOT

    p = Path(path)
    return p if p.is_absolute() else PROJECT_ROOT / p


def epoch_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run and epoch (ultralytics' validation mAP50, mAP50-95), from the cells' curves."""
    cols = ["epoch", "mAP50", "mAP50_95", "arm", "seed", "fraction", "run_id"]
    out = [{**point, **{k: r[k] for k in cols[3:]}} for r in rows.to_dict("records") for point in r.get("curve") or []]
    return pd.DataFrame(out, columns=cols)


SUMMARY_COLUMNS = ["arm", "seed", "fraction", "split", "map50", "map50_lo", "map50_hi", "map50_95",
                   "map50_95_lo", "map50_95_hi"]


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per trained target run (pretraining left out): the test-split scores with their
    bootstrap intervals, per-class AP50, sizes and the run id."""
    r = runs[runs["arm"] != PRETRAIN]
    extra = target_classes(r) + [
        c for c in ("train_images", "test_images", "epochs", "duration_s", "run_id") if c in r.columns]
    cols = [c for c in SUMMARY_COLUMNS if c in r.columns] + extra
    return r[cols].sort_values(["fraction", "arm", "seed"]).reset_index(drop=True)


def target_classes(runs: pd.DataFrame) -> list[str]:
    """The per-class AP columns the target runs have (the source's classes, e.g. nucleus, left out)."""
    return [c for c in runs.columns if c.startswith("ap50_") and runs[c].notna().any()]


def by_arm(runs: pd.DataFrame) -> pd.DataFrame:
    """Test scores per arm and fraction (pretraining left out): mean, min, max over seeds, and the seeds
    (not rounded: a table rounded here and again for display would disagree with the figures)."""
    r = runs[runs["arm"] != PRETRAIN]
    values = ["map50", "map50_95", *target_classes(r), "duration_s"]
    t = r.groupby(["arm", "fraction"])[[v for v in values if v in r.columns]].agg(["mean", "min", "max"])
    t.columns = [f"{metric}_{stat}" for metric, stat in t.columns]
    return t.join(r.groupby(["arm", "fraction"])["seed"].nunique().rename("n_seeds")).reset_index()


def headline(runs: pd.DataFrame) -> pd.DataFrame:
    """Fine-tune minus scratch (and minus equal-compute scratch) per seed, at full data."""
    r = runs[runs["fraction"] >= 1.0].pivot_table(index="seed", columns="arm", values=["map50", "map50_95"])
    out = pd.DataFrame(index=r.index)
    for metric in ("map50", "map50_95"):
        out[f"{metric}: fine-tune - scratch"] = r[(metric, FINETUNE)] - r[(metric, SCRATCH)]
        if (metric, EQUAL) in r:
            out[f"{metric}: fine-tune - equal-compute scratch"] = r[(metric, FINETUNE)] - r[(metric, EQUAL)]
    out = out.reset_index()
    if len(out) > 1:  # the spread over seeds beside the per-seed differences
        diffs = out.drop(columns="seed")
        out = pd.concat([out.astype({"seed": object}),
                         diffs.mean().to_frame().T.assign(seed="mean"),
                         diffs.min().to_frame().T.assign(seed="min"),
                         diffs.max().to_frame().T.assign(seed="max")], ignore_index=True)
    return out
