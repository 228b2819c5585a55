"""Screenshot of the hard-case viewer on a real image (boxes, text, dock) under outputs/inspect/.

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python benchmarks/screenshot_viewer.py \
        [--dataset bccd|monuseg|mnfinder] [--split val] [--pred PRED.csv | --run RUN] [--out PNG]

Images and GT are the real vendored data. With ``--pred``/``--run`` the predictions are real;
without them they are *simulated* from the GT (15 % of boxes dropped, the rest jittered by
up to 10 % of their size, 10 % given another class, 10 % spurious boxes added) so that every outcome
colour (TP, FN, FP, wrong class) appears: the screenshot then shows how errors look, not
how good any model is. The hardest image of the queue is shown unless ``--image``.
"""
from __future__ import annotations

import argparse
import sys
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


def simulated_predictions(gt: pd.DataFrame, classes: list[str], *, seed: int = 0) -> pd.DataFrame:
    """GT boxes turned into a prediction table with typical detector errors (see module doc)."""
    rng = np.random.default_rng(seed)
    pred = gt[rng.random(len(gt)) > 0.15].copy()
    wh = (pred[["x2", "y2"]].to_numpy() - pred[["x1", "y1"]].to_numpy())
    pred[["x1", "y1", "x2", "y2"]] += rng.uniform(-0.1, 0.1, (len(pred), 4)) * np.tile(wh, 2)
    swap = rng.random(len(pred)) < 0.10
    if len(classes) > 1:
        pred.loc[swap, "class"] = [rng.choice([c for c in classes if c != k]) for k in pred.loc[swap, "class"]]
    extra = gt.sample(frac=0.10, random_state=seed).copy()
    shift = rng.uniform(30, 60, (len(extra), 2)) * rng.choice([-1, 1], (len(extra), 2))
    extra[["x1", "x2"]] += shift[:, [0]]
    extra[["y1", "y2"]] += shift[:, [1]]
    pred = pd.concat([pred, extra], ignore_index=True)
    pred[["x1", "y1", "x2", "y2"]] = pred[["x1", "y1", "x2", "y2"]].clip(lower=0)
    pred = pred[(pred["x2"] > pred["x1"]) & (pred["y2"] > pred["y1"])]
    pred["score"] = rng.uniform(0.3, 1.0, len(pred)).round(3)
    return pred


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="bccd", help="vendored dataset name or a canonical dataset folder")
    ap.add_argument("--split", default=None, help="default: val for bccd, all images otherwise")
    ap.add_argument("--pred", type=Path, help="real prediction table")
    ap.add_argument("--run", type=Path, help="run folder: predict the split with it")
    ap.add_argument("--image", help="image id (default: the hardest)")
    ap.add_argument("--canvas-only", action="store_true", help="only the canvas, without the dock")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    viewer.require_display()
    ds = Path(a.dataset) if Path(a.dataset).is_dir() else prepare(a.dataset)
    split = a.split if a.split is not None else ("val" if a.dataset == "bccd" else None)
    truth = load_ground_truth(ds, split=split)
    if a.pred is not None:
        pred, what = a.pred, f"predictions {a.pred}"
    elif a.run is not None:
        from workbench.inference.predict import predict

        pred, what = predict(a.run, ds, split=split), f"predictions of {a.run}"
    else:
        pred, what = simulated_predictions(truth.boxes, truth.classes), "SIMULATED predictions (GT with errors)"
    queue = hardcases.load_queue(ds, pred, split=split)
    out = a.out or outputs_dir() / "inspect" / f"viewer_{Path(str(a.dataset)).name}.png"
    path = viewer.screenshot(queue, out, image=a.image if a.image is not None else 0, canvas_only=a.canvas_only)
    image = a.image or queue.images[0]
    m = queue.metrics_of(image)
    print(f"{path}: {image} ({ds}, split {split}); {what}; "
          f"GT {m['n_gt']}, predictions {m['n_pred']}, FN {m['fn']}, FP {m['fp']}, wrong class {m['misclassified']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
