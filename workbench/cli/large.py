"""CLI subcommand ``predict-large``: tiled or two-stage prediction over large images."""
from __future__ import annotations

import argparse
from pathlib import Path


def _none_or_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _predict_large(a: argparse.Namespace) -> int:
    from workbench.core.tables import write_predictions

    if a.mode == "tiled":
        from workbench.inference.tiled_inference import TileSettings, predict_large

        s = TileSettings(tile=a.tile, overlap=a.overlap, batch=a.batch, merge=a.merge, merge_metric=a.merge_metric,
                         merge_thr=a.merge_thr, empty_std=a.empty_std)
        table = predict_large(a.model, a.source, settings=s, conf=a.conf, iou=a.iou, device=a.device, split=a.split)
        note = f"{table.attrs.get('tiles', 0)} tiles run, {table.attrs.get('skipped', 0)} skipped as empty"
    else:
        from workbench.inference.twostage import TwoStageSettings, predict_two_stage

        s = TwoStageSettings(coarse_scale=a.coarse_scale, coarse_tile=a.coarse_tile, region_conf=a.region_conf,
                             min_size=a.min_size, max_size=a.max_size, region_nms=a.region_nms, margin=a.margin,
                             region_merge=a.region_merge, canvas=a.tile, gap=a.gap, tile_overlap=a.overlap,
                             min_inside=a.min_inside, batch=a.batch, merge=a.merge, merge_metric=a.merge_metric,
                             merge_thr=a.merge_thr)
        table, info = predict_two_stage(a.model, a.source, settings=s, coarse_model=a.coarse_model, conf=a.conf,
                                        iou=a.iou, device=a.device, split=a.split)
        note = (f"stage 1 {info['stage1_s'].sum():.1f} s, stage 2 {info['stage2_s'].sum():.1f} s, "
                f"{int(info['canvases'].sum())} canvases, mean area share {info['area_share'].mean():.2f}")
    write_predictions(table, a.out)
    print(f"wrote {a.out}: {len(table)} boxes on {table['image'].nunique()} images ({note})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict-large", help="tiled (batched, merged) or two-stage prediction over large images")
    p.add_argument("model", help="run folder or .pt weights (trained on tiles of --tile px)")
    p.add_argument("source", help="canonical dataset, image folder or image file")
    p.add_argument("--out", required=True, type=Path, help="prediction table (.csv or .parquet)")
    p.add_argument("--split")
    p.add_argument("--mode", choices=["tiled", "two-stage"], default="tiled")
    p.add_argument("--tile", type=int, default=640, help="tile (two-stage: canvas) side = the detector's imgsz")
    p.add_argument("--overlap", type=float, default=0.2, help="tile overlap (>= largest cell / tile)")
    p.add_argument("--batch", type=int, default=16, help="tiles or canvases per detector call")
    p.add_argument("--merge", choices=["nms", "nmm"], default="nms",
                   help="cross-tile merge: nms keeps a cell's best view, nmm also completes cut pieces")
    p.add_argument("--merge-metric", choices=["ios", "iou"], default="ios")
    p.add_argument("--merge-thr", type=float, default=0.5)
    p.add_argument("--empty-std", type=float, default=None, help="tiled: skip tiles whose grey std is below this")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold (use 0.001 for mAP)")
    p.add_argument("--iou", type=float, default=0.7, help="detector NMS IoU within a tile")
    p.add_argument("--device")
    g = p.add_argument_group("two-stage")
    g.add_argument("--coarse-model", help="stage-1 run/weights (default: the same model)")
    g.add_argument("--coarse-scale", type=float, default=0.5)
    g.add_argument("--coarse-tile", type=int, default=None, help="stage-1 tile side on the small image (default --tile)")
    g.add_argument("--region-conf", type=float, default=0.1, help="stage-1 score that proposes a region")
    g.add_argument("--min-size", type=float, default=0.0, help="smallest proposal (longer side, px)")
    g.add_argument("--max-size", type=float, default=None, help="largest proposal (longer side, px)")
    g.add_argument("--region-nms", type=float, default=0.7, help="IoU for suppressing duplicate proposals")
    g.add_argument("--margin", type=float, default=16.0, help="px added around each proposal")
    g.add_argument("--region-merge", type=_none_or_float, default=0.0, help="IoS at which regions merge (none: never)")
    g.add_argument("--gap", type=int, default=8, help="px between packed crops")
    g.add_argument("--min-inside", type=float, default=0.5, help="drop canvas boxes less inside one crop")
    p.set_defaults(func=_predict_large)
