"""The pretrain-vs-scratch study (notebook 03, "transferable cell recognition").

Arms, each trained with every seed of the profile:

* ``pretrain (source)`` – a detector trained on H&E nuclei (MoNuSeg, tiled to patches);
* ``scratch`` – the same architecture trained on the target set from random weights;
* ``fine-tune`` – initialised from the pretrained weights (matching layers; the class head
  is new), trained on the target set for the same number of epochs as ``scratch``;
* ``scratch, equal compute`` – scratch trained for as many *extra* epochs as the
  pretraining cost, counted in images seen: ``ceil(pretrain_epochs * n_source_train /
  n_target_train)``, so the comparison is not won by compute alone;
* label efficiency – ``fine-tune`` and ``scratch`` on nested subsets of the target training
  images (fractions of the profile).

Cells: one pretraining run per seed, then one cell per (arm, seed, fraction); a fine-tune cell
needs its seed's pretraining cell and finds its weights in that cell's run folder.

Per-epoch curves are ultralytics' validation metrics of each run; the final numbers are
recomputed with :mod:`workbench.evaluation.metrics` (equal to pycocotools) from the best weights'
predictions on the same validation images, so all arms are scored by one matching.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from workbench.data import datasets
from workbench.data.canonical import read_meta
from workbench.data.subsets import subset_dataset
from workbench.studies.base import Cell, Profile, Study, register

SCRATCH, FINETUNE, EQUAL, PRETRAIN = "scratch", "fine-tune", "scratch, equal compute", "pretrain (source)"
# run-folder prefix of each arm (cell keys are <prefix>_f<percent>_s<seed>)
ARM_KEYS = {PRETRAIN: "pretrain", SCRATCH: "scratch", FINETUNE: "fine-tune", EQUAL: "scratch-eq"}
SOURCE_OVERLAP = 0.1  # share of a source patch that overlaps its neighbour
SOURCE_MIN_VISIBILITY = 0.5  # a nucleus cut by a patch edge is kept when this share of its box is inside
SOURCE_RATIOS = (8, 2)  # train : val split of the source patches, grouped by MoNuSeg tile
EVAL_CONF = 0.001  # score floor of the predictions mAP is computed from (the whole PR curve)


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
    full_source: bool = False  # use the fuller ../shared copy of MoNuSeg when present
    equal_compute: bool = True  # also train the equal-compute scratch arm (all target images)
    batch: int | None = None  # training batch (images); None: what fits the device


PROFILES = {
    # CI: proves the whole pipeline on real data in about two minutes on 2 CPU cores
    "smoke": TransferProfile("smoke", imgsz=160, pretrain_epochs=1, finetune_epochs=2, seeds=(0,),
                             fractions=(0.5, 1.0), target_train=16, target_val=8, source_tile=256, batch=8),
    # a real CPU study (~40 min). Small batches on purpose: with ~50 images a batch of 16
    # gives ~4 optimiser steps per epoch and ultralytics warms up for at least 100 steps, so
    # 30 epochs at batch 16 learned nothing (precision and recall 0 throughout); batch 4 gives 4x the steps.
    # One seed keeps it near 40 min on 2 busy cores; add seeds for a spread (each costs as much again).
    "modest": TransferProfile("modest", imgsz=256, pretrain_epochs=30, finetune_epochs=30, seeds=(0,),
                              fractions=(0.25, 1.0), target_train=48, target_val=40, source_tile=256, batch=4),
    # a GPU: all data, 640 px, three seeds, the full label-efficiency curve
    "full": TransferProfile("full", imgsz=640, pretrain_epochs=100, finetune_epochs=100,
                            source_tile=640, full_source=True),
}


def equal_compute_epochs(profile: TransferProfile, n_source_train: int, n_target_train: int) -> int:
    """Epochs for the equal-compute scratch arm (see the module docstring)."""
    if n_target_train < 1:
        raise ValueError("the target training split is empty")
    return profile.finetune_epochs + math.ceil(profile.pretrain_epochs * n_source_train / n_target_train)


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
    base = Path(datasets.prepare(target, fmt=fmt))
    name = Path(str(target)).name
    keep = {k: v for k, v in (("train", profile.target_train), ("val", profile.target_val)) if v != 1.0}
    capped = cache / f"{name}_{profile.name}" if keep else base
    if keep and not (capped / "meta.csv").exists():
        subset_dataset(base, capped, keep=keep, seed=0, overwrite=True)
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
    profile: TransferProfile

    def prepare(self) -> None:
        cache = self.work_dir / "data"
        cache.mkdir(parents=True, exist_ok=True)
        self.source = prepare_source(self.profile, cache)
        self.targets = prepare_target(self.dataset, self.profile, cache, fmt=self.fmt, seeds=self.profile.seeds)

    def cells(self) -> list[Cell]:
        p, out = self.profile, []
        for seed in p.seeds:
            pre = run_key(PRETRAIN, seed, 1.0)
            out.append(self.cell(pre, arm=PRETRAIN, seed=seed, fraction=1.0))
            for frac in p.fractions:
                frac = min(float(frac), 1.0)
                out.append(self.cell(run_key(SCRATCH, seed, frac), arm=SCRATCH, seed=seed, fraction=frac))
                out.append(self.cell(run_key(FINETUNE, seed, frac), needs=[pre], arm=FINETUNE, seed=seed,
                                     fraction=frac))
                if p.equal_compute and frac >= 1.0:
                    out.append(self.cell(run_key(EQUAL, seed, frac), arm=EQUAL, seed=seed, fraction=frac))
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
        if arm == EQUAL:
            epochs = equal_compute_epochs(p, n_train(self.source), n_train(ds))
        pretrained = None
        if arm == FINETUNE:
            pretrained = self.run_dir(cell.needs[0]) / "weights" / "best.pt"
            if not pretrained.is_file():
                raise FileNotFoundError(f"{cell.key} needs the pretraining cell {cell.needs[0]} first ({pretrained})")
        run_dir = self.train_or_reuse(self.run_dir(cell.key), ds, model=p.model, epochs=epochs, imgsz=p.imgsz,
                                      batch=p.batch, seed=seed, pretrained=pretrained)
        rec = load_run(run_dir)
        m = rec["metrics"]
        curve = [] if m is None else [{"epoch": int(e), "mAP50": float(a), "mAP50_95": float(b)} for e, a, b in
                                      m.reindex(columns=["epoch", "mAP50", "mAP50_95"]).itertuples(index=False)]
        sha = (rec.get("dataset", {}).get("fingerprint") or {}).get("sha256", "")[:12]
        return [{"arm": arm, "seed": seed, "fraction": frac, "run_id": cell.key, "run_dir": str(run_dir),
                 "dataset": str(ds), "train_images": n_train(ds), "epochs": epochs,
                 "duration_s": rec.get("duration_s"), "dataset_sha256": sha,
                 **self._final_metrics(run_dir, ds), "curve": curve}]

    def _final_metrics(self, run_dir: Path, dataset: Path) -> dict[str, float]:
        """mAP of the run's best weights on the dataset's val split, by workbench.evaluation.metrics."""
        from workbench.core.device import pick_device
        from workbench.evaluation.files import evaluate_tables, load_ground_truth
        from workbench.inference.predict import predict

        gt = load_ground_truth(dataset, split="val")
        pred = predict(run_dir, dataset, split="val", conf=EVAL_CONF, device=pick_device(self.device))
        doc, _ = evaluate_tables(gt, pred, n_boot=0)
        return {"map50": doc["map50"], "map50_95": doc["map50_95"]}

    def tables(self, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
        runs = rows.drop(columns=["cell", "curve"], errors="ignore")
        return {"runs": runs, "epochs": epoch_table(rows), "headline": headline(runs), "summary": summary(runs)}

    def figures(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
        """mAP50 / mAP50-95 against epoch per arm (full data), and the label-efficiency curve."""
        import matplotlib.pyplot as plt

        from workbench.report.study_plots import metric_curves

        figs = {}
        ep = tables["epochs"]
        ep = ep[(ep["fraction"] >= 1.0) & (ep["arm"] != PRETRAIN)] if len(ep) else ep
        if len(ep):
            figs["map50_vs_epoch"] = metric_curves(ep, y="mAP50", title="Target val mAP50 (shaded: min-max over seeds)")
            figs["map50_95_vs_epoch"] = metric_curves(ep, y="mAP50_95", ylabel="mAP50-95",
                                                      title="Target val mAP50-95 (shaded: min-max over seeds)")
        runs = tables["runs"]
        le = runs[runs["arm"].isin([SCRATCH, FINETUNE])]
        if le["fraction"].nunique() > 1:
            figs["label_efficiency"] = metric_curves(le, x="fraction", y="map50",
                                                     ylabel="mAP50 (workbench.evaluation.metrics)",
                                                     title="Label efficiency: share of target training images")
        for fig in figs.values():
            plt.close(fig)  # metric_curves draws with pyplot; the Figure objects stay usable
        return figs

    def caption(self, name: str, tables: Mapping[str, pd.DataFrame]) -> str:
        p, runs = self.profile, tables["runs"]
        return (f"Pretrain (MoNuSeg H&E nuclei) vs scratch on the target set {Path(self.dataset).name}, "
                f"profile {p.name}, seeds {list(p.seeds)}; final mAP by workbench.evaluation.metrics on the "
                f"validation images. Equal-compute scratch: {p.finetune_epochs} epochs plus the pretraining's "
                f"images seen. runs: {', '.join(runs['run_id'])}; dataset fingerprints (sha256, first 12): "
                f"{', '.join(sorted(set(runs['dataset_sha256'])))}.")

    def settings(self) -> dict[str, Any]:
        return {"source": str(self.source), "source_train_images": n_train(self.source),
                "targets": {f"seed{s}_f{f}": str(d) for (s, f), d in self.targets.items()}}


# ----------------------------------------------------------------------------- tables

def epoch_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run and epoch (ultralytics' validation mAP50, mAP50-95), from the cells' curves."""
    cols = ["epoch", "mAP50", "mAP50_95", "arm", "seed", "fraction", "run_id"]
    out = [{**point, **{k: r[k] for k in cols[3:]}} for r in rows.to_dict("records") for point in r.get("curve") or []]
    return pd.DataFrame(out, columns=cols)


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Final metrics per arm and fraction (pretraining left out): mean, min, max over seeds."""
    r = runs[runs["arm"] != PRETRAIN]
    t = r.groupby(["arm", "fraction"])[["map50", "map50_95", "duration_s"]].agg(["mean", "min", "max"]).round(4)
    t.columns = [f"{metric}_{stat}" for metric, stat in t.columns]
    return t.reset_index()


def headline(runs: pd.DataFrame) -> pd.DataFrame:
    """Fine-tune minus scratch (and minus equal-compute scratch) per seed, at full data."""
    r = runs[runs["fraction"] >= 1.0].pivot_table(index="seed", columns="arm", values=["map50", "map50_95"])
    out = pd.DataFrame(index=r.index)
    for metric in ("map50", "map50_95"):
        out[f"{metric}: fine-tune - scratch"] = r[(metric, FINETUNE)] - r[(metric, SCRATCH)]
        if (metric, EQUAL) in r:
            out[f"{metric}: fine-tune - equal-compute scratch"] = r[(metric, FINETUNE)] - r[(metric, EQUAL)]
    return out.reset_index()
