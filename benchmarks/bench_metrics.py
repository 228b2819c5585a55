"""Benchmark workbench.evaluation.metrics.evaluate against pycocotools and faster-coco-eval.

Same inputs for all three: dense MoNuSeg-like tiles (~500 nuclei each, built
from the real MoNuSeg annotations, topped up with flipped boxes of another
tile and replicated to the requested tile count) and sparse BCCD blood smears,
with detector-like predictions (jittered, dropped, duplicated, swapped-class
and random boxes). pycocotools is the baseline: the ratio column is
pycocotools' time divided by the tool's (>1 = faster), and every mAP is shown
with its difference from pycocotools'.

    python benchmarks/bench_metrics.py            # 14 dense tiles + all BCCD
    python benchmarks/bench_metrics.py --quick    # 3 dense tiles + 40 BCCD images
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.evaluation import metrics as M

MONUSEG_DIRS = (
    ROOT / "data/raw/monuseg/MoNuSegTrainingData/Annotations",
    ROOT.parent / "shared/data/monuseg/MoNuSegTrainingData/Annotations",
)
BCCD_DIRS = (
    ROOT / "data/raw/bccd/BCCD/Annotations",
    ROOT.parent / "shared/data/bccd/BCCD/Annotations",
)


def pick_dir(candidates: tuple[Path, ...], given: str | None) -> Path:
    """The given folder, else the candidate with the most XML files."""
    if given:
        return Path(given)
    found = [(len(list(d.glob("*.xml"))), d) for d in candidates if d.is_dir()]
    found = [f for f in found if f[0]]
    if not found:
        raise SystemExit(f"no annotations in any of {[str(c) for c in candidates]}")
    return max(found)[1]


def read_imagescope(path: Path) -> pd.DataFrame:
    rows = []
    for region in ET.parse(path).getroot().iter("Region"):
        xy = np.array([(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")])
        if len(xy):
            rows.append((*xy.min(axis=0), *xy.max(axis=0)))
    return pd.DataFrame(rows, columns=["x1", "y1", "x2", "y2"])


def read_voc(paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        for obj in ET.parse(path).getroot().iter("object"):
            b = obj.find("bndbox")
            rows.append((path.stem, obj.findtext("name").strip(),
                         *(float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))))  # fmt: skip
    return pd.DataFrame(rows, columns=["image", "class", "x1", "y1", "x2", "y2"])


def dense_tiles(folder: Path, n_tiles: int, per_tile: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n_tiles`` tiles of ``per_tile`` real MoNuSeg boxes each.

    Tile i starts from annotation file i (cycling); a tile with fewer boxes
    is topped up with boxes of the next file, flipped in x and y so they land
    elsewhere, and one with more is subsampled.
    """
    files = sorted(folder.glob("*.xml"))
    tiles = [read_imagescope(f) for f in files]
    size = max(max(t.x2.max(), t.y2.max()) for t in tiles)
    out = []
    for i in range(n_tiles):
        base = tiles[i % len(tiles)]
        if len(base) < per_tile:
            donor = tiles[(i + 1) % len(tiles)]
            extra = donor.sample(per_tile - len(base), random_state=i, replace=len(donor) < per_tile - len(base))
            flipped = pd.DataFrame({"x1": size - extra.x2, "y1": size - extra.y2,
                                    "x2": size - extra.x1, "y2": size - extra.y1})  # fmt: skip
            base = pd.concat([base, flipped], ignore_index=True)
        base = base.sample(per_tile, random_state=i) if len(base) > per_tile else base
        out.append(base.assign(image=f"tile{i:02d}", **{"class": "nucleus"}))
    return pd.concat(out, ignore_index=True)[["image", "class", "x1", "y1", "x2", "y2"]]


def predictions(gt: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Detector-like output: jittered boxes, 10% missed, duplicates, class swaps, random boxes."""
    classes = sorted(gt["class"].unique())
    p = gt.loc[rng.random(len(gt)) > 0.10].copy()
    w, h = (p.x2 - p.x1).to_numpy() + 1, (p.y2 - p.y1).to_numpy() + 1
    for c, s in (("x1", w), ("x2", w), ("y1", h), ("y2", h)):
        p[c] = p[c].to_numpy() + rng.normal(0, 0.08 * s)
    p["x1"], p["x2"] = np.minimum(p.x1, p.x2), np.maximum(p.x1, p.x2)
    p["y1"], p["y2"] = np.minimum(p.y1, p.y2), np.maximum(p.y1, p.y2)
    swap = rng.random(len(p)) < 0.05
    p.loc[swap, "class"] = rng.choice(classes, swap.sum())
    p["score"] = rng.beta(5, 2, len(p))
    dup = p.sample(frac=0.10, random_state=1).copy()
    dup[["x1", "x2"]] += rng.normal(0, 2, (len(dup), 1))
    dup["score"] = rng.beta(2, 3, len(dup))
    ext = gt.groupby("image")[["x2", "y2"]].max()
    n = int(0.15 * len(gt))
    img = rng.choice(ext.index.to_numpy(), n)
    bw = rng.choice((gt.x2 - gt.x1).to_numpy(), n) + 1
    bh = rng.choice((gt.y2 - gt.y1).to_numpy(), n) + 1
    x1 = rng.random(n) * ext.loc[img, "x2"].to_numpy()
    y1 = rng.random(n) * ext.loc[img, "y2"].to_numpy()
    rand = pd.DataFrame({"image": img, "class": rng.choice(classes, n), "x1": x1, "y1": y1,
                         "x2": x1 + bw, "y2": y1 + bh, "score": rng.beta(2, 5, n)})  # fmt: skip
    return pd.concat([p, dup, rand], ignore_index=True).sample(frac=1, random_state=2).reset_index(drop=True)


def timed(fn: Callable[..., tuple[float, float]], setup: Callable[[], tuple], repeat: int) -> tuple[float, float, float]:
    """Median wall time of ``fn(*setup())`` (setup not timed) and its (mAP50-95, mAP50)."""
    times, out = [], (float("nan"), float("nan"))
    for _ in range(repeat):
        args = setup()
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), *out


def coco_means(precision: np.ndarray) -> tuple[float, float]:
    # summarize() reports mAP50-95 at maxDets=100 only, so read the array.
    s = precision[:, :, :, 0, -1]
    return float(s[s > -1].mean()), float(s[0][s[0] > -1].mean())


def run_pycocotools(coco_gt: dict, results: list, max_dets: int) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = coco_gt
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(results), "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    return coco_means(ev.eval["precision"])


def run_faster(coco_gt: dict, results: list, max_dets: int) -> tuple[float, float]:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(coco_gt)
        ev = COCOeval_faster(cg, cg.loadRes(results), "bbox", print_function=lambda *a, **k: None)
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    return coco_means(np.asarray(ev.eval["precision"]))


def bench(name: str, gt: pd.DataFrame, pred: pd.DataFrame, repeat: int, skip_pycoco: bool) -> list[dict]:
    max_dets = M.default_max_dets(gt)
    coco_gt = M.gt_to_coco(gt, images=pred["image"].unique())
    results = M.preds_to_coco(pred, coco_gt)
    # The COCO tools start from in-memory COCO dicts (they modify them, so
    # each run gets a fresh, untimed copy); ours starts from the tables.
    coco_inputs = lambda: (copy.deepcopy(coco_gt), copy.deepcopy(results), max_dets)
    table_inputs = lambda: (gt, pred, max_dets)
    runs: list[tuple[str, Callable[..., tuple[float, float]], Callable[[], tuple]]] = []

    def ours(g: pd.DataFrame, p: pd.DataFrame, cap: int) -> tuple[float, float]:
        r = M.evaluate(g, p, max_dets=cap)
        return r.map50_95, r.map50

    def ours_match(g: pd.DataFrame, p: pd.DataFrame, cap: int) -> tuple[float, float]:
        return float(len(M.match(g, p, max_dets=cap))), float("nan")

    if not skip_pycoco:
        runs.append(("pycocotools", run_pycocotools, coco_inputs))
    try:
        import faster_coco_eval

        runs.append((f"faster-coco-eval {faster_coco_eval.__version__}", run_faster, coco_inputs))
    except ImportError:
        print("faster-coco-eval not installed: skipped", file=sys.stderr)
    runs.append(("workbench.evaluation.metrics.evaluate", ours, table_inputs))
    runs.append(("  + match table (IoU 0.5)", ours_match, table_inputs))

    rows = []
    for tool, fn, setup in runs:
        reps = 1 if tool == "pycocotools" else repeat
        t, m, m50 = timed(fn, setup, reps)
        if tool.startswith("  +"):
            m = m50 = float("nan")
        rows.append({"data": name, "tool": tool, "time_s": t, "mAP50-95": m, "mAP50": m50})
    base = next((r for r in rows if r["tool"] == "pycocotools"), None)
    for r in rows:
        r["ratio"] = base["time_s"] / r["time_s"] if base else float("nan")
        r["dmAP"] = abs(r["mAP50-95"] - base["mAP50-95"]) if base else float("nan")
        r["dmAP50"] = abs(r["mAP50"] - base["mAP50"]) if base else float("nan")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 dense tiles and 40 BCCD images")
    ap.add_argument("--tiles", type=int, default=14, help="dense tiles (default 14)")
    ap.add_argument("--per-tile", type=int, default=500, help="GT boxes per dense tile (default 500)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per fast tool, median reported (default 3)")
    ap.add_argument("--skip-pycocotools", action="store_true", help="leave out the slow baseline")
    ap.add_argument("--monuseg-dir", help="MoNuSeg ImageScope XML folder")
    ap.add_argument("--bccd-dir", help="BCCD Pascal VOC XML folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n_tiles = 3 if args.quick else args.tiles
    rng = np.random.default_rng(args.seed)

    dense_gt = dense_tiles(pick_dir(MONUSEG_DIRS, args.monuseg_dir), n_tiles, args.per_tile, rng)
    bccd_files = sorted(pick_dir(BCCD_DIRS, args.bccd_dir).glob("*.xml"))
    bccd_gt = read_voc(bccd_files[:40] if args.quick else bccd_files)
    sets = [
        (f"dense {n_tiles}x{args.per_tile}", dense_gt, predictions(dense_gt, rng)),
        (f"BCCD {bccd_gt.image.nunique()} img", bccd_gt, predictions(bccd_gt, rng)),
    ]
    rows = []
    for name, gt, pred in sets:
        print(f"{name}: {len(gt)} GT, {len(pred)} predictions, max_dets={M.default_max_dets(gt)}", flush=True)
        rows.extend(bench(name, gt, pred, args.repeat, args.skip_pycocotools))
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 160, "display.float_format", "{:.6g}".format):
        print(table.to_string(index=False))
    print("ratio = pycocotools time / tool time; dmAP = |mAP - pycocotools mAP|")


if __name__ == "__main__":
    main()
