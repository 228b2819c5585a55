"""The model-size study (notebook 04): parameters (read from each trained checkpoint) against
test accuracy and inference latency, for a family of architectures trained identically.

Splits: every model trains on train and its ``best.pt`` is chosen on val; a test split that no
training, early stopping or checkpoint choice saw is held out of val when the dataset ships none
(:func:`workbench.data.holdout.with_test_split`, recorded in the copy's ``dataset.json``). The
table and the figure report the test split, scored once by :mod:`workbench.evaluation.metrics`:
mAP50 and mAP50-95 with per-image bootstrap intervals, and AP per class. The one val number kept
(``val_map50``) is labelled as such. Latency is the median wall time of a batch-1 prediction per
test image on the profile's latency device, after warm-up, measured in this process (compare rows
of one run, not machines).

One cell per architecture, one row per cell (``ap50_<class>`` columns hold the per-class AP).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from workbench.core.tables import MAP_CONF
from workbench.data.holdout import DATA_SEED
from workbench.studies.base import Cell, Profile, Study, register

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class SizeProfile(Profile):
    models: tuple[str, ...] = ("yolov8n.yaml", "yolov8s.yaml", "yolov8m.yaml", "yolov8l.yaml", "yolov8x.yaml")  # architectures, trained identically
    epochs: int = 100  # training epochs of every model
    imgsz: int = 640  # training and inference image size (px)
    batch: int | None = None  # training batch; None: what fits the device
    seed: int = 0  # the seed of every model
    test_fraction: float = 0.5  # share of val held out as test when the dataset ships no test split
    caps: tuple[tuple[str, int], ...] = ()  # (split, at most this many images) pairs; () keeps all
    n_boot: int = 1000  # bootstrap resamples of the test images for the 95 % intervals of mAP
    latency_images: int = 20  # test images timed per model (batch 1, after 2 warm-up images)
    latency_device: str | None = None  # device the latency is measured on; None: the study's device


PROFILES = {
    "smoke": SizeProfile("smoke", models=("yolov8n.yaml", "yolov8s.yaml"), epochs=1, imgsz=160,
                         caps=(("train", 16), ("val", 8), ("test", 8)), n_boot=100, latency_images=4),
    # 2 CPU cores: every training image the data has (BCCD: 205; a seeded half of the official val
    # is held out as test, 52 of BCCD's 87 images, the other 35 choose best.pt) at 416 px, batch 16
    # (13 optimiser steps an epoch), 20 epochs, one seed (the caption says so), latency on the CPU.
    # Estimated, not yet measured: yolov8n at these settings takes ~15 min; s has ~3x n's FLOPs
    # (~45 min) and m ~10x (~2.5 h), so ~3.5 h in all if time follows FLOPs (data loading does not
    # grow with the model, so somewhat less). Over the ~2 h budget, on purpose: the epochs stay equal
    # for every model, because fewer for the larger ones would mix model size with training length,
    # the one thing this study must keep apart (and larger models trained from scratch need more
    # epochs, not fewer).
    "cpu": SizeProfile("cpu", models=("yolov8n.yaml", "yolov8s.yaml", "yolov8m.yaml"), epochs=20, imgsz=416,
                       batch=16, latency_device="cpu"),
    "full": SizeProfile("full", models=("yolov8n.yaml", "yolov8s.yaml", "yolov8m.yaml", "yolov8l.yaml",
                                        "yolov8x.yaml", "yolo11n.yaml", "yolo11s.yaml", "yolo11m.yaml")),
}


@register
class ModelSizeStudy(Study):
    """Parameters vs test mAP50 and latency, one cell per architecture."""

    name = "04_model_size"
    profiles = PROFILES
    headline_tables = ("model_size",)
    profile: SizeProfile

    def prepare(self) -> None:
        from workbench.data.holdout import held_out_dataset

        p = self.profile
        self.data = held_out_dataset(self.dataset, self.work_dir / "data", test_fraction=p.test_fraction,
                                     caps=p.caps, tag=p.name, fmt=self.fmt)

    def cells(self) -> list[Cell]:
        """Largest model first: no cell needs another, and on few cores a grid that starts its
        longest run first ends sooner (the tables keep the profile's order)."""
        p = self.profile
        return [self.cell(f"{Path(m).stem}_s{p.seed}", model=m) for m in reversed(p.models)]

    def run_cell(self, cell: Cell) -> list[dict[str, Any]]:
        import torch

        from workbench.core.device import describe_device, device_name, pick_device
        from workbench.models.runs import load_run
        from workbench.models.yolo import model_stats

        p, model = self.profile, str(cell.config["model"])
        dev = pick_device(self.device)
        run_dir = self.train_or_reuse(self.work_dir / "runs" / cell.key, self.data, model=model, epochs=p.epochs,
                                      imgsz=p.imgsz, batch=p.batch, seed=p.seed)
        stats = model_stats(run_dir / "weights" / "best.pt", imgsz=p.imgsz)
        test = score_on_test(run_dir, self.data, n_boot=p.n_boot, device=dev)
        lat_dev = pick_device(p.latency_device or self.device)
        lat = latency_ms(run_dir, self.data, split="test", n=p.latency_images, device=lat_dev)
        self.log(f"[model-size] {cell.key}: {stats['parameters']:,} params, test mAP50 {test['map50']:.3f} "
                 f"[{test['map50_lo']}, {test['map50_hi']}], {lat:.1f} ms/image on {lat_dev}")
        return [{"model": Path(model).stem, "params": stats["parameters"], "gflops": stats["gflops"], **test,
                 "latency_ms": lat, "latency_device": device_name(describe_device(lat_dev)),
                 "latency_threads": torch.get_num_threads() if lat_dev == "cpu" else None,
                 "train_s": load_run(run_dir).get("duration_s"), "epochs": p.epochs, "imgsz": p.imgsz,
                 "seed": p.seed, "run_id": cell.key}]

    def tables(self, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
        t = rows.drop(columns="cell", errors="ignore")
        return {"model_size": t.sort_values("params", kind="stable").reset_index(drop=True) if len(t) else t}

    def figures(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
        return {"model_size": size_figure(tables["model_size"])}

    def caption(self, name: str, tables: Mapping[str, pd.DataFrame]) -> str:
        p, t, i = self.profile, tables["model_size"], self.settings()
        device = t["latency_device"].iloc[0] if len(t) else "-"
        n_threads = sorted({int(n) for n in t.get("latency_threads", pd.Series(dtype=float)).dropna()})
        threads = f" ({'/'.join(map(str, n_threads))} torch thread{'s' if n_threads != [1] else ''})" if n_threads else ""
        return (f"Parameters (from the trained checkpoints) vs mAP50 on the TEST split ({i['test_images']} images "
                f"seen by no training, early stopping or checkpoint choice); bars: 95 % per-image bootstrap "
                f"intervals; right: the same against the latency. best.pt chosen on val ({i['val_images']} "
                f"images; val_map50 in the table is that val score, not a result). Profile {p.name}: "
                f"{p.epochs} epochs at {p.imgsz} px, batch {p.batch or 'auto'}, {i['train_images']} training "
                f"images, one seed ({p.seed}) per model, so the intervals show test-image noise only, not "
                f"seed-to-seed spread. Latency: median batch-1 ms per test image on {device}{threads}. "
                f"Runs: {', '.join(t['run_id']) if len(t) else '-'}; dataset fingerprint (sha256) "
                f"{i['fingerprint']['sha256'][:12]}.")

    def settings(self) -> dict[str, Any]:
        import json

        from workbench.data.canonical import read_meta
        from workbench.models.runs import dataset_fingerprint

        n = read_meta(self.data)["split"].value_counts()
        info = json.loads((self.data / "dataset.json").read_text(encoding="utf-8"))
        return {"data": str(self.data), "fingerprint": dataset_fingerprint(self.data), "split": "test",
                "hold_out": info.get("hold_out"), **{f"{s}_images": int(n.get(s, 0)) for s in ("train", "val", "test")}}


def score_on_test(run_dir: Path, dataset: Path, *, n_boot: int, device: str) -> dict[str, Any]:
    """The run's best weights (chosen on val) scored once on the test split: mAP50 and mAP50-95 with
    per-image bootstrap intervals (``<metric>_lo``/``_hi``) and AP50 per class (``ap50_<class>``),
    plus the val mAP50 (``val_map50``: the split that chose the checkpoint, not a result)."""
    from workbench.evaluation.files import evaluate_tables, load_ground_truth
    from workbench.inference.predict import predict

    scored = {}
    for split, boot in (("test", n_boot), ("val", 0)):
        gt = load_ground_truth(dataset, split=split)
        pred = predict(run_dir, dataset, split=split, conf=MAP_CONF, device=device)
        scored[split] = (evaluate_tables(gt, pred, n_boot=boot, seed=DATA_SEED)[0], len(gt.images))
    doc, n_test = scored["test"]
    ci = doc.get("ci") or {}
    out: dict[str, Any] = {"split": "test", "test_images": n_test, "map50": doc["map50"], "map50_95": doc["map50_95"]}
    for m in ("map50", "map50_95"):
        out[f"{m}_lo"], out[f"{m}_hi"] = (ci.get(m) or {}).get("lo"), (ci.get(m) or {}).get("hi")
    out.update({f"ap50_{c}": v.get("ap50") for c, v in (doc.get("per_class") or {}).items()})
    out["val_map50"] = scored["val"][0]["map50"]
    return out


def size_figure(table: pd.DataFrame) -> Figure:
    """Test mAP50 (bootstrap interval as error bars) against parameters and against CPU latency."""
    from workbench.report.study_plots import accuracy_vs_cost

    return accuracy_vs_cost(table, y="map50", title="Model size vs test mAP50")


def latency_ms(run_dir: Path, dataset: Path, *, split: str = "test", n: int = 10, device: str = "cpu",
               warmup: int = 2) -> float:
    """Median ms per image of batch-1 prediction over ``n`` images of ``split`` (after warm-up)."""
    from workbench.inference.predict import image_items, predict
    from workbench.models.runs import run_weights
    from workbench.models.yolo import load_model

    items = image_items(dataset, split=split)[: max(n, 1)]
    model = load_model(run_weights(run_dir))
    for _, path in items[:warmup]:
        predict(model, [path], device=device, batch=1)
    times = []
    for _, path in items:
        t0 = time.perf_counter()
        predict(model, [path], device=device, batch=1)
        times.append((time.perf_counter() - t0) * 1000)
    return float(statistics.median(times))
