"""Benchmark the cascade against its named baseline, the detector alone.

Same image files, same device, same detector and confidence, models loaded once beforehand
(loading is not timed). Baseline: ``workbench.inference.predict.predict`` (ultralytics decodes the
files). Cascade: ``workbench.inference.cascade.cascade_predict`` (decodes each image once, runs the
detector on the arrays, crops every box and classifies all crops of a chunk in batches).
The ratio column is cascade time / detector-only time; the goal is <= 1.25.

    python benchmarks/bench_cascade.py --detector RUN --classifier RUN --dataset DIR [--split val]
    # timing of another architecture / crop size (random weights: timing only, labels meaningless)
    python benchmarks/bench_cascade.py ... --arch mobilenetv3_small_100 --size 64
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from workbench.inference.cascade import cascade_predict
from workbench.models.classifier import load_classifier
from workbench.models.crops import crop_table, dataset_images
from workbench.core.device import describe_device, pick_device
from workbench.inference.predict import image_items, load_detector, predict


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", required=True, help="detector run folder or .pt")
    ap.add_argument("--classifier", required=True, help="classifier run folder")
    ap.add_argument("--dataset", required=True, type=Path, help="canonical dataset")
    ap.add_argument("--split", default="val")
    ap.add_argument("--n-images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--det-conf", type=float, default=0.5)
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch", type=int, default=8, help="images per detector batch (both systems)")
    ap.add_argument("--arch", help="time this timm architecture instead (untrained weights: timing only)")
    ap.add_argument("--size", type=int, help="with --arch: crop size (default: the run's)")
    a = ap.parse_args(argv)

    dev = pick_device(a.device)
    loaded = load_detector(a.detector)
    yolo, imgsz, max_det = loaded.yolo, loaded.imgsz, loaded.max_det
    clf = load_classifier(a.classifier, device=dev)
    if a.arch:
        import dataclasses

        import torch

        from workbench.models.classifier import build_model

        model = build_model(a.arch, len(clf.classes), in_chans=clf.in_chans)
        model.to(dev, memory_format=torch.channels_last).eval()
        spec = dataclasses.replace(clf.spec, size=a.size or clf.spec.size)
        clf = dataclasses.replace(clf, model=model, arch=a.arch, spec=spec, path=None)
    files = [p for _, p in image_items(a.dataset, split=a.split)][: a.n_images]
    opts = dict(conf=a.det_conf, imgsz=imgsz, max_det=max_det, device=dev, batch=a.batch)

    def detector_only():
        return predict(yolo, files, **opts)

    def cascade():
        return cascade_predict(clf, files, detector=yolo, det_conf=a.det_conf, imgsz=imgsz, max_det=max_det,
                               device=dev, batch=a.batch)

    # warm-up (first calls initialise threads, kernels and caches)
    predict(yolo, files[:2], **opts)
    cascade_predict(clf, files[:2], detector=yolo, det_conf=a.det_conf, imgsz=imgsz, max_det=max_det, device=dev)
    t_det, det = timed(detector_only, a.repeats)
    t_cas, cas = timed(cascade, a.repeats)
    # the classifier's own share: crops + forward passes on the cascade's boxes
    names = [Path(f).stem for f in files]
    pixels = dataset_images(a.dataset, names) if (a.dataset / "meta.csv").is_file() else None
    t_crop, crops = timed(lambda: crop_table(cas, pixels, clf.spec), a.repeats) if pixels else (float("nan"), None)
    t_cls, _ = timed(lambda: clf.predict_proba(crops), a.repeats) if crops is not None else (float("nan"), None)

    n = len(files)
    rows = [
        {"system": "detector-only (baseline)", "seconds": t_det, "ms_per_image": 1000 * t_det / n, "boxes": len(det),
         "ratio": 1.0},
        {"system": "cascade", "seconds": t_cas, "ms_per_image": 1000 * t_cas / n, "boxes": len(cas),
         "ratio": t_cas / t_det},
        {"system": "  of which crops", "seconds": t_crop, "ms_per_image": 1000 * t_crop / n, "boxes": len(cas),
         "ratio": t_crop / t_det},
        {"system": "  of which classifier", "seconds": t_cls, "ms_per_image": 1000 * t_cls / n, "boxes": len(cas),
         "ratio": t_cls / t_det},
    ]
    info = describe_device(dev)
    print(f"device {dev} ({info.get('name')}, torch threads {info.get('threads', '-')}); {n} images of "
          f"{a.dataset} ({a.split}); detector imgsz {imgsz}, conf {a.det_conf}; classifier {clf.arch} "
          f"at {clf.spec.size} px; median of {a.repeats}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    ratio = t_cas / t_det
    print(f"cascade / detector-only = {ratio:.2f} (goal <= 1.25: {'met' if ratio <= 1.25 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
