"""``python -m workbench``: convert, split, audit, export, train, predict, evaluate, notebook, demo, results.

Errors are printed as one clear message (file, object, what is wrong) with exit code 2;
``--strict`` runs that find problems exit 1 and list all of them. Nothing is half-written.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence

from workbench.cli.args import csv_list, mapping, param
from workbench.core.problems import StrictModeError
from workbench.data.exporters import EXPORTERS
from workbench.data.importers import FORMATS


def _ratios(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.replace(",", ":").split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must look like 8:1:1, got {text!r}") from None
    return vals


# ----------------------------------------------------------------------------- commands

def cmd_convert(a: argparse.Namespace) -> int:
    from workbench.core.images import Normalisation
    from workbench.data.importers import convert
    from workbench.data.canonical import load_dataset

    given = {"images": a.images, "class_name": a.class_name, "connectivity": a.connectivity,
             "names": a.names, "image_key": a.image_key, "class_names": a.class_names,
             "instances": mapping(a.instances) if a.instances and "=" in a.instances else a.instances,
             "use_annotation_names": a.use_annotation_names or None,
             "allow_lossy_masks": a.allow_lossy_masks or None}
    unknown = [k for k, v in given.items() if v is not None and k not in FORMATS[a.format].options]
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ValueError(f"{flags} do(es) not apply to --format {a.format}")
    options = {k: v for k, v in given.items() if v is not None}
    norm = Normalisation(a.normalise, a.low, a.high)
    _exit_on_sigterm()
    out = convert(a.src, a.format, a.out, classes=a.classes, normalisation=norm, strict=a.strict,
                  overwrite=a.overwrite, discard_versions=a.discard_versions, command=_command_line(),
                  **options)
    ds = load_dataset(out)
    per_class = ds.objects["class"].value_counts().reindex(ds.classes, fill_value=0)
    print(f"wrote {out}: {len(ds.images)} images, {len(ds.objects)} objects "
          f"({', '.join(f'{c} {n}' for c, n in per_class.items())})")
    if len(ds.problems):
        print(f"{len(ds.problems)} problem(s) recorded in {out / 'problems.csv'}:")
        counts = ds.problems.groupby(["severity", "kind"]).size()
        for (sev, kind), n in counts.items():
            print(f"  {sev:7s} {kind:24s} {n}")
    return 0


def cmd_split(a: argparse.Namespace) -> int:
    from workbench.data.splits import split_dataset

    summary = split_dataset(a.dir, ratios=a.ratios, seed=a.seed, group_by=a.group_by,
                            keep_existing=not a.reassign, exact=a.exact, near_duplicates=a.near_duplicates)
    print(summary.to_string(index=False))
    for note in summary.attrs.get("notes", []):
        print(note)
    return 0


def _exit_on_sigterm() -> None:
    """SIGTERM (kill, a scheduler's timeout) ends the command like Ctrl-C, so the temporary
    output is removed instead of left as a stale ``.partial`` folder."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def cmd_audit(a: argparse.Namespace) -> int:
    from workbench.data.audit import audit_dataset, write_audit

    result = audit_dataset(a.dir, dense_threshold=a.dense_threshold, cluster_ratio=a.cluster_ratio,
                           cluster_min_objects=a.cluster_min_objects, tiny_box_px=a.tiny_box_px,
                           dup_iou=a.dup_iou, near_dup_distance=a.near_dup_distance, reduce=a.reduce,
                           common_class_share=a.common_class_share, workers=a.workers)
    out = write_audit(result, a.out, overwrite=a.overwrite, figures=not a.no_figures, examples=a.examples)
    summary = json.loads((Path(a.out) / "audit.json").read_text())
    print(f"audit of {a.dir}: {summary['images']} images, {summary['objects']} objects, "
          f"{len(summary['problems'])} problem(s) -> {out}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from workbench.data import exporters

    _exit_on_sigterm()
    kwargs: dict = {"overwrite": a.overwrite}
    if a.format == "coco":
        kwargs.update(split=a.split, absolute_paths=a.absolute_paths)
    elif a.split:
        raise ValueError("--split applies to --format coco only (yolo keeps one folder per split)")
    if a.format == "yolo":
        kwargs["split_folders"] = not a.flat
    if a.format == "labelme":
        kwargs["image_data"] = a.image_data
    print(exporters.export(a.dir, a.format, a.out, **kwargs))
    return 0


def cmd_notebook(a: argparse.Namespace) -> int:
    from workbench.studies.notebooks import run_notebook

    params = dict(a.param)
    out = run_notebook(a.name, params, out_dir=a.out)
    print(f"executed {a.name} -> {out}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from workbench.studies.demo import run_demo

    index = run_demo(profile=a.profile, out_dir=a.out)
    print(f"demo done: open {index}")
    return 0


def cmd_results(a: argparse.Namespace) -> int:
    from workbench.studies.results import publish, publish_grid, run_results

    if a.from_grid:  # what `python -m workbench grid` has finished so far, nothing trained here
        for folder in publish_grid(profile=a.profile, only=a.only, device=a.device):
            print(folder)
        return 0
    if a.publish:  # a study that already ran: copy its results folder without running it again
        print(f"published -> {publish(a.publish, a.only[0] if a.only else a.publish.parent.name.split('__')[0])}")
        return 0
    for folder in run_results(profile=a.profile, only=a.only, device=a.device):
        print(folder)
    return 0


def _command_line() -> str:
    return "python -m workbench " + " ".join(shlex.quote(x) for x in sys.argv[1:])


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("convert", help="import raw annotations into a new canonical dataset")
    c.add_argument("src", type=Path, help="source folder (or file for COCO / Label Studio JSON)")
    c.add_argument("--format", required=True, choices=list(FORMATS))
    c.add_argument("--out", required=True, type=Path, help="new dataset folder (must not exist or be empty)")
    c.add_argument("--classes", type=csv_list, help="class list in order, e.g. RBC,WBC,Platelets; "
                   "objects of other classes are reported as unknown_class and skipped")
    c.add_argument("--images", type=Path, help="image folder (COCO, Label Studio)")
    c.add_argument("--names", type=csv_list, help="YOLO without a yaml/classes.txt: class names for ids 0, 1, ...")
    c.add_argument("--image-key", help="Label Studio: the task data field holding the image (default image)")
    c.add_argument("--class-name", help="class for single-class formats (monuseg; default nucleus)")
    c.add_argument("--use-annotation-names", action="store_true", help="monuseg: non-empty Annotation names become classes")
    c.add_argument("--connectivity", type=int, choices=[4, 8], help="masks: pixel connectivity of instances (default 4)")
    c.add_argument("--class-names", type=mapping, help="masks: rename folder classes, e.g. mn=micronucleus")
    c.add_argument("--instances", help="masks: auto (default), colour, component, or per class e.g. mn=component")
    c.add_argument("--normalise", default="percentile", choices=["percentile", "minmax", "shift"],
                   help="how non-8-bit images become 8-bit (recorded per image)")
    c.add_argument("--low", type=float, default=0.5, help="low percentile for --normalise percentile")
    c.add_argument("--high", type=float, default=99.5, help="high percentile for --normalise percentile")
    c.add_argument("--strict", action="store_true", help="any problem: write nothing, list all, exit 1")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    c.add_argument("--discard-versions", action="store_true",
                   help="with --overwrite: also delete a dataset holding label versions/ (corrections)")
    c.add_argument("--allow-lossy-masks", action="store_true",
                   help="masks: import JPEG/WebP masks (refused: compression noise makes spurious instances)")
    c.set_defaults(func=cmd_convert)

    s = sub.add_parser("split", help="assign train/val/test (stable when the library grows or is re-imported)")
    s.add_argument("dir", type=Path)
    s.add_argument("--ratios", type=_ratios, default=(8.0, 1.0, 1.0), help="e.g. 8:1:1 (default), 7:2:1")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--group-by", help="meta column whose groups never straddle splits")
    s.add_argument("--reassign", action="store_true", help="ignore existing assignments (moves images!)")
    s.add_argument("--exact", action="store_true",
                   help="exact counts per split; NOT stable across re-imports (default: each image's split "
                        "follows from its own hash, so a re-import of a grown folder keeps every image's split)")
    s.add_argument("--near-duplicates", type=int, default=None, metavar="BITS",
                   help="also keep near-duplicate images (perceptual hash within BITS, e.g. 6) in one split")
    s.set_defaults(func=cmd_split)

    au = sub.add_parser("audit", help="tables, figures and a problems list for a canonical dataset")
    au.add_argument("dir", type=Path)
    au.add_argument("--out", required=True, type=Path)
    au.add_argument("--dense-threshold", type=int, default=100, help="objects per image above which an image is dense")
    au.add_argument("--cluster-ratio", type=float, default=0.6,
                    help="Clark-Evans ratio below which an image counts as clustered")
    au.add_argument("--cluster-min-objects", type=int, default=10, help="fewer objects: never clustered")
    au.add_argument("--tiny-box-px", type=float, default=3.0, help="boxes with a side below this are reported")
    au.add_argument("--dup-iou", type=float, default=0.9, help="same-class boxes above this IoU are duplicates")
    au.add_argument("--common-class-share", type=float, default=0.9,
                    help="a class boxed in at least this share of the labelled images is flagged where absent "
                         "(absent_common_class: possibly incomplete annotation); 1 flags only classes in every image")
    au.add_argument("--near-dup-distance", type=int, default=6,
                    help="perceptual-hash bits for near-duplicate images (-1: off)")
    au.add_argument("--reduce", type=int, default=2, choices=[1, 2, 4, 8],
                    help="decode images at 1/N size for the quality proxies")
    au.add_argument("--workers", type=int, default=None, help="processes for image checks (default: all cores)")
    au.add_argument("--no-figures", action="store_true")
    au.add_argument("--examples", type=int, default=8, help="example images with boxes in the figure")
    au.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    au.set_defaults(func=cmd_audit)

    e = sub.add_parser("export", help="write a canonical dataset as YOLO, COCO JSON or labelme")
    e.add_argument("dir", type=Path)
    e.add_argument("--format", required=True, choices=list(EXPORTERS))
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--split", help="COCO: only this split")
    e.add_argument("--flat", action="store_true", help="YOLO: one images/ and labels/ folder, no split subfolders")
    e.add_argument("--absolute-paths", action="store_true", help="COCO: absolute image paths in file_name")
    e.add_argument("--image-data", action="store_true", help="labelme: embed the image (base64) in each JSON")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=cmd_export)

    n = sub.add_parser("notebook", help="execute a notebook with papermill into outputs/")
    n.add_argument("name", help="notebook name, e.g. 01_dataset_audit")
    n.add_argument("-p", "--param", action="append", default=[], type=param, help="NAME=VALUE (JSON values allowed)")
    n.add_argument("--out", type=Path, default=None)
    n.set_defaults(func=cmd_notebook)

    d = sub.add_parser("demo", help="run the studies on the vendored data and write an index page")
    d.add_argument("--profile", default="demo", choices=["demo", "smoke", "full"],
                   help="demo (default): the audits and one real model end to end, ~15 min on 2 CPU cores; "
                        "smoke: every study notebook for an epoch or two (proves the pipeline); full: a GPU")
    d.add_argument("--out", type=Path, default=None)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("results", help="run the studies' cpu (or full) profiles and publish outputs/results/ (committed)")
    r.add_argument("--profile", default="cpu", help="the profile every study runs (cpu: 2 CPU cores; full: a GPU)")
    r.add_argument("--only", nargs="+", default=None, metavar="NOTEBOOK", help="notebook names or numbers (e.g. 03)")
    r.add_argument("--device", default=None, help="auto (default), cpu, cuda:0, ...")
    r.add_argument("--publish", type=Path, default=None, metavar="RESULTS_DIR",
                   help="only publish a study's <out_dir>/results folder that already exists")
    r.add_argument("--from-grid", action="store_true",
                   help="publish the finished cells of each study's grid (python -m workbench grid ... --profile P), "
                        "training nothing; a partial grid is labelled partial")
    r.set_defaults(func=cmd_results)

    _add_extensions(sub)
    return p


def _add_extensions(sub: argparse._SubParsersAction) -> None:
    """Subcommands whose modules register themselves (training, evaluation, ...)."""
    from workbench.cli import extensions as cli_extensions

    for register in cli_extensions.REGISTRY:
        register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StrictModeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
