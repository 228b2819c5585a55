"""Benchmark the dataset audit on a 10,000-image library built from real BCCD data.

The library replicates the canonical BCCD dataset (292 real 640x480 JPEGs, 3943 boxes)
under new image ids until it holds ``--n`` images: images are hard links (symlinks where
hard links are impossible), label files and meta rows are real copies. Every replica is
an exact duplicate of its source image, so the leakage step also sees ~170k duplicate
pairs at n=10,000 (a stress case, not a typical library).

Measured in one run, each against a named baseline:

* label parsing: the audit's reader (plain Python + numpy) vs ``pandas.read_csv`` per file;
* image checks: the audit's reduced-resolution OpenCV decode + proxies in a process pool
  vs PIL full-resolution decode + the same proxies in numpy, one process (on a subset), with
  the audit's own check at full resolution in one process in between (separates the gain of
  OpenCV ops, of reduced decoding and of the pool);
* the whole audit (``audit_dataset``) and writing its tables and figures (``write_audit``).

    python benchmarks/bench_audit.py                 # n = 10,000
    python benchmarks/bench_audit.py --n 2000 --workers 2
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.data.audit import audit_dataset, check_images, read_labels, write_audit
from workbench.data.canonical import read_classes, read_meta, save_meta
from workbench.core.paths import outputs_dir
from workbench.core.problems import ProblemLog


def source_dataset(given: str | None) -> Path:
    if given:
        return Path(given)
    from workbench.data.datasets import prepare

    return prepare("bccd")  # converted once into data/generated/bccd, then reused


def build_library(src: Path, dest: Path, n: int) -> Path:
    """``n`` images: replicas of ``src`` under new ids (hard-linked images, copied labels)."""
    meta = read_meta(src)
    classes = read_classes(src)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    rows = []
    for k in range(math.ceil(n / len(meta))):
        for r in meta.to_dict(orient="records"):
            if len(rows) == n:
                break
            new_id = f"{r['image_id']}__r{k:03d}"
            suffix = Path(r["file"]).suffix
            target = dest / "images" / f"{new_id}{suffix}"
            try:
                os.link(src / r["file"], target)
            except OSError:
                target.symlink_to((src / r["file"]).resolve())
            if r["label_file"]:
                shutil.copyfile(src / r["label_file"], dest / "labels" / f"{new_id}.txt")
                r["label_file"] = f"labels/{new_id}.txt"
            rows.append(r | {"image_id": new_id, "file": f"images/{new_id}{suffix}"})
    lib = pd.DataFrame(rows, columns=meta.columns)
    shutil.copyfile(src / "dataset.json", dest / "dataset.json")
    (dest / "problems.csv").write_text("file,object,kind,detail,action,severity\n")
    save_meta(dest, lib, classes)
    return dest


def pandas_labels(root: Path, meta: pd.DataFrame) -> int:
    """Baseline: one ``pandas.read_csv`` per label file."""
    boxes = 0
    for lf in meta["label_file"]:
        path = root / lf
        if path.stat().st_size == 0:
            continue
        df = pd.read_csv(path, sep=r"\s+", header=None, names=["cls", "cx", "cy", "w", "h"])
        boxes += len(df)
    return boxes


def pil_full_resolution(paths: list[Path]) -> None:
    """Baseline: PIL decode at full resolution + the same proxies in numpy, one process."""
    import cv2
    from PIL import Image

    for p in paths:
        with Image.open(p) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"))
        grey = np.asarray(Image.fromarray(arr).convert("L"), dtype=np.float32)
        _ = grey.mean(), grey.std(), cv2.Laplacian(grey, cv2.CV_32F).var()
        _ = (arr.max(axis=2).astype(np.int16) - arr.min(axis=2)).mean()


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="images in the library (default 10000)")
    ap.add_argument("--workers", type=int, default=None, help="image-check processes (default: all cores)")
    ap.add_argument("--baseline-images", type=int, default=500,
                    help="images decoded by the PIL full-resolution baseline (a subset; default 500)")
    ap.add_argument("--source", help="canonical dataset to replicate (default: vendored BCCD)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default outputs/bench/audit)")
    ap.add_argument("--no-figures", action="store_true", help="time write_audit without figures")
    a = ap.parse_args(argv)
    if a.n < 1:
        ap.error("--n must be >= 1")
    work = a.out or outputs_dir() / "bench" / "audit"
    workers = a.workers or os.cpu_count() or 1

    src = source_dataset(a.source)
    lib, t_build = timed(build_library, src, work / f"library_{a.n}", a.n)
    meta = read_meta(lib)
    classes = read_classes(lib)
    print(f"library: {len(meta)} images (replicas of {src}), built in {t_build:.1f} s; "
          f"{os.cpu_count()} CPU cores, workers={workers}")

    rows = []
    (objects, _), t_ours = timed(read_labels, lib, meta, classes, ProblemLog())
    n_boxes, t_pandas = timed(pandas_labels, lib, meta)
    assert n_boxes == len(objects), (n_boxes, len(objects))
    rows += [("label parsing", "pandas.read_csv per file (baseline)", len(meta), t_pandas, 1.0),
             ("label parsing", "audit.read_labels", len(meta), t_ours, t_pandas / t_ours)]

    paths = [lib / f for f in meta["file"]]
    sub = paths[: min(a.baseline_images, len(paths))]
    _, t_pil = timed(pil_full_resolution, sub)
    pil_rate = len(sub) / t_pil
    _, t_full = timed(check_images, sub, reduce=1, workers=1)
    checks, t_img = timed(check_images, paths, reduce=2, workers=workers)
    assert all(c["readable"] for c in checks)
    rows += [("image checks", f"PIL full-res, 1 process (baseline, {len(sub)} images)", len(sub), t_pil, 1.0),
             ("image checks", f"audit.check_images reduce=1, 1 process ({len(sub)} images)", len(sub), t_full,
              (len(sub) / t_full) / pil_rate),
             ("image checks", f"audit.check_images reduce=2, {workers} workers", len(paths), t_img,
              (len(paths) / t_img) / pil_rate)]

    result, t_audit = timed(audit_dataset, lib, workers=workers)
    _, t_write = timed(write_audit, result, work / f"audit_{a.n}", overwrite=True, figures=not a.no_figures)
    est_naive = len(meta) / pil_rate + t_pandas
    rows += [("whole audit", "naive estimate: PIL full-res + pandas labels (baseline)", len(meta), est_naive, 1.0),
             ("whole audit", "audit_dataset", len(meta), t_audit, est_naive / t_audit),
             ("write", "write_audit (tables" + ("" if a.no_figures else " + PNG/PDF figures") + ")",
              len(meta), t_write, float("nan"))]

    table = pd.DataFrame(rows, columns=["step", "method", "items", "seconds", "speed-up vs baseline"])
    table["items/s"] = table["items"] / table["seconds"]
    table = table[["step", "method", "items", "seconds", "items/s", "speed-up vs baseline"]]
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    print(f"audit steps (s): {json.dumps({k: round(v, 2) for k, v in result.timings.items()})}; "
          f"{len(result.objects)} boxes, {len(result.duplicates)} duplicate pairs, "
          f"{len(result.problems)} problems")
    goals = {"label files/s >= 1000": len(meta) / t_ours >= 1000, "whole audit < 60 s": t_audit < 60}
    print("goals: " + ", ".join(f"{k}: {'met' if ok else 'NOT met'}" for k, ok in goals.items()))
    (work / f"bench_audit_{a.n}.json").write_text(json.dumps({
        "n": len(meta), "cores": os.cpu_count(), "workers": workers,
        "rows": table.to_dict(orient="records"), "audit_timings": result.timings, "goals": goals}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
