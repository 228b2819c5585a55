"""CLI subcommand ``library``: style levels, composed training libraries, adding batches.

    python -m workbench library levels DIR --out levels.csv [--from-csv F | --column sharpness --k 3]
    python -m workbench library compose DIR --out LIB --n 100 --ratios 6:2:2 --levels 0-2 \\
        --positive-class mn --min-positive 0.2 [--downscale 2] [--seed 0] [--fill]
    python -m workbench library add LIB --name batch1 --dataset DIR2 --out LIB2 [--weight 2] [--meta date=2026-03]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from workbench.cli.args import csv_list, pair


def _levels_arg(text: str) -> list[int]:
    """``0-2`` -> [0, 1, 2]; ``0,1,3`` -> [0, 1, 3]."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def _levels(a: argparse.Namespace, images):
    from workbench.data.library.style_levels import LevelRule, derive_levels, levels_from_csv

    if a.from_csv:
        return levels_from_csv(a.from_csv, images["image_id"].tolist())
    return derive_levels(images, LevelRule("quantile", a.column, k=a.k, best=a.best))


def _cmd_levels(a: argparse.Namespace) -> int:
    from workbench.core.atomic import write_text
    from workbench.data.library.style_levels import measure

    images = measure(a.dataset)
    lv = _levels(a, images)
    write_text(a.out, lv.table.to_csv(index=False))
    write_text(Path(a.out).with_suffix(".rule.json"), json.dumps(lv.rule.to_dict(), indent=2) + "\n")
    print(f"wrote {a.out}: { {int(k): int(v) for k, v in lv.counts().items()} } images per level; {lv.rule.describe()}")
    return 0


def _cmd_compose(a: argparse.Namespace) -> int:
    from workbench.data.canonical import load_dataset
    from workbench.data.library.composition import compose, parse_ratios, training_length
    from workbench.data.library.builder import Batch, write_library
    from workbench.data.library.style_levels import LEVEL, crowding_groups, crowding_text, measure

    images = measure(a.dataset)
    lv = _levels(a, images)
    train = images["split"].astype(str).isin(["train", ""])
    group, rule = crowding_groups(images, fit=train)
    objs = load_dataset(a.dataset).objects
    positive = set(objs.loc[objs["class"].isin(a.positive_class or []), "image_id"].astype(str))
    table = images.assign(**{LEVEL: lv.table[LEVEL].to_numpy(), "group": group.to_numpy(),
                             "positive": images["image_id"].isin(positive).to_numpy()})
    groups = csv_list(a.groups)
    comp = compose(table[train], n=a.n, ratios=parse_ratios(a.ratios, groups), by="group",
                   min_positive=a.min_positive, levels=_levels_arg(a.levels) if a.levels else None,
                   fill=a.fill, seed=a.seed)
    held = table.loc[~train, "image_id"].tolist()
    image_meta = table[["image_id", LEVEL, "positive"]].assign(density_class=table["group"])
    length = training_length(len(comp.selected), batch=a.batch, factor=a.factor)
    write_library(Batch("base", Path(a.dataset), tuple(comp.selected["image_id"])), [], a.out,
                  held_out=[Batch("held_out", Path(a.dataset), tuple(held))] if held else [],
                  image_meta=image_meta, downscale=a.downscale, overwrite=a.overwrite,
                  note={"composition": comp.settings, "report": comp.report.to_dict(orient="records"),
                        "warnings": comp.warnings, "levels_rule": lv.rule.to_dict(), "groups_rule": crowding_text(rule),
                        "training_length": length.to_dict()})
    print(comp.report.to_string(index=False))
    for w in comp.warnings:
        print(f"WARNING: {w}")
    print(f"levels: {lv.rule.describe()}\ngroups: {crowding_text(rule)}")
    print(f"rule of thumb: {length.iterations} iterations = {length.epochs} epochs at batch {a.batch}")
    print(f"wrote {a.out}: {len(comp.selected)} training images, {len(held)} held out")
    return 0


def _cmd_add(a: argparse.Namespace) -> int:
    from workbench.data.canonical import read_meta
    from workbench.data.library.builder import Batch, add_batch

    ids = None
    if a.ids:
        ids = tuple(line.strip() for line in Path(a.ids).read_text(encoding="utf-8").splitlines() if line.strip())
    meta = dict(a.meta or [])
    add_batch(a.library, Batch(a.name, Path(a.dataset), ids, meta, a.weight, a.split), a.out, overwrite=a.overwrite)
    m = read_meta(a.out)
    print(f"wrote {a.out}: { {str(k): int(v) for k, v in m['batch'].value_counts().sort_index().items()} } images per batch")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("library", help="style levels, composed training libraries, adding batches")
    s = p.add_subparsers(dest="library_cmd", required=True)

    def level_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--from-csv", type=Path, help="user table: image_id, style_level (else derived)")
        q.add_argument("--column", default="sharpness", help="audit measurement the levels are derived from")
        q.add_argument("--k", type=int, default=3, help="number of derived levels (quantile bins)")
        q.add_argument("--best", choices=["high", "low"], default="high", help="which end of --column is level 0")

    lv = s.add_parser("levels", help="style level per image (user CSV or derived) + the rule")
    lv.add_argument("dataset", type=Path)
    lv.add_argument("--out", type=Path, required=True)
    level_args(lv)
    lv.set_defaults(func=_cmd_levels)

    c = s.add_parser("compose", help="a library composed by ratios from a dataset's training images")
    c.add_argument("dataset", type=Path)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--n", type=int, required=True, help="training images wanted")
    c.add_argument("--ratios", default="6:2:2")
    c.add_argument("--groups", default="good,dense,sparse", help="groups the ratios refer to (crowding tertiles)")
    c.add_argument("--levels", help="levels to draw from, e.g. 0-2 or 0,1,3")
    c.add_argument("--positive-class", action="append", help="an image with this class is positive (repeatable)")
    c.add_argument("--min-positive", type=float, default=0.0, help="minimum share of positive images, e.g. 0.2")
    c.add_argument("--fill", action="store_true", help="fill a short group's shortfall from the others")
    c.add_argument("--downscale", type=int, default=1, choices=[1, 2, 4])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch", type=int, default=16, help="training batch for the rule-of-thumb epochs")
    c.add_argument("--factor", type=float, default=2.0, help="iterations = factor x images")
    c.add_argument("--overwrite", action="store_true")
    level_args(c)
    c.set_defaults(func=_cmd_compose)

    ad = s.add_parser("add", help="a new library = LIBRARY + one batch (the old one is kept)")
    ad.add_argument("library", type=Path)
    ad.add_argument("--name", required=True)
    ad.add_argument("--dataset", type=Path, required=True, help="canonical dataset holding the batch's images")
    ad.add_argument("--ids", type=Path, help="file with one image id per line (default: all images)")
    ad.add_argument("--weight", type=int, default=1, help="repeat factor of its training images")
    ad.add_argument("--split", choices=["train", "val", "test"], help="force its images into this split")
    ad.add_argument("--meta", action="append", type=pair, help="key=value (date, centre, dose_group, style_level, ...)")
    ad.add_argument("--out", type=Path, required=True)
    ad.add_argument("--overwrite", action="store_true")
    ad.set_defaults(func=_cmd_add)
