"""Benchmark the workbench's batched tiled inference against SAHI (the named baseline).

Same model (the large-image study's nuclei detector, or ``--run``), same slice size and
overlap, same score threshold, on the same real held-out MoNuSeg tiles (1000x1000 H&E).
Rows:

* ``SAHI (defaults)`` – ``get_sliced_prediction`` as documented: one slice per model call,
  a full-image pass on top (``perform_standard_pred=True``), GREEDYNMM / IOS 0.5 merge;
* ``SAHI (batched, no full pass)`` – SAHI at its fastest comparable setting:
  ``batch_size=--batch``, ``perform_standard_pred=False`` (same merge);
* ``workbench (batch 1)`` – the workbench tiler, one tile per call (isolates batching);
* ``workbench (batched)`` – :func:`workbench.inference.tiled_inference.tiled_predict_image`,
  ``--batch`` tiles per call, cross-tile NMM / IOS 0.5.

Printed per row: seconds per image (median of ``--repeats`` runs after a warm-up, arms
taking turns, averaged over the images), the time
ratio to SAHI's defaults, recall and precision at IoU 0.5 over all boxes kept (score >=
``--conf``), mAP50 (workbench.evaluation.metrics), boxes vs true nuclei. Every network attempt is
refused and counted (SAHI and ultralytics must work offline).

    python benchmarks/bench_tiled_vs_sahi.py                      # cpu profile's detector
    python benchmarks/bench_tiled_vs_sahi.py --run outputs/.../runs/<run> --repeats 5
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.studies import large_images
from workbench.evaluation import metrics
from workbench.core.paths import outputs_dir
from workbench.models.runs import run_weights
from workbench.inference.tiled_inference import TileSettings, YoloDetector, tiled_predict_image

ATTEMPTS: list[str] = []


def refuse_network() -> None:
    """Refuse and record every outgoing connection (local AF_UNIX sockets still work)."""
    original = socket.socket.connect

    def connect(self, address, *a, **k):
        if isinstance(address, (str, bytes)):
            return original(self, address, *a, **k)
        ATTEMPTS.append(repr(address))
        raise OSError(f"network disabled by the benchmark ({address!r})")

    def refuse(*args, **kwargs):
        ATTEMPTS.append(repr(args[:1]))
        raise OSError("network disabled by the benchmark")

    socket.socket.connect = connect
    socket.create_connection = refuse
    socket.getaddrinfo = refuse


def sahi_predictor(weights: Path, *, conf: float, slice_size: int, overlap: float, batch: int, standard: bool):
    from sahi import AutoDetectionModel
    from sahi.predict import get_sliced_prediction

    model = AutoDetectionModel.from_pretrained(model_type="ultralytics", model_path=str(weights),
                                               confidence_threshold=conf, device="cpu", image_size=slice_size)

    def predict(rgb: np.ndarray) -> pd.DataFrame:
        res = get_sliced_prediction(rgb, model, slice_height=slice_size, slice_width=slice_size,
                                    overlap_height_ratio=overlap, overlap_width_ratio=overlap,
                                    perform_standard_pred=standard, postprocess_type="GREEDYNMM",
                                    postprocess_match_metric="IOS", postprocess_match_threshold=0.5,
                                    batch_size=batch, verbose=0)
        rows = [(*p.bbox.to_xyxy(), p.category.name, p.score.value) for p in res.object_prediction_list]
        return pd.DataFrame(rows, columns=["x1", "y1", "x2", "y2", "class", "score"])

    return predict


def workbench_predictor(weights: Path, *, conf: float, slice_size: int, overlap: float, batch: int):
    # max_det 300 per tile: ultralytics' default, which SAHI leaves in place
    det = YoloDetector(weights, conf=conf, imgsz=slice_size, max_det=300, device="cpu")
    settings = TileSettings(tile=slice_size, overlap=overlap, batch=batch, merge="nmm", merge_metric="ios",
                            merge_thr=0.5)
    return lambda rgb: tiled_predict_image(rgb, det, settings=settings)[["x1", "y1", "x2", "y2", "class", "score"]]


def measure(arms: dict, images: dict[str, np.ndarray], repeats: int) -> dict[str, tuple[pd.DataFrame, float]]:
    """Median seconds per image for every arm; arms take turns within each repeat, so load
    from other processes on a shared machine falls on all of them alike. Every arm runs with
    torch on all CPU threads (ultralytics would leave it at cpu_count - 1), so neither side
    gets more threads than the other."""
    from workbench.core.device import all_cpu_threads

    first = next(iter(images.values()))
    for predict in arms.values():
        predict(first)  # warm-up
    times = {name: {i: [] for i in images} for name in arms}
    tables: dict[str, dict[str, pd.DataFrame]] = {name: {} for name in arms}
    for r in range(repeats):
        for image_id, rgb in images.items():
            for name, predict in arms.items():
                with all_cpu_threads():
                    t0 = time.perf_counter()
                    tables[name][image_id] = predict(rgb)
                    times[name][image_id].append(time.perf_counter() - t0)
        print(f"  repeat {r + 1}/{repeats}: " + ", ".join(
            f"{n} {statistics.mean(t[-1] for t in times[n].values()):.2f} s" for n in arms), flush=True)
    return {name: (pd.concat([t.assign(image=i) for i, t in tables[name].items()], ignore_index=True),
                   float(statistics.mean(statistics.median(v) for v in times[name].values())))
            for name in arms}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu", help="large-image study profile whose detector to use")
    ap.add_argument("--run", help="a run folder or weights file instead of the profile's detector")
    ap.add_argument("--slice", type=int, default=None, help="slice size (default: the profile's patch)")
    ap.add_argument("--overlap", type=float, default=0.2)
    ap.add_argument("--conf", type=float, default=0.25, help="score threshold for both")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="folder for the result table (default outputs/bench/tiled_vs_sahi)")
    args = ap.parse_args(argv)
    refuse_network()

    study = large_images.LargeImagesStudy(profile=args.profile, micronuclei=False)
    study.prepare()
    prof = study.profile
    run = Path(args.run) if args.run else study.train_detector()
    weights = run_weights(run) if Path(run).is_dir() else Path(run)
    slice_size = args.slice or prof.patch
    images, gt = large_images.load_test_images(study.base, study.test_ids), study.gt
    import sahi

    print(f"SAHI {sahi.__version__}; detector {weights}; {len(images)} held-out MoNuSeg tiles, {len(gt)} nuclei; "
          f"slice {slice_size}, overlap {args.overlap}, conf {args.conf}, batch {args.batch}, repeats {args.repeats}")
    common = dict(conf=args.conf, slice_size=slice_size, overlap=args.overlap)
    arms = {
        "SAHI (defaults)": sahi_predictor(weights, batch=1, standard=True, **common),
        f"SAHI (batch {args.batch}, no full pass)": sahi_predictor(weights, batch=args.batch, standard=False, **common),
        "workbench (batch 1)": workbench_predictor(weights, batch=1, **common),
        f"workbench (batch {args.batch})": workbench_predictor(weights, batch=args.batch, **common),
    }
    rows = []
    for name, (pred, seconds) in measure(arms, images, args.repeats).items():
        prf = metrics.precision_recall_f1(gt, pred, score_thr=args.conf, iou_thr=0.5)
        overall = prf[prf["class"] == metrics.OVERALL].iloc[0]
        rows.append({"method": name, "s_per_image": seconds, "recall": overall["recall"],
                     "precision": overall["precision"], "map50": metrics.evaluate(gt, pred).map50,
                     "n_pred": int(len(pred)), "n_true": int(len(gt))})
    table = pd.DataFrame(rows)
    base = table.loc[0, "s_per_image"]
    table.insert(2, "speedup_vs_sahi", base / table["s_per_image"])
    pd.set_option("display.width", 200)
    print(table.round(3).to_string(index=False))
    print(f"network attempts: {len(ATTEMPTS)} {ATTEMPTS[:3]}")
    out = args.out or outputs_dir() / "bench" / "tiled_vs_sahi"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "tiled_vs_sahi.csv", index=False)
    (out / "settings.json").write_text(json.dumps({**{k: str(v) for k, v in vars(args).items()},
                                                   "weights": str(weights), "sahi": sahi.__version__,
                                                   "network_attempts": ATTEMPTS}, indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
