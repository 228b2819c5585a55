"""CLI: ``cascade train | tune | predict | errors | crops`` (detector -> crop classifier).

Registered by :mod:`workbench.cli.extensions`; errors surface as ``ValueError`` /
``FileNotFoundError`` and are printed by :func:`workbench.cli.main.main` as one line, exit 2.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from workbench.cli.args import csv_list


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _spec(a: argparse.Namespace):
    from workbench.models.crops import CropSpec

    return CropSpec(size=a.size, pad=a.pad, resize=a.resize, fill=a.fill, box_mask=a.box_mask)


def _train(a: argparse.Namespace) -> int:
    from workbench.models.classifier import train_classifier
    from workbench.models.runs import read_run_record

    run = train_classifier(a.dataset, arch=a.arch, classes=a.classes, crop=_spec(a), balance=a.balance,
                           negative=a.negative, ratio=a.ratio, epochs=a.epochs, patience=a.patience,
                           batch=a.batch, lr=a.lr, weight_decay=a.weight_decay, augment=not a.no_augment,
                           monitor=a.monitor, seed=a.seed, device=a.device, pretrained=a.pretrained,
                           run_name=a.name, runs_root=a.runs_root)
    rec = read_run_record(run)
    best = rec.get("best_metrics", {})
    print(f"classifier run {run}: best epoch {rec.get('best_epoch')} of {rec.get('epochs_completed')}, "
          f"val accuracy {best.get('val_accuracy', float('nan')):.3f}, "
          f"balanced accuracy {best.get('val_balanced_accuracy', float('nan')):.3f}; "
          f"balance {rec['balance']['mode']} {rec['balance']['counts_after']}")
    if a.detector is not None:
        if a.no_tune:
            from workbench.inference.cascade import write_cascade

            path = write_cascade(run, detector=a.detector, det_conf=a.det_conf, cls_thr=a.cls_thr)
            print(f"froze det_conf {a.det_conf}, cls_thr {a.cls_thr} in {path}")
        else:
            _print_tuned(*_tune_run(run, a))
    return 0


def _tune_run(run: Path, a: argparse.Namespace):
    from workbench.inference.cascade import tune_thresholds

    return tune_thresholds(run, a.tune_on or a.dataset, detector=a.detector, split=a.split,
                           objective=a.objective, det_grid=a.det_grid, cls_grid=a.cls_grid,
                           device=a.device)


def _print_tuned(chosen: dict, grid) -> None:
    print(f"tuned on {chosen['tuned_on']['dataset']} ({chosen['tuned_on']['split']}): det_conf "
          f"{chosen['det_conf']}, cls_thr {chosen['cls_thr']} ({chosen['objective']} {chosen['value']:.4f}); "
          "frozen in cascade.json")


def _tune(a: argparse.Namespace) -> int:
    from workbench.inference.cascade import tune_thresholds

    chosen, grid = tune_thresholds(a.classifier, a.dataset, detector=a.detector, split=a.split,
                                   objective=a.objective, det_grid=a.det_grid, cls_grid=a.cls_grid,
                                   device=a.device)
    _print_tuned(chosen, grid)
    return 0


def _predict(a: argparse.Namespace) -> int:
    from workbench.inference.cascade import cascade_predict
    from workbench.core.tables import write_predictions

    tiles = None
    if a.tile is not None:
        from workbench.inference.tiled_inference import TileSettings

        tiles = TileSettings(tile=a.tile, overlap=a.overlap, batch=a.batch, merge=a.merge,
                             merge_metric=a.merge_metric, merge_thr=a.merge_thr)
    table = cascade_predict(a.classifier, str(a.source), detector=a.detector, split=a.split, det_conf=a.det_conf,
                            cls_thr=a.cls_thr, device=a.device, iou=a.iou, imgsz=a.imgsz, batch=a.batch,
                            cls_batch=a.cls_batch, tiles=tiles)
    write_predictions(table, a.out)
    if a.detector_out is not None:
        from workbench.inference.cascade import detector_only

        write_predictions(detector_only(table), a.detector_out)
    print(f"wrote {a.out}: {len(table)} boxes on {table['image'].nunique()} images "
          f"(det_conf {table.attrs['det_conf']}, cls_thr {table.attrs['cls_thr']}; "
          f"classifier changed {int(table['changed'].sum())} labels)")
    return 0


def _errors(a: argparse.Namespace) -> int:
    from workbench.core.atomic import new_folder
    from workbench.inference.cascade import attribute_errors
    from workbench.evaluation.files import load_ground_truth, load_predictions

    gt = load_ground_truth(a.gt, split=a.split)
    pred = load_predictions(a.pred, gt)
    table, summary = attribute_errors(gt.boxes, pred, iou_thr=a.iou_thr, images=gt.images)
    with new_folder(a.out, overwrite=a.overwrite) as tmp:
        table.to_csv(tmp / "errors.csv", index=False)
        summary.to_csv(tmp / "error_summary.csv", index=False)
    print(summary.to_string(index=False))
    print(f"-> {a.out}/errors.csv, {a.out}/error_summary.csv")
    return 0


def _crops(a: argparse.Namespace) -> int:
    from workbench.models.crops import export_crops, gt_crops

    crops = gt_crops(a.dataset, _spec(a), split=a.split, classes=a.classes)
    out = export_crops(crops, a.out, overwrite=a.overwrite)
    counts = crops.table["class"].value_counts().to_dict()
    print(f"wrote {len(crops.table)} crops to {out} ({json.dumps(counts)})")
    return 0


def _crop_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=64, help="crop side in pixels (default 64)")
    p.add_argument("--pad", type=float, default=0.15, help="context around the box, fraction of its size per side")
    p.add_argument("--resize", default="letterbox", choices=["letterbox", "square", "stretch"],
                   help="letterbox: keep aspect, bars of --fill; square: square window of real context; stretch")
    p.add_argument("--fill", type=int, default=0, help="value outside the image / letterbox bars (0-255)")
    p.add_argument("--box-mask", action="store_true", help="add a channel marking the box inside the crop")


def _tune_options(p: argparse.ArgumentParser, *, default_split: str = "val") -> None:
    p.add_argument("--split", default=default_split, help="labelled split to tune on (default val)")
    p.add_argument("--objective", default="f1", choices=["f1", "macro_f1", "correct_rate"])
    p.add_argument("--det-grid", type=_floats, default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                   help="detector confidences to try, e.g. 0.3,0.5,0.7")
    p.add_argument("--cls-grid", type=_floats, default=[0.0, 0.3, 0.5, 0.7, 0.9],
                   help="classifier probabilities to try (below: keep the detector's class)")


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cascade", help="detector + crop classifier: train, tune, predict, errors, crops")
    cs = c.add_subparsers(dest="cascade_command", required=True, metavar="STEP")

    t = cs.add_parser("train", help="train the crop classifier on GT boxes (run under outputs/runs/)")
    t.add_argument("dataset", type=Path, help="canonical dataset with train and val splits")
    t.add_argument("--arch", default="resnet34", help="any timm architecture (resnet18, efficientnet_b0, ...)")
    t.add_argument("--pretrained", type=Path, help="local weights file for --arch (never downloaded)")
    t.add_argument("--classes", type=csv_list, help="classes to learn, e.g. RBC,WBC,Platelets (default all)")
    _crop_options(t)
    t.add_argument("--balance", default="equal", choices=["equal", "ratio", "weights", "none"],
                   help="equal: as many normal as positive cells, drawn at random (published); "
                        "ratio: --ratio normal per positive; weights: inverse-frequency loss weights")
    t.add_argument("--negative", type=csv_list, help="normal class(es) (default: the most frequent class)")
    t.add_argument("--ratio", type=float, default=1.0)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--patience", type=int, default=5, help="epochs without val improvement before stopping")
    t.add_argument("--monitor", default="val_balanced_accuracy",
                   choices=["val_balanced_accuracy", "val_accuracy", "val_loss"])
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--no-augment", action="store_true", help="no random flips/90-degree turns")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    t.add_argument("--name", help="run id (default: date_dataset_cls-arch_seed)")
    t.add_argument("--runs-root", type=Path)
    t.add_argument("--detector", help="detector run or .pt: tune thresholds on --split and freeze cascade.json")
    t.add_argument("--tune-on", type=Path, help="dataset to tune on (default: the training dataset)")
    t.add_argument("--no-tune", action="store_true", help="freeze --det-conf/--cls-thr without tuning")
    t.add_argument("--det-conf", type=float, default=0.5, help="with --no-tune (published default 0.5)")
    t.add_argument("--cls-thr", type=float, default=0.0, help="with --no-tune")
    _tune_options(t)
    t.set_defaults(func=_train)

    u = cs.add_parser("tune", help="tune det_conf / cls_thr on a labelled split; freeze them in cascade.json")
    u.add_argument("classifier", type=Path, help="classifier run folder")
    u.add_argument("dataset", type=Path, help="canonical dataset with the labelled split")
    u.add_argument("--detector", help="detector run or .pt (default: the one in cascade.json)")
    u.add_argument("--device")
    _tune_options(u)
    u.set_defaults(func=_tune)

    p = cs.add_parser("predict", help="detector + classifier over images -> prediction table")
    p.add_argument("classifier", type=Path, help="classifier run folder (reads its cascade.json)")
    p.add_argument("source", help="canonical dataset, image folder or image file")
    p.add_argument("--out", required=True, type=Path, help="prediction table (.csv or .parquet)")
    p.add_argument("--detector", help="detector run or .pt (default: from cascade.json)")
    p.add_argument("--split")
    p.add_argument("--det-conf", type=float, help="detector confidence (default: cascade.json, else 0.5)")
    p.add_argument("--cls-thr", type=float, help="classifier probability below which the detector's class is kept")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU")
    p.add_argument("--imgsz", type=int)
    p.add_argument("--batch", type=int, default=8, help="images (with --tile: tiles) per detector call")
    p.add_argument("--cls-batch", type=int, default=256, help="crops per classifier batch")
    p.add_argument("--device")
    p.add_argument("--detector-out", type=Path, help="also write the detector-only table (same boxes)")
    t = p.add_argument_group("large images (tiled detection, merged before classification)")
    t.add_argument("--tile", type=int, help="detect on tiles of this side (the detector's training patch size)")
    t.add_argument("--overlap", type=float, default=0.2, help="tile overlap (>= largest cell / tile)")
    t.add_argument("--merge", choices=["nms", "nmm"], default="nms", help="cross-tile merge")
    t.add_argument("--merge-metric", choices=["ios", "iou"], default="ios")
    t.add_argument("--merge-thr", type=float, default=0.5)
    p.set_defaults(func=_predict)

    e = cs.add_parser("errors", help="which stage errs: missed / misclassified / spurious cells")
    e.add_argument("--gt", required=True, type=Path, help="canonical dataset folder or COCO JSON")
    e.add_argument("--pred", required=True, type=Path, help="cascade (or detector) prediction table")
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--split")
    e.add_argument("--iou-thr", type=float, default=0.5)
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=_errors)

    x = cs.add_parser("crops", help="export GT crops in class folders (to inspect what the classifier sees)")
    x.add_argument("dataset", type=Path)
    x.add_argument("--out", required=True, type=Path)
    x.add_argument("--split")
    x.add_argument("--classes", type=csv_list)
    x.add_argument("--overwrite", action="store_true")
    _crop_options(x)
    x.set_defaults(func=_crops)
