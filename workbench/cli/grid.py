"""CLI subcommands ``grid`` (a study's cells as processes, local or on Ray) and ``cell`` (one of them)."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from workbench.cli.args import pair

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``6h``, ``90m``, ``45s``, ``1d`` or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if m is None or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 6h, 90m, 45s or 3600, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def varied(text: str) -> tuple[str, list]:
    """``seed=0,1`` -> ``("seed", [0, 1])`` (each value read as JSON where it is JSON)."""
    key, values = pair(text)
    out = []
    for v in values.split(","):
        try:
            out.append(json.loads(v))
        except json.JSONDecodeError:
            out.append(v.strip())
    return key, out


def _grid(a: argparse.Namespace) -> int:
    from workbench.studies.base import study_class
    from workbench.studies.grid import run_grid

    study = study_class(a.study)(a.dataset, profile=a.profile, out_dir=a.out, fmt=a.fmt, device=a.device)
    report = run_grid(study, engine=a.engine, address=a.address, vary=dict(a.vary), rerun_failed=a.rerun_failed,
                      rerun=a.rerun,
                      max_parallel=a.max_parallel, gpus_per_cell=a.gpus_per_cell, cpus_per_cell=a.cpus_per_cell,
                      timeout_s=a.timeout, progress=not a.no_progress,
                      write_outputs=not a.no_outputs)
    counts = report.counts()
    print(f"grid {report.grid_dir}: {', '.join(f'{n} {s}' for s, n in counts.items())}; "
          f"wall {report.wall_s:.0f} s; table {report.grid_dir / 'grid.csv'}")
    if report.result is not None and not a.no_outputs:
        print(f"study tables and figures: {study.results_dir}")
    failed = report.failed()
    for _, row in failed.iterrows():
        print(f"  failed {row['folder']}: {row['error']}")
    if len(failed):
        print("re-run them with --rerun-failed")
    return 1 if len(failed) else 0


def _cell(a: argparse.Namespace) -> int:
    from workbench.studies.grid_cells import run_cell_dir

    return run_cell_dir(a.cell_dir)


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("grid", help="run a study's cells as processes, on this machine or a Ray cluster")
    g.add_argument("study", help="notebook name, e.g. 04_model_size")
    g.add_argument("--profile", default="smoke", help="the study's profile (smoke, cpu, full, ...)")
    g.add_argument("--dataset", default=None, help="vendored dataset name or a raw folder (+ --fmt); default: the study's")
    g.add_argument("--fmt", help="format of a raw dataset folder")
    g.add_argument("--device", help="study device: auto (default), cpu, cuda (cells get their GPUs from the engine)")
    g.add_argument("--vary", action="append", default=[], type=varied, metavar="FIELD=V1,V2",
                   help="run every cell once per value of a profile field, e.g. seed=0,1 (repeatable: all combinations)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: processes on this machine (default); ray: Ray tasks (a local instance, or --address)")
    g.add_argument("--address", help="Ray cluster to join: auto (the one started by 'ray start' here) or HOST:PORT")
    g.add_argument("--gpus-per-cell", type=int, help="GPUs each cell gets (default 1 where there are GPUs, else 0)")
    g.add_argument("--cpus-per-cell", type=int, help="CPU threads (and Ray CPUs) per cell")
    g.add_argument("--max-parallel", type=int, help="cells at once (local default: one per GPU, or 1 on CPU)")
    g.add_argument("--rerun-failed", action="store_true", help="run failed cells again (done cells are always kept)")
    g.add_argument("--rerun", action="append", default=[], metavar="CELL",
                   help="run these finished cells again (a key or a pattern such as 'eval*'; repeatable); "
                        "their previous rows stay in the cell's previous/ folder, trained runs are reused")
    g.add_argument("--timeout", type=duration, help="per cell, e.g. 6h: the cell's whole process tree is killed")
    g.add_argument("--out", type=Path, help="study folder (default outputs/notebooks/<study>__<dataset>_<profile>)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-outputs", action="store_true", help="only grid.csv; do not write the study's results/")
    g.set_defaults(func=_grid)

    c = sub.add_parser("cell", help="run one grid cell folder (what the grid engines start)")
    c.add_argument("cell_dir", type=Path)
    c.set_defaults(func=_cell)
