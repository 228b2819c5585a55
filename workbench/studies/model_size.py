"""The model-size study: parameters (read from each trained checkpoint) against accuracy and
inference latency, for a family of architectures trained identically on the same split.

mAP is computed by :mod:`workbench.evaluation.metrics` on the validation split; latency is the median
wall time of a batch-1 prediction per image on the chosen device, after warm-up, measured
in this process (so compare rows of one run, not across machines).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from workbench.data import datasets
from workbench.data.subsets import subset_dataset


@dataclass(frozen=True)
class SizeProfile:
    name: str
    models: tuple[str, ...] = ("yolov8n.yaml", "yolov8s.yaml", "yolov8m.yaml", "yolov8l.yaml", "yolov8x.yaml")
    epochs: int = 100
    imgsz: int = 640
    seed: int = 0
    target_train: float | int = 1.0
    target_val: float | int = 1.0
    latency_images: int = 20


PROFILES = {
    "smoke": SizeProfile("smoke", models=("yolov8n.yaml", "yolov8s.yaml"), epochs=1, imgsz=160,
                         target_train=16, target_val=8, latency_images=4),
    "modest": SizeProfile("modest", models=("yolov8n.yaml", "yolov8s.yaml", "yolov8m.yaml"), epochs=8,
                          imgsz=256, target_train=48, target_val=40, latency_images=10),
    "full": SizeProfile("full", models=("yolov8n.yaml", "yolov8s.yaml", "yolov8m.yaml", "yolov8l.yaml",
                                        "yolov8x.yaml", "yolo11n.yaml", "yolo11s.yaml", "yolo11m.yaml")),
}


def run_study(target: str | Path = "bccd", *, profile: str | SizeProfile = "smoke", out_dir: Path,
              fmt: str | None = None, device: str | None = None,
              log: Callable[[str], None] = print) -> pd.DataFrame:
    """Train each model of the profile (reusing finished runs) and return one row per model."""
    from workbench.core.device import describe_device, device_name, pick_device
    from workbench.evaluation.files import evaluate_tables, load_ground_truth
    from workbench.inference.predict import predict
    from workbench.studies.profiles import pick
    from workbench.models.runs import finished_with, load_run
    from workbench.models.yolo import model_stats, train

    prof = pick(profile, PROFILES)
    out_dir = Path(out_dir)
    base = datasets.prepare(target, fmt=fmt)
    keep = {k: v for k, v in (("train", prof.target_train), ("val", prof.target_val)) if v != 1.0}
    ds = Path(base)
    if keep:
        ds = out_dir / "data" / f"{Path(str(target)).name}_{prof.name}"
        if not (ds / "meta.csv").exists():
            subset_dataset(base, ds, keep=keep, seed=0, overwrite=True)
    dev = pick_device(device)
    gt = load_ground_truth(ds, split="val")
    rows = []
    for model in prof.models:
        name = f"{Path(model).stem}_s{prof.seed}"
        run_dir = out_dir / "runs" / name
        if not finished_with(run_dir, model=model, epochs=prof.epochs, imgsz=prof.imgsz):
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            train(ds, model=model, epochs=prof.epochs, imgsz=prof.imgsz, seed=prof.seed, device=dev,
                  run_name=name, runs_root=out_dir / "runs")
        rec = load_run(run_dir)
        weights = run_dir / "weights" / "best.pt"
        stats = model_stats(weights, imgsz=prof.imgsz)
        pred = predict(run_dir, ds, split="val", conf=0.001, device=dev)
        doc, _ = evaluate_tables(gt, pred, n_boot=0)
        lat = latency_ms(run_dir, ds, n=prof.latency_images, device=dev)
        rows.append({"model": Path(model).stem, "params": stats["parameters"], "gflops": stats["gflops"],
                     "mAP50": doc["map50"], "mAP50_95": doc["map50_95"], "latency_ms": lat,
                     "train_s": rec.get("duration_s"), "epochs": prof.epochs, "imgsz": prof.imgsz,
                     "device": device_name(describe_device(dev)), "run_id": name})
        log(f"[model-size] {name}: {stats['parameters']:,} params, mAP50 {doc['map50']}, {lat:.1f} ms/image")
    table = pd.DataFrame(rows)
    table.attrs["profile"] = asdict(prof)
    return table


def latency_ms(run_dir: Path, dataset: Path, *, n: int = 10, device: str = "cpu", warmup: int = 2) -> float:
    """Median ms per image of batch-1 prediction over ``n`` validation images (after warm-up)."""
    from workbench.inference.predict import image_items, predict
    from workbench.models.yolo import load_model
    from workbench.models.runs import run_weights

    items = image_items(dataset, split="val")[: max(n, 1)]
    model = load_model(run_weights(run_dir))
    for name, path in items[:warmup]:
        predict(model, [path], device=device, batch=1)
    times = []
    for name, path in items:
        t0 = time.perf_counter()
        predict(model, [path], device=device, batch=1)
        times.append((time.perf_counter() - t0) * 1000)
    return float(statistics.median(times))


def write_outputs(table: pd.DataFrame, out: Path) -> list[Path]:
    from workbench.report.figures import save_figure
    from workbench.report.study_plots import size_vs_accuracy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "model_size.csv", index=False)
    prof = table.attrs.get("profile", {})
    caption = (f"Parameters (from the trained checkpoints) vs mAP50 on the validation split; marker area "
               f"proportional to parameters. Profile {prof.get('name')}, {prof.get('epochs')} epochs at "
               f"{prof.get('imgsz')} px, seed {prof.get('seed')}; latency on {table['device'].iloc[0] if len(table) else '-'}.")
    return [out / "model_size.csv"] + save_figure(size_vs_accuracy(table), out / "model_size", caption=caption,
                                                  provenance={"runs": table["run_id"].tolist(), **prof})

