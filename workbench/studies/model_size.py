"""The model-size study (notebook 04): parameters (read from each trained checkpoint) against
accuracy and inference latency, for a family of architectures trained identically on one split.

One cell per architecture. mAP is computed by :mod:`workbench.evaluation.metrics` on the
validation split; latency is the median wall time of a batch-1 prediction per image on the
chosen device, after warm-up, measured in this process (compare rows of one run, not machines).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from workbench.studies.base import Cell, Profile, Study, register


@dataclass(frozen=True)
class SizeProfile(Profile):
    models: tuple[str, ...] = ("yolov8n.yaml", "yolov8s.yaml", "yolov8m.yaml", "yolov8l.yaml", "yolov8x.yaml")  # architectures, trained identically
    epochs: int = 100  # training epochs of every model
    imgsz: int = 640  # training and inference image size (px)
    batch: int | None = None  # training batch; None: what fits the device
    seed: int = 0  # the seed of every model
    target_train: float | int = 1.0  # training images: a fraction or a count (seeded subset); 1.0 = all
    target_val: float | int = 1.0  # validation images, the same way
    latency_images: int = 20  # validation images timed per model (batch 1, after 2 warm-up images)


PROFILES = {
    "smoke": SizeProfile("smoke", models=("yolov8n.yaml", "yolov8s.yaml"), epochs=1, imgsz=160,
                         target_train=16, target_val=8, latency_images=4),
    "modest": SizeProfile("modest", models=("yolov8n.yaml", "yolov8s.yaml", "yolov8m.yaml"), epochs=8,
                          imgsz=256, target_train=48, target_val=40, latency_images=10),
    "full": SizeProfile("full", models=("yolov8n.yaml", "yolov8s.yaml", "yolov8m.yaml", "yolov8l.yaml",
                                        "yolov8x.yaml", "yolo11n.yaml", "yolo11s.yaml", "yolo11m.yaml")),
}


@register
class ModelSizeStudy(Study):
    """Parameters vs mAP50 and latency, one cell per architecture."""

    name = "04_model_size"
    profiles = PROFILES
    profile: SizeProfile

    def prepare(self) -> None:
        from workbench.data import datasets
        from workbench.data.subsets import subset_dataset

        prof = self.profile
        base = Path(datasets.prepare(self.dataset, fmt=self.fmt))
        keep = {k: v for k, v in (("train", prof.target_train), ("val", prof.target_val)) if v != 1.0}
        self.data = base
        if keep:
            self.data = self.work_dir / "data" / base.name
            if not (self.data / "meta.csv").exists():
                subset_dataset(base, self.data, keep=keep, seed=0, overwrite=True)

    def cells(self) -> list[Cell]:
        p = self.profile
        return [self.cell(f"{Path(m).stem}_s{p.seed}", model=m) for m in p.models]

    def run_cell(self, cell: Cell) -> list[dict[str, Any]]:
        from workbench.core.device import describe_device, device_name, pick_device
        from workbench.evaluation.files import evaluate_tables, load_ground_truth
        from workbench.inference.predict import predict
        from workbench.models.runs import load_run
        from workbench.models.yolo import model_stats

        p, model = self.profile, str(cell.config["model"])
        dev = pick_device(self.device)
        run_dir = self.train_or_reuse(self.work_dir / "runs" / cell.key, self.data, model=model, epochs=p.epochs,
                                      imgsz=p.imgsz, batch=p.batch, seed=p.seed)
        stats = model_stats(run_dir / "weights" / "best.pt", imgsz=p.imgsz)
        pred = predict(run_dir, self.data, split="val", conf=0.001, device=dev)
        doc, _ = evaluate_tables(load_ground_truth(self.data, split="val"), pred, n_boot=0)
        lat = latency_ms(run_dir, self.data, n=p.latency_images, device=dev)
        self.log(f"[model-size] {cell.key}: {stats['parameters']:,} params, mAP50 {doc['map50']}, {lat:.1f} ms/image")
        return [{"model": Path(model).stem, "params": stats["parameters"], "gflops": stats["gflops"],
                 "mAP50": doc["map50"], "mAP50_95": doc["map50_95"], "latency_ms": lat,
                 "train_s": load_run(run_dir).get("duration_s"), "epochs": p.epochs, "imgsz": p.imgsz,
                 "device": device_name(describe_device(dev)), "run_id": cell.key}]

    def tables(self, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
        return {"model_size": rows.drop(columns="cell", errors="ignore")}

    def figures(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
        from workbench.report.study_plots import size_vs_accuracy

        return {"model_size": size_vs_accuracy(tables["model_size"])}

    def caption(self, name: str, tables: Mapping[str, pd.DataFrame]) -> str:
        p, t = self.profile, tables["model_size"]
        return (f"Parameters (from the trained checkpoints) vs mAP50 on the validation split; marker area "
                f"proportional to parameters. Profile {p.name}, {p.epochs} epochs at {p.imgsz} px, seed {p.seed}; "
                f"latency on {t['device'].iloc[0] if len(t) else '-'}. Runs: {', '.join(t['run_id']) if len(t) else '-'}.")

    def settings(self) -> dict[str, Any]:
        from workbench.models.runs import dataset_fingerprint

        return {"data": str(self.data), "fingerprint": dataset_fingerprint(self.data)}


def latency_ms(run_dir: Path, dataset: Path, *, n: int = 10, device: str = "cpu", warmup: int = 2) -> float:
    """Median ms per image of batch-1 prediction over ``n`` validation images (after warm-up)."""
    from workbench.inference.predict import image_items, predict
    from workbench.models.runs import run_weights
    from workbench.models.yolo import load_model

    items = image_items(dataset, split="val")[: max(n, 1)]
    model = load_model(run_weights(run_dir))
    for _, path in items[:warmup]:
        predict(model, [path], device=device, batch=1)
    times = []
    for _, path in items:
        t0 = time.perf_counter()
        predict(model, [path], device=device, batch=1)
        times.append((time.perf_counter() - t0) * 1000)
    return float(statistics.median(times))
