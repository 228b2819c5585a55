"""How responsive is the hard-case viewer on dense images? (MoNuSeg H&E tiles, 300-470 nuclei each)

Run under a display (napari cannot render offscreen)::

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python benchmarks/bench_viewer.py [--full] [--repeats 3]

Images and GT boxes are real (the vendored MoNuSeg tiles; ``--full``: the 13 tiles of
../shared/data). The predictions are the GT boxes perturbed (10 % dropped, the rest shifted
by up to 3 px, 15 % spurious boxes added): what costs time is the number of boxes shown, and
this gives each tile about twice its GT count (600-900 boxes in two layers) with every
outcome colour present.

Timed (seconds; "python" = our calls returning, "draw" = the Qt event loop drawing the
result, total = both):

* baseline: one ``add_rectangles`` call per box into the two layers (the naive loop);
* build, batched: both layers made with one call each (stock napari ``Shapes`` with text on
  every box; the workbench's ``BoxShapes`` with text on every box; ``BoxShapes`` with
  ``text="auto"``, the default: text on error boxes only above 150 boxes);
* switch: moving to the next image of the queue (``Inspector.show``: image, both box layers
  and the dock updated in place).

Medians over images (and ``--repeats``). Under xvfb the drawing is software OpenGL, so the
"draw" column is an upper bound of what a GPU desktop shows.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.inspection import hardcases
from workbench.inspection import viewer
from workbench.data.datasets import prepare
from workbench.evaluation.files import load_ground_truth
from workbench.core.paths import outputs_dir


def perturbed_predictions(gt: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """GT boxes made into a prediction table: drop 10 %, jitter <= 3 px, add 15 % spurious."""
    rng = np.random.default_rng(seed)
    keep = gt[rng.random(len(gt)) > 0.10].copy()
    keep[["x1", "y1", "x2", "y2"]] += rng.uniform(-3, 3, (len(keep), 4))
    xy = keep[["x1", "y1", "x2", "y2"]].to_numpy()  # small nuclei: keep corners in order
    keep[["x1", "y1"]] = np.minimum(xy[:, :2], xy[:, 2:])
    keep[["x2", "y2"]] = np.maximum(xy[:, :2], xy[:, 2:]) + 0.5
    parts = [keep]
    for image, g in gt.groupby("image"):
        n = max(1, int(0.15 * len(g)))
        xy = rng.uniform(0, 960, (n, 2))
        wh = rng.uniform(10, 30, (n, 2))
        parts.append(pd.DataFrame({"image": image, "class": g["class"].iloc[0], "x1": xy[:, 0], "y1": xy[:, 1],
                                   "x2": xy[:, 0] + wh[:, 0], "y2": xy[:, 1] + wh[:, 1]}))
    pred = pd.concat(parts, ignore_index=True)
    pred[["x1", "y1"]] = pred[["x1", "y1"]].clip(lower=0)
    pred["score"] = rng.uniform(0.3, 1.0, len(pred))
    return pred


def _flush() -> float:
    from qtpy.QtWidgets import QApplication

    t = time.perf_counter()
    QApplication.processEvents()
    return time.perf_counter() - t


def _timed(fn) -> tuple[float, float]:
    t = time.perf_counter()
    fn()
    py = time.perf_counter() - t
    return py, _flush()


def bench(dataset: Path, *, repeats: int, baseline_images: int) -> pd.DataFrame:
    napari = viewer.import_napari()
    from napari.layers import Shapes

    truth = load_ground_truth(dataset)
    pred = perturbed_predictions(truth.boxes)
    queue = hardcases.load_queue(dataset, pred, score_thr=0.0)
    rows = []

    def record(method: str, image: str, n: int, py: float, draw: float) -> None:
        rows.append({"method": method, "image": image, "boxes": n, "python_s": py, "draw_s": draw,
                     "total_s": py + draw})

    def fresh_viewer(arr):
        # a new viewer per measurement: removing layers next to an image crashed napari 0.9
        # under Mesa's software OpenGL, and a fresh viewer also keeps the runs independent
        v = napari.Viewer(show=True)
        v.window.resize(1280, 960)
        v.add_image(arr, rgb=arr.ndim == 3)
        _flush()
        return v

    counts = {i: len(queue.gt_boxes(i)) + len(queue.pred_boxes(i)) for i in queue.images}
    median = float(np.median(list(counts.values())))
    typical = sorted(counts, key=lambda i: (abs(counts[i] - median), i))  # the per-box loop is slow:
    for image in typical[:baseline_images]:  # time it on the images closest to the median size
        gt, pr = queue.gt_boxes(image), queue.pred_boxes(image)
        arr = viewer.read_display_image(queue.refs[image])
        w = viewer.edge_width_for(arr.shape)
        v = fresh_viewer(arr)

        def per_box():
            for boxes in (pr, gt):
                style = viewer.box_layer_style(boxes, text="all")
                layer = v.add_shapes(None, shape_type="rectangle", face_color="transparent", edge_width=w)
                for k in range(len(boxes)):
                    layer.add_rectangles(style["data"][k:k + 1], edge_color=style["edge_color"][k])

        record("baseline: one add_rectangles call per box", image, len(gt) + len(pr), *_timed(per_box))
        v.close()

    for _ in range(repeats):
        for image in queue.images:
            gt, pr = queue.gt_boxes(image), queue.pred_boxes(image)
            arr = viewer.read_display_image(queue.refs[image])
            w = viewer.edge_width_for(arr.shape)
            for method, text, stock in [("build, batched: stock napari Shapes, text on all", "all", True),
                                        ("build, batched: BoxShapes, text on all", "all", False),
                                        ("build, batched: BoxShapes, text auto (default)", "auto", False)]:
                v = fresh_viewer(arr)

                def build():
                    for name, boxes in (("predictions", pr), ("labels", gt)):
                        if stock:
                            style = viewer.box_layer_style(boxes, text=text)
                            v.add_layer(Shapes(list(style["data"]), shape_type="rectangle",
                                               features=style["features"], edge_color=style["edge_color"],
                                               face_color="transparent", edge_width=w,
                                               text={"string": "{text}", "size": 8,
                                                     "color": {"feature": "text_colour"}}))
                        else:
                            v.add_layer(viewer.new_box_layer(boxes, name=name, edge_width=w, text=text))

                record(method, image, len(gt) + len(pr), *_timed(build))
                v.close()

    ins = viewer.Inspector(queue, show=True)
    ins.viewer.window.resize(1280, 960)
    _flush()
    for _ in range(repeats):
        for _k in range(len(queue)):
            target = (ins.index + 1) % len(queue)
            image = queue.images[target]
            n = len(queue.gt_boxes(image)) + len(queue.pred_boxes(image))
            record("switch image in the queue (layers updated in place)", image, n,
                   *_timed(lambda: ins.show(target)))
    ins.close()
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Medians per method; the speed-up compares time per box (the baseline runs on fewer images)."""
    runs = runs.assign(ms_per_box=1000 * runs["total_s"] / runs["boxes"])
    out = (runs.groupby("method", sort=False)
           .agg(images=("image", "nunique"), runs=("image", "size"), boxes=("boxes", "median"),
                python_s=("python_s", "median"), draw_s=("draw_s", "median"), total_s=("total_s", "median"),
                ms_per_box=("ms_per_box", "median"))
           .reset_index())
    base = out.loc[out["method"].str.startswith("baseline"), "ms_per_box"].iloc[0]
    out["speed-up vs baseline (per box)"] = base / out["ms_per_box"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the 13 MoNuSeg tiles of ../shared/data")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--baseline-images", type=int, default=1,
                    help="images (closest to the median box count) timed with the slow per-box loop")
    ap.add_argument("--out", type=Path, default=outputs_dir() / "bench" / "viewer.csv")
    ap.add_argument("--summarise", type=Path, metavar="CSV", help="only print the table of an earlier run")
    a = ap.parse_args(argv)
    if a.summarise is not None:
        _print(summarise(pd.read_csv(a.summarise)), f"runs from {a.summarise}")
        return 0
    viewer.require_display()
    dataset = prepare("monuseg", full=a.full)
    runs = bench(dataset, repeats=a.repeats, baseline_images=a.baseline_images)
    table = summarise(runs)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    runs.to_csv(a.out, index=False)
    _print(table, f"MoNuSeg tiles from {dataset} (GT real, predictions perturbed GT); medians; "
                  f"DISPLAY={os.environ.get('DISPLAY')}")
    print(f"all runs: {a.out}")
    return 0


def _print(table: pd.DataFrame, title: str) -> None:
    with pd.option_context("display.width", 220, "display.max_colwidth", 60, "display.precision", 3):
        print(title)
        print(table.to_string(index=False))


if __name__ == "__main__":
    raise SystemExit(main())
