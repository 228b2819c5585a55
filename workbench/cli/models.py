"""CLI subcommands for models: train, predict, tile, evaluate (imported only when the CLI runs)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from workbench.cli.args import csv_list, param


def _train(a: argparse.Namespace) -> int:
    from workbench.models.yolo import train

    overrides = dict(a.set)
    run = train(a.dataset, model=a.model, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, seed=a.seed,
                device=a.device, pretrained=a.pretrained, run_name=a.name or a.resume,
                runs_root=a.runs_root, resume=bool(a.resume), workers=a.workers, max_det=a.max_det,
                **overrides)
    from workbench.models.runs import load_run

    rec = load_run(run)
    last = rec["metrics"].tail(1).to_dict("records")
    print(f"run {run}: status {rec.get('status')}; last epoch {last[0] if last else '-'}")
    return 0


def _predict(a: argparse.Namespace) -> int:
    from workbench.core.tables import write_predictions
    from workbench.inference.predict import predict

    table = predict(a.model, a.source, split=a.split, conf=a.conf, iou=a.iou, imgsz=a.imgsz,
                    device=a.device, max_det=a.max_det, batch=a.batch)
    write_predictions(table, a.out)
    print(f"wrote {a.out}: {len(table)} boxes on {table['image'].nunique()} images")
    return 0


def _tile(a: argparse.Namespace) -> int:
    from workbench.data.tiling import tile_dataset

    out = tile_dataset(a.dataset, a.out, tile=a.tile, overlap=a.overlap, min_visibility=a.min_visibility,
                       keep_empty=not a.drop_empty, overwrite=a.overwrite)
    print(f"wrote tiled dataset {out}")
    return 0


def _evaluate(a: argparse.Namespace) -> int:
    from workbench.evaluation.files import evaluate_files

    extra = None
    if a.positive:
        from workbench.evaluation.clinical import clinical_report

        def extra(gt, pred):
            # the same operating point as P/R/F1: predictions made at conf 0.001 for mAP must not
            # count their low-score boxes as false positives
            return {"clinical": clinical_report(gt.boxes, pred, positive=a.positive, group_by=a.group_by,
                                                meta=gt.meta, n_boot=a.n_boot, seed=a.seed,
                                                score_thr=a.score_thr, iou_thr=a.iou_thr)}
    elif a.group_by:
        raise ValueError("--group-by needs --positive (it groups the clinical rates)")
    out = evaluate_files(a.gt, a.pred, a.out, split=a.split, max_dets=a.max_dets, score_thr=a.score_thr,
                         iou_thr=a.iou_thr, n_boot=a.n_boot, seed=a.seed, extra=extra)
    doc = json.loads((Path(out) / "metrics.json").read_text())
    print(f"mAP50 {doc['map50']}, mAP50-95 {doc['map50_95']} (max_dets {doc['max_dets']}) -> {out}/metrics.json")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a YOLO detector on a canonical dataset (run under outputs/runs/)")
    t.add_argument("dataset", type=Path, help="canonical dataset folder or its dataset.yaml")
    t.add_argument("--model", default="yolov8n.yaml", help="architecture YAML (yolov8n.yaml, yolo11s.yaml, ...) or local .pt")
    t.add_argument("--pretrained", type=Path, help="local weights to initialise the architecture (never downloaded)")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--imgsz", type=int, default=640)
    t.add_argument("--batch", type=int)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    t.add_argument("--workers", type=int)
    t.add_argument("--max-det", type=int)
    t.add_argument("--name", help="run id (default: date_dataset_model_seed)")
    t.add_argument("--runs-root", type=Path)
    t.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run")
    t.add_argument("--set", action="append", default=[], type=param, metavar="KEY=VALUE", help="other ultralytics options, e.g. lr0=0.005")
    t.set_defaults(func=_train)

    p = sub.add_parser("predict", help="predict boxes into a prediction table (CSV/parquet)")
    p.add_argument("model", help="run folder or .pt weights")
    p.add_argument("source", help="canonical dataset, image folder or image file")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--split")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold (use 0.001 for mAP)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU")
    p.add_argument("--imgsz", type=int)
    p.add_argument("--device")
    p.add_argument("--max-det", type=int)
    p.add_argument("--batch", type=int, default=8)
    p.set_defaults(func=_predict)

    ti = sub.add_parser("tile", help="slice a canonical dataset into training tiles")
    ti.add_argument("dataset", type=Path)
    ti.add_argument("--out", required=True, type=Path)
    ti.add_argument("--tile", type=int, default=640)
    ti.add_argument("--overlap", type=float, default=0.2)
    ti.add_argument("--min-visibility", type=float, default=0.5, help="keep a cut box if this share of it is inside")
    ti.add_argument("--drop-empty", action="store_true")
    ti.add_argument("--overwrite", action="store_true")
    ti.set_defaults(func=_tile)

    e = sub.add_parser("evaluate", help="metrics.json (mAP equal to pycocotools), tables and PR figure")
    e.add_argument("--gt", required=True, type=Path, help="canonical dataset folder or COCO JSON")
    e.add_argument("--pred", required=True, type=Path, help="prediction table (CSV/parquet) or COCO results JSON")
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--split", help="evaluate one split of a canonical dataset")
    e.add_argument("--max-dets", type=int, help="detections kept per image and class (default: above the densest image)")
    e.add_argument("--score-thr", type=float, default=0.5,
                   help="operating point (score threshold) for precision/recall/F1, counts, the confusion "
                        "matrix and the clinical rates (mAP uses every score)")
    e.add_argument("--iou-thr", type=float, default=0.5)
    e.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples over images (0: none)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--positive", type=csv_list,
                   help="positive classes: adds clinical rates to metrics.json")
    e.add_argument("--group-by", help="meta column for per-group clinical rates")
    e.set_defaults(func=_evaluate)
