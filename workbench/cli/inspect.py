"""CLI ``inspect``: open the hard-case queue of a run (or a prediction table) in napari.

    python -m workbench inspect RUN_OR_PRED --gt DATASET [--split val] [--pred PRED.csv]

``RUN_OR_PRED`` is a run folder (its detector predicts ``--split`` of ``--gt``, the table is
saved under ``outputs/inspect/`` for reuse with ``--pred``) or a prediction table
(CSV/parquet, or a COCO results JSON). ``--screenshot PNG`` renders one image and exits.
Needs a display (napari cannot render offscreen): without one it predicts and ranks the
images, then stops with what to do.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas only for the annotation: the CLI prints its help without importing it
    import pandas as pd


def _predictions(a: argparse.Namespace) -> Path:
    """The prediction table to inspect: --pred, RUN_OR_PRED as a table, or predicted by the run."""
    if a.pred is not None:
        return a.pred
    src = a.run_or_pred
    if src.is_file():
        return src
    if not (src / "run.json").is_file():
        raise FileNotFoundError(f"{src}: neither a prediction table nor a run folder (no run.json)")
    from workbench.core.paths import outputs_dir
    from workbench.core.tables import write_predictions
    from workbench.inference.predict import image_items, predict

    table = predict(src, a.gt, split=a.split, conf=a.conf, device=a.device)
    out = outputs_dir() / "inspect" / f"{src.resolve().name}__{a.gt.resolve().name}_{a.split or 'all'}.csv"
    write_predictions(table, out)
    print(prediction_line(table, len(image_items(a.gt, split=a.split)), conf=a.conf, out=out))
    return out


def prediction_line(table: pd.DataFrame, n_images: int, *, conf: float, out: Path) -> str:
    """What was predicted: boxes, images predicted (an image without a box has no row in
    ``table``), images with boxes, the score threshold and where the table went."""
    with_boxes = table["image"].nunique()
    return (f"predicted {len(table)} boxes (score >= {conf:g}) on {n_images} images, {with_boxes} of them "
            f"with boxes -> {out} (reuse with --pred)")


def _inspect(a: argparse.Namespace) -> int:
    from workbench.inspection.hardcases import load_queue
    from workbench.inspection.viewer import NoDisplayError, require_display

    # predict and queue first (no display needed): the table is saved for --pred either way
    pred = _predictions(a)
    queue = load_queue(a.gt, pred, split=a.split, version=a.version, iou_thr=a.iou_thr, score_thr=a.score_thr)
    errors = int((queue.summary["errors"] > 0).sum())
    print(f"{len(queue)} images, {errors} with errors; labels {queue.source.get('version')}; "
          f"hardest: {', '.join(queue.images[:3])}")
    try:
        require_display()
    except NoDisplayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from workbench.inspection import viewer

    start = a.image if a.image is not None else 0
    if a.screenshot is not None:
        path = viewer.screenshot(queue, a.screenshot, image=start, text=a.text)
        print(f"wrote {path}")
        return 0
    inspector = viewer.open_queue(queue, start=start, text=a.text)
    import napari

    napari.run()
    if inspector.pending:
        print(f"closed with unsaved edits on {len(inspector.pending)} image(s) (not written)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="browse hard cases (FN, FP, wrong class) in napari; correct labels "
                                       "into a new label version")
    p.add_argument("run_or_pred", type=Path, metavar="RUN_OR_PRED",
                   help="run folder (predicts --split of --gt) or prediction table (CSV/parquet/COCO JSON)")
    p.add_argument("--gt", required=True, type=Path, help="canonical dataset folder (or COCO JSON: view only)")
    p.add_argument("--split", help="inspect one split (e.g. val)")
    p.add_argument("--pred", type=Path, help="prediction table to use instead of predicting with the run")
    p.add_argument("--version", default="latest",
                   help="label version used as GT: latest (default), v0000 (canonical labels) or vNNNN")
    p.add_argument("--score-thr", type=float, default=0.25, help="predictions below are not shown or counted")
    p.add_argument("--iou-thr", type=float, default=0.5, help="IoU for a match (as in evaluate)")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold when predicting with a run")
    p.add_argument("--device", help="device when predicting with a run")
    p.add_argument("--image", help="image id to open first (default: the hardest)")
    p.add_argument("--text", choices=["auto", "all", "errors", "none"], default="auto",
                   help="box text: auto = all up to 150 boxes, else errors only")
    p.add_argument("--screenshot", type=Path, metavar="PNG", help="write a screenshot of one image and exit")
    p.set_defaults(func=_inspect)
