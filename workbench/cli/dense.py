"""CLI subcommands ``train-dense`` and ``predict-dense``: the per-pixel micronucleus / nucleus detector."""
from __future__ import annotations

import argparse
from pathlib import Path

from workbench.cli.args import param


def _train_dense(a: argparse.Namespace) -> int:
    from workbench.inference.dense import tune_thresholds
    from workbench.models.dense import DenseConfig, train_dense

    given = {k: v for k, v in {"encoder": a.encoder, "epochs": a.epochs, "crop": a.crop, "batch": a.batch,
                               "crops_per_epoch": a.crops_per_epoch, "lr": a.lr, "seed": a.seed}.items()
             if v is not None}
    cfg = DenseConfig.from_dict({**DenseConfig().to_dict(), **given, **dict(a.set)})
    run = train_dense(a.dataset, config=cfg, device=a.device, train_split=a.train_split,
                      run_name=a.name or a.resume, runs_root=a.runs_root, resume=bool(a.resume),
                      pretrained=a.pretrained)
    if not a.no_tune:
        th = tune_thresholds(run, device=a.device, min_precision=a.min_precision)
        print(f"thresholds tuned on the validation images: {th}")
    print(f"run {run}")
    return 0


def _predict_dense(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from workbench.core.tables import write_predictions
    from workbench.inference.dense import predict_dense, read_thresholds

    th, doc = read_thresholds(a.run)
    overrides = {k: v for k, v in {"mn_prob": a.mn_prob, "mn_min_size": a.mn_min_size,
                                   "nucleus_prob": a.nucleus_prob}.items() if v is not None}
    table = predict_dense(a.run, a.source, split=a.split, device=a.device, thresholds=replace(th, **overrides))
    write_predictions(table, a.out)
    source = "tuned (thresholds.json)" if doc.get("tuned") else "defaults (run not tuned)"
    print(f"wrote {a.out}: {len(table)} boxes on {table['image'].nunique()} images; thresholds {source}"
          + (f", overridden: {overrides}" if overrides else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train-dense", help="train the dense (U-Net, per-pixel) micronucleus / nucleus detector")
    t.add_argument("dataset", type=Path, help="canonical dataset folder (objects.csv polygons or boxes)")
    t.add_argument("--encoder", help="smp encoder, 'tu-<timm name>' for any timm model (default tu-resnet18)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--crop", type=int, help="training crop side, px (default 128)")
    t.add_argument("--batch", type=int)
    t.add_argument("--crops-per-epoch", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--set", action="append", default=[], type=param, metavar="KEY=VALUE",
                   help="any other DenseConfig setting, e.g. encoder_depth=4 or decoder_channels=[128,64,32,16]")
    t.add_argument("--train-split", default="train", help="the only split read; validation = whole sets of it")
    t.add_argument("--pretrained", type=Path, help="local weights to start from (never downloaded)")
    t.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    t.add_argument("--name", help="run id (default: date_dataset_model_seed)")
    t.add_argument("--runs-root", type=Path)
    t.add_argument("--resume", metavar="RUN_ID", help="continue an interrupted run from weights/last.pt")
    t.add_argument("--no-tune", action="store_true", help="skip tuning the thresholds on the validation images")
    t.add_argument("--min-precision", type=float, default=0.8,
                   help="tuning: most MN recall at this validation precision (else best F1)")
    t.set_defaults(func=_train_dense)

    p = sub.add_parser("predict-dense", help="predict boxes with a dense run into a prediction table")
    p.add_argument("run", type=Path, help="dense run folder")
    p.add_argument("source", help="canonical dataset, image folder or image file (16-bit: the run's normalisation)")
    p.add_argument("--out", required=True, type=Path, help="prediction table (.csv or .parquet)")
    p.add_argument("--split")
    p.add_argument("--device")
    p.add_argument("--mn-prob", type=float, help="override the tuned MN probability threshold")
    p.add_argument("--mn-min-size", type=int, help="override the tuned smallest MN (px)")
    p.add_argument("--nucleus-prob", type=float, help="override the tuned nucleus probability threshold")
    p.set_defaults(func=_predict_dense)
