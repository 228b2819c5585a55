"""The pretrain-vs-scratch study ("transferable cell recognition").

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

Per-epoch curves are ultralytics' validation metrics of each run; the final numbers are
recomputed with :mod:`workbench.evaluation.metrics` (equal to pycocotools) from the best weights'
predictions on the same validation images, so all arms are scored by one matching.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from workbench.data import datasets
from workbench.data.canonical import read_meta
from workbench.data.subsets import subset_dataset

SCRATCH, FINETUNE, EQUAL, PRETRAIN = "scratch", "fine-tune", "scratch, equal compute", "pretrain (source)"


@dataclass(frozen=True)
class TransferProfile:
    name: str
    model: str = "yolov8n.yaml"
    imgsz: int = 640
    pretrain_epochs: int = 100
    finetune_epochs: int = 100
    seeds: tuple[int, ...] = (0, 1, 2)
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    target_train: float | int = 1.0  # cap on target training images (share or count)
    target_val: float | int = 1.0  # cap on target validation images
    source_tile: int = 640  # MoNuSeg tiles are cut into patches of this size
    full_source: bool = False  # use the fuller ../shared copy of the source when present
    equal_compute: bool = True
    batch: int | None = None


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


@dataclass
class TransferResult:
    profile: TransferProfile
    runs: pd.DataFrame  # one row per run: arm, seed, fraction, run_dir, epochs, duration_s, map50, map50_95
    epochs: pd.DataFrame  # one row per run and epoch: arm, seed, fraction, epoch, mAP50, mAP50_95
    datasets: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """Final metrics per arm and fraction: mean, min, max over seeds."""
        r = self.runs[self.runs["arm"] != PRETRAIN]
        return (r.groupby(["arm", "fraction"])[["map50", "map50_95", "duration_s"]]
                .agg(["mean", "min", "max"]).round(4))


def equal_compute_epochs(profile: TransferProfile, n_source_train: int, n_target_train: int) -> int:
    """Epochs for the equal-compute scratch arm (see the module docstring)."""
    if n_target_train < 1:
        raise ValueError("the target training split is empty")
    return profile.finetune_epochs + math.ceil(profile.pretrain_epochs * n_source_train / n_target_train)


def prepare_source(profile: TransferProfile, cache: Path) -> Path:
    """MoNuSeg tiled into training patches, split 8:2 by source tile (no tile straddles)."""
    from workbench.data.splits import split_dataset
    from workbench.data.tiling import tile_dataset

    out = cache / f"monuseg_tiles{profile.source_tile}{'_full' if profile.full_source else ''}"
    if not (out / "meta.csv").exists():
        base = datasets.prepare("monuseg", full=profile.full_source)
        tile_dataset(base, out, tile=profile.source_tile, overlap=0.1, min_visibility=0.5, overwrite=True)
        split_dataset(out, ratios=(8, 2), seed=0, group_by="tile_of", keep_existing=False)
    return out


def prepare_target(target: str | Path, profile: TransferProfile, cache: Path, *, fmt: str | None = None,
                   seeds: tuple[int, ...] = ()) -> dict[tuple[int, float], Path]:
    """The target set capped by the profile, and nested training subsets per (seed, fraction)."""
    base = datasets.prepare(target, fmt=fmt)
    name = Path(str(target)).name
    capped = cache / f"{name}_{profile.name}"
    if not (capped / "meta.csv").exists():
        keep = {k: v for k, v in (("train", profile.target_train), ("val", profile.target_val)) if v != 1.0}
        subset_dataset(base, capped, keep=keep, seed=0, overwrite=True) if keep else None
        if not keep:
            capped = Path(base)
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


def _n_train(ds: Path) -> int:
    return int((read_meta(ds)["split"] == "train").sum())


def run_study(target: str | Path = "bccd", *, profile: str | TransferProfile = "smoke", out_dir: Path,
              fmt: str | None = None, device: str | None = None, workers: int | None = None,
              log: Callable[[str], None] = print) -> TransferResult:
    """Train every arm (reusing finished runs in ``out_dir/runs``) and collect the tables."""
    from workbench.studies.base import pick
    from workbench.models.runs import finished_with, load_run
    from workbench.models.yolo import train

    prof = pick(profile, PROFILES)
    out_dir = Path(out_dir)
    cache, runs_root = out_dir / "data", out_dir / "runs"
    cache.mkdir(parents=True, exist_ok=True)
    source = prepare_source(prof, cache)
    targets = prepare_target(target, prof, cache, fmt=fmt, seeds=prof.seeds)
    n_src = _n_train(source)

    rows, curves = [], []

    def run(arm: str, seed: int, frac: float, dataset: Path, epochs: int, pretrained: Path | None = None) -> Path:
        name = f"{arm.split(' ')[0].replace(',', '')}{'-eq' if arm == EQUAL else ''}_f{int(frac * 100)}_s{seed}"
        run_dir = runs_root / name
        if finished_with(run_dir, model=prof.model, epochs=epochs, imgsz=prof.imgsz, batch=prof.batch,
                         pretrained=pretrained):
            log(f"[transfer] reuse {name}")
        else:
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)  # an unfinished earlier attempt: start it again cleanly
            t0 = time.perf_counter()
            train(dataset, model=prof.model, epochs=epochs, imgsz=prof.imgsz, batch=prof.batch, seed=seed,
                  device=device, pretrained=pretrained, run_name=name, runs_root=runs_root, workers=workers)
            log(f"[transfer] {name}: {epochs} epochs in {time.perf_counter() - t0:.0f} s")
        rec = load_run(run_dir)
        m = rec["metrics"]
        final = _final_metrics(run_dir, dataset)
        rows.append({"arm": arm, "seed": seed, "fraction": frac, "run_id": name, "run_dir": str(run_dir),
                     "dataset": str(dataset), "train_images": _n_train(dataset), "epochs": epochs,
                     "duration_s": rec.get("duration_s"),
                     "dataset_sha256": (rec.get("dataset", {}).get("fingerprint") or {}).get("sha256", "")[:12],
                     **final})
        if m is not None and len(m):
            curves.append(m.reindex(columns=["epoch", "mAP50", "mAP50_95"]).assign(
                arm=arm, seed=seed, fraction=frac, run_id=name))
        return run_dir

    for seed in prof.seeds:
        pre = run(PRETRAIN, seed, 1.0, source, prof.pretrain_epochs)
        pre_w = pre / "weights" / "best.pt"
        for frac in prof.fractions:
            ds = targets[(seed, frac)]
            run(SCRATCH, seed, frac, ds, prof.finetune_epochs)
            run(FINETUNE, seed, frac, ds, prof.finetune_epochs, pretrained=pre_w)
            if prof.equal_compute and frac >= 1.0:
                run(EQUAL, seed, frac, ds, equal_compute_epochs(prof, n_src, _n_train(ds)))
    runs = pd.DataFrame(rows)
    epochs = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    info = {"source": str(source), "source_train_images": n_src,
            "targets": {f"seed{s}_f{f}": str(p) for (s, f), p in targets.items()},
            "profile": asdict(prof)}
    return TransferResult(prof, runs, epochs, info)


def _final_metrics(run_dir: Path, dataset: Path) -> dict[str, float]:
    """mAP of the run's best weights on the dataset's val split, by workbench.evaluation.metrics."""
    from workbench.evaluation.files import evaluate_tables, load_ground_truth
    from workbench.inference.predict import predict

    gt = load_ground_truth(dataset, split="val")
    pred = predict(run_dir, dataset, split="val", conf=0.001, device="cpu" if _cpu_only() else None)
    doc, _ = evaluate_tables(gt, pred, n_boot=0)
    return {"map50": doc["map50"], "map50_95": doc["map50_95"]}


def _cpu_only() -> bool:
    from workbench.core.device import pick_device

    return pick_device(None) == "cpu"


# ----------------------------------------------------------------------------- reporting

def provenance(result: TransferResult) -> dict[str, Any]:
    """What a figure caption must carry: profile, seeds, run ids, dataset fingerprints."""
    r = result.runs
    return {"profile": result.profile.name, "seeds": list(result.profile.seeds),
            "runs": r["run_id"].tolist(), "datasets": sorted(set(r["dataset_sha256"]))}


def headline(result: TransferResult) -> pd.DataFrame:
    """Fine-tune minus scratch (and minus equal-compute scratch) per seed, at full data."""
    r = result.runs[result.runs["fraction"] >= 1.0].pivot_table(index="seed", columns="arm",
                                                                 values=["map50", "map50_95"])
    out = pd.DataFrame(index=r.index)
    for metric in ("map50", "map50_95"):
        out[f"{metric}: fine-tune - scratch"] = r[(metric, FINETUNE)] - r[(metric, SCRATCH)]
        if (metric, EQUAL) in r:
            out[f"{metric}: fine-tune - equal-compute scratch"] = r[(metric, FINETUNE)] - r[(metric, EQUAL)]
    return out.reset_index()


def figures(result: TransferResult) -> dict[str, Any]:
    """mAP50 / mAP50-95 against epoch per arm (full data), and the label-efficiency curve."""
    from workbench.report.study_plots import metric_curves

    figs = {}
    ep = result.epochs[(result.epochs["fraction"] >= 1.0) & (result.epochs["arm"] != PRETRAIN)]
    if len(ep):
        figs["map50_vs_epoch"] = metric_curves(ep, y="mAP50", title="Target val mAP50 (shaded: min-max over seeds)")
        figs["map50_95_vs_epoch"] = metric_curves(ep, y="mAP50_95", ylabel="mAP50-95",
                                                  title="Target val mAP50-95 (shaded: min-max over seeds)")
    le = result.runs[result.runs["arm"].isin([SCRATCH, FINETUNE])]
    if le["fraction"].nunique() > 1:
        figs["label_efficiency"] = metric_curves(le, x="fraction", y="map50", ylabel="mAP50 (workbench.evaluation.metrics)",
                                                 title="Label efficiency: share of target training images")
    return figs


def write_outputs(result: TransferResult, out: Path) -> list[Path]:
    """CSV tables and PNG/PDF figures (captions carry run ids, seeds, dataset fingerprints)."""
    from workbench.report.figures import save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in (("runs", result.runs), ("epochs", result.epochs), ("headline", headline(result))):
        table.to_csv(out / f"{name}.csv", index=False)
        written.append(out / f"{name}.csv")
    result.summary().to_csv(out / "summary.csv")
    prov = provenance(result)
    for name, fig in figures(result).items():
        written += save_figure(fig, out / name, provenance=prov,
                               caption=f"Pretrain (MoNuSeg H&E nuclei) vs scratch on the target set, "
                                       f"profile {prov['profile']}, seeds {prov['seeds']}.")
    return written
