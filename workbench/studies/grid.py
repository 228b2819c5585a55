"""Study grids: a study's cells run as separate processes (on this machine or a Ray cluster),
each idempotent, its result gathered into ``grid.csv`` as soon as it finishes.

``python -m workbench grid 04_model_size --profile cpu --vary seed=0,1`` is
:func:`run_grid`; notebooks keep running the same cells in-process (:meth:`Study.run`) or read
a grid that already ran (:meth:`Study.result_from_grid`, :func:`grid_result`). A grid folder::

    grid.json   what was asked: the study, its arguments, the varied profile fields, the cells
    grid.csv    one row per cell: config and varied fields, state, metrics, duration, host, GPU ids
    rows.csv    every result row of the finished cells (what the study's tables are built from)
    cells/      one folder per cell (see :mod:`workbench.studies.grid_cells`)

Re-running skips finished cells (same key: same config, data, versions), leaves failed ones
alone unless ``rerun_failed``, and never runs a cell another live driver holds the lock of.
``rerun=["eval*"]`` runs the finished cells whose key matches a pattern again (e.g. to time them
on idle cores): their rows and status move to ``previous/<end time>/`` in the cell folder, so
nothing is lost, and a cell that reuses trained runs does not train again.
``grid.csv`` is rewritten atomically after every cell, so a driver that crashes loses nothing.
Variants: ``vary={"seed": [0, 1]}`` runs every cell once per value of a profile field; each
variant but the profile's own has its own work folder (``work/variants/<field>-<value>``).
"""
from __future__ import annotations

import fnmatch
import itertools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import pandas as pd

from workbench.core.atomic import write_text
from workbench.core.tables import utc_now
from workbench.studies.base import Cell, Study, StudyResult, Log, slug, study_class
from workbench.studies.grid_cells import (
    LOG_FILE, ROWS_FILE, STATUS_FILE, GridCell, acquire_lock, cell_folder, cell_key, is_done, lock_holder, override_profile, prepare_folder,
    read_json, read_rows, read_status, release_lock, write_json, write_status)
from workbench.studies.grid_engines import Engine, make_engine

GRID_FILE, TABLE_FILE, ROWS_TABLE = "grid.json", "grid.csv", "rows.csv"
PREVIOUS_DIR = "previous"  # in a cell folder: the results of earlier runs of a re-run cell


@dataclass
class GridReport:
    """What a grid run did: the folder, ``grid.csv``, the study's result (None if no cell finished)."""

    grid_dir: Path
    table: pd.DataFrame
    result: StudyResult | None
    wall_s: float
    ran: list[str] = field(default_factory=list)  # cells run by this driver (folder names)

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.table["state"].value_counts().items()} if len(self.table) else {}

    def failed(self) -> pd.DataFrame:
        """The rows of ``grid.csv`` whose cell failed (with the error)."""
        return self.table[self.table["state"] == "failed"] if len(self.table) else self.table


# ----------------------------------------------------------------------------- plan

def variants(vary: Mapping[str, Sequence[Any]] | None) -> list[dict[str, Any]]:
    """Every combination of the varied profile fields (``{}`` alone when nothing varies)."""
    vary = {k: list(v) for k, v in (vary or {}).items()}
    empty = [k for k, v in vary.items() if not v]
    if empty:
        raise ValueError(f"no values to vary for {empty}")
    return [dict(zip(vary, combo)) for combo in itertools.product(*vary.values())]


def variant_study(study: Study, values: Mapping[str, Any]) -> tuple[Study, dict[str, Any]]:
    """The study with profile fields set to ``values``, and the overrides that differ from its
    profile (none: the study itself, its own work folder)."""
    changed = {k: v for k, v in override_profile(study.profile, values).to_dict().items()
               if k in values and v != study.profile.to_dict().get(k)}
    if not changed:
        return study, {}
    tag = "_".join(f"{slug(k)}-{slug(str(v))}" for k, v in sorted(changed.items()))
    args = {**study.study_args(), "profile": override_profile(study.profile, changed),
            "work_dir": study.work_dir / "variants" / tag}
    return type(study)(**args, log=study.log), changed


def dataset_identity(study: Study) -> dict[str, Any]:
    """The study's dataset and its fingerprint (prepared first; None for studies with fixed data)."""
    if study.default_dataset is None and study.dataset == "None":
        return {"dataset": None}
    from workbench.data import datasets
    from workbench.models.runs import dataset_fingerprint

    return {"dataset": study.dataset, "fingerprint": dataset_fingerprint(datasets.prepare(study.dataset, fmt=study.fmt))}


def plan_grid(study: Study, grid_dir: str | Path | None = None, *,
              vary: Mapping[str, Sequence[Any]] | None = None) -> list[GridCell]:
    """Prepare every variant of ``study`` once (here, so parallel cells never build one dataset
    together) and describe its cells, each with its key and folder, in dependency order."""
    from workbench.models.runs import package_versions

    if len(variants(vary)) > 1 and not study.varies:
        raise ValueError(f"{study.name}: --vary is not supported (its tables pool the rows of all cells, so "
                         f"several runs would be scored as one); run one value per grid folder instead, e.g. "
                         f"--vary seed=1 --out DIR")
    grid_dir = Path(grid_dir) if grid_dir else study.grid_dir
    data, versions = dataset_identity(study), package_versions()
    planned: list[GridCell] = []
    for values in variants(vary):
        s, overrides = variant_study(study, values)
        s.prepare()
        resolved = {k: getattr(s.profile, k) for k in values}
        for c in s.cells():
            doc = c.to_dict()
            args = {**s.study_args(), "profile": study.profile.name}
            key = cell_key(doc, profile=s.profile.to_dict(), study_args=args, dataset=data, versions=versions)
            planned.append(GridCell(doc, key, cell_folder(grid_dir / "cells", doc, key), type(study).__module__,
                                    args, overrides, resolved))
    return planned


def levels(cells: Sequence[GridCell]) -> list[list[GridCell]]:
    """Cells grouped so every cell comes after the cells it needs (same variant); one level runs in parallel."""
    depth: dict[GridCell, int] = {}
    by_key = {(tuple(sorted(gc.overrides.items())), gc.cell_key): gc for gc in cells}
    for gc in cells:  # cells() lists needed cells first
        needs = [by_key.get((tuple(sorted(gc.overrides.items())), k)) for k in gc.cell.get("needs", ())]
        depth[gc] = 1 + max((depth.get(n, 0) for n in needs if n is not None), default=-1)
    return [[gc for gc in cells if depth[gc] == d] for d in range(max(depth.values(), default=-1) + 1)]


def cells_to_rerun(cells: Sequence[GridCell], patterns: Sequence[str]) -> list[GridCell]:
    """The finished cells whose key matches one of ``patterns`` (shell-style, e.g. ``lv_*_s1``).
    A pattern that matches no cell of the grid is an error naming the keys there are."""
    chosen = []
    for pattern in patterns:
        hits = [gc for gc in cells if fnmatch.fnmatchcase(gc.cell_key, pattern)]
        if not hits:
            keys = sorted({gc.cell_key for gc in cells})
            raise ValueError(f"--rerun {pattern!r} matches no cell of this grid; its cells: {', '.join(keys)}")
        chosen += [gc for gc in hits if gc not in chosen and is_done(gc.dir)]
    return chosen


def set_aside(gc: GridCell) -> Path:
    """Move a finished cell's rows and status to ``previous/<end time>/`` and mark it pending, so
    the grid runs it again; refused while another live driver holds its lock."""
    if not acquire_lock(gc.dir):
        raise RuntimeError(f"{gc.dir}: locked by {lock_holder(gc.dir)} (another driver runs it); not re-run")
    try:
        status = read_status(gc.dir)
        stamp = slug(str(status.get("end") or utc_now()))
        dest = gc.dir / PREVIOUS_DIR / stamp
        dest.mkdir(parents=True, exist_ok=True)
        for name in (ROWS_FILE, STATUS_FILE, LOG_FILE):
            if (gc.dir / name).exists():
                shutil.copy2(gc.dir / name, dest / name)  # copy, then change: a crash here loses nothing
        write_status(gc.dir, state="pending", start=None, end=None, error=None)
        (gc.dir / ROWS_FILE).unlink(missing_ok=True)
        return dest
    finally:
        release_lock(gc.dir)


# ----------------------------------------------------------------------------- run

def run_grid(study: Study, *, engine: str | Engine = "local", grid_dir: str | Path | None = None,
             vary: Mapping[str, Sequence[Any]] | None = None, rerun_failed: bool = False,
             rerun: Sequence[str] = (), address: str | None = None, max_parallel: int | None = None, gpus_per_cell: int | None = None,
             cpus_per_cell: int | None = None, timeout_s: float | None = None, progress: bool = True,
             write_outputs: bool = True) -> GridReport:
    """Run every cell of ``study`` that is not done yet, as processes on ``engine`` (``local``,
    ``ray`` or an :class:`~workbench.studies.grid_engines.Engine`), then build the study's
    tables and figures from all finished cells and (``write_outputs``) write them to its
    ``results/`` folder. See the module docstring for skipping, locks and variants."""
    t0 = time.perf_counter()
    grid_dir = Path(grid_dir) if grid_dir else study.grid_dir
    eng = engine if not isinstance(engine, str) else make_engine(
        engine, address=address, max_parallel=max_parallel, gpus_per_cell=gpus_per_cell,
        cpus_per_cell=cpus_per_cell, timeout_s=timeout_s)
    cells = plan_grid(study, grid_dir, vary=vary)
    for gc in cells:
        prepare_folder(gc)
    for gc in cells_to_rerun(cells, rerun):
        set_aside(gc)
        study.log(f"[grid] {gc.name}: run again (--rerun); its previous result is in {gc.dir / PREVIOUS_DIR}")
    write_json(grid_dir / GRID_FILE, {"study": study.name, "module": type(study).__module__,
                                      "study_args": study.study_args() | {"profile": study.profile.name},
                                      "vary": {k: list(v) for k, v in (vary or {}).items()},
                                      "engine": eng.name, "started": utc_now(), "cells": [gc.name for gc in cells]})
    driver = _Driver(cells, grid_dir, rerun_failed=rerun_failed, log=study.log, progress=progress, engine=eng.name)
    try:
        if getattr(eng, "follows_needs", False):
            # one queue in the study's order: a cell starts as soon as the cells it needs are done,
            # so a headline cell that needs a pretraining run does not wait for every independent cell
            eng.run(cells, start=driver.start, finish=driver.finish, ready=driver.readiness)
        else:  # level by level: every cell of a level runs after the whole level before it
            for level in levels(cells):
                todo = [gc for gc in level if driver.wants(gc)]
                if todo:
                    eng.run(todo, start=driver.start, finish=driver.finish)
    finally:
        driver.close()
    table = gather(cells)
    result = None
    if len(table) and (table["state"] == "done").any():
        write_text(grid_dir / ROWS_TABLE, gathered_rows(cells).to_csv(index=False))
        result = grid_study_result(study, cells)
        result.settings["grid"] = {"dir": str(grid_dir), "engine": eng.name, "vary": dict(vary or {}),
                                   "cells": len(cells), "states": table["state"].value_counts().to_dict()}
        if write_outputs:
            study.write_outputs(result)
    study.log(f"[grid] {study.name}: {driver.summary()} in {time.perf_counter() - t0:.0f} s -> {grid_dir}")
    return GridReport(grid_dir, table, result, time.perf_counter() - t0, driver.ran)


class _Driver:
    """The driver's side of each cell: skip or lock it, record its outcome, rewrite ``grid.csv``."""

    def __init__(self, cells: Sequence[GridCell], grid_dir: Path, *, rerun_failed: bool, log: Log,
                 progress: bool, engine: str) -> None:
        self.cells, self.grid_dir, self.rerun_failed, self.log = list(cells), grid_dir, rerun_failed, log
        self.engine, self.ran = engine, []
        self.by_id = {self._id(gc, gc.cell_key): gc for gc in self.cells}  # (variant, study key) -> cell
        settled = sum(is_done(gc.dir) or (not rerun_failed and read_status(gc.dir).get("state") == "failed")
                      for gc in self.cells)
        self.bar = _progress(len(self.cells), settled, progress, engine)

    def wants(self, gc: GridCell) -> bool:
        """Run ``gc`` now? (:meth:`readiness` with nothing queued in this driver.)"""
        return self.readiness(gc, ()) == "run"

    def readiness(self, gc: GridCell, active: Collection[GridCell]) -> str:
        """``run``, ``wait`` or ``skip``. Skip a cell that is done, failed (unless rerun_failed), or
        needs a cell that failed (it fails too) or that is unfinished and not ``active`` (queued or
        running in this driver: another driver may hold it, so it stays pending); wait while a
        cell it needs is active."""
        if is_done(gc.dir) or (read_status(gc.dir).get("state") == "failed" and not self.rerun_failed):
            return "skip"
        needs = [self.by_id[key] for k in gc.cell.get("needs", ()) if (key := self._id(gc, k)) in self.by_id]
        unfinished = [n for n in needs if not is_done(n.dir)]
        if any(n in active for n in unfinished):
            return "wait"
        failed = [n.cell_key for n in unfinished if read_status(n.dir).get("state") == "failed"]
        if failed:
            write_status(gc.dir, state="failed", error=f"needs {failed}, which did not finish", end=utc_now())
            self._update(1)
            return "skip"
        if unfinished:
            self.log(f"[grid] {gc.name}: waits for {[n.cell_key for n in unfinished]}, not finished here "
                     "(locked by another driver?)")
            return "skip"
        return "run"

    @staticmethod
    def _id(gc: GridCell, key: str) -> tuple:
        return tuple(sorted(gc.overrides.items())), key

    def start(self, gc: GridCell, info: dict[str, Any]) -> bool:
        if not acquire_lock(gc.dir):
            self.log(f"[grid] {gc.name}: skipped, locked by {lock_holder(gc.dir)} (another driver runs it)")
            return False
        if is_done(gc.dir):  # finished by another driver since this one planned
            release_lock(gc.dir)
            return False
        # "pending" while queued on Ray (the cell process says "running" when it starts)
        write_status(gc.dir, state=info.get("state", "running"), host=info.get("host"), gpus=info.get("gpus", ""),
                     start=utc_now(), end=None, error=None, engine=self.engine)
        self.ran.append(gc.name)
        self._update(0)
        return True

    def finish(self, gc: GridCell, outcome: Mapping[str, Any]) -> None:
        status = {k: v for k, v in (outcome.get("status") or {}).items() if k != "state"}
        try:
            if outcome.get("log_tail") and not (gc.dir / LOG_FILE).exists():  # ran on a node without this folder
                write_text(gc.dir / LOG_FILE, outcome["log_tail"])
            if outcome["state"] == "done":
                write_json(gc.dir / ROWS_FILE, outcome["rows"])  # rows first: done means rows exist
                write_status(gc.dir, **status, state="done")
            else:
                write_status(gc.dir, **{**status, "state": "failed", "error": outcome.get("error"),
                                        "end": status.get("end") or utc_now()})
                self.log(f"[grid] {gc.name} failed: {outcome.get('error')}")
        finally:
            release_lock(gc.dir)
            self._update(1)

    def _update(self, advance: int) -> None:
        write_text(self.grid_dir / TABLE_FILE, gather(self.cells).to_csv(index=False))
        if self.bar is not None:
            states = [read_status(gc.dir).get("state") for gc in self.cells]
            self.bar.set_postfix(done=states.count("done"), running=states.count("running"),
                                 failed=states.count("failed"), refresh=False)
            self.bar.update(advance)

    def summary(self) -> str:
        states = pd.Series([read_status(gc.dir).get("state", "pending") for gc in self.cells])
        return ", ".join(f"{n} {s}" for s, n in states.value_counts().items()) + f" ({len(self.ran)} run now)"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(total: int, done: int, enabled: bool, engine: str):
    """A tqdm bar (a widget in notebooks): cells done of all, with done/running/failed and ETA."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=f"grid ({engine})", unit="cell", dynamic_ncols=True)


# ----------------------------------------------------------------------------- gather

def gather(cells: Sequence[GridCell]) -> pd.DataFrame:
    """``grid.csv``: one row per cell. Config and varied fields, state, host, GPU ids, times and
    error from ``status.json``, the time of earlier runs set aside by ``--rerun``, and the cell's
    metrics (numeric means when it returned several rows)."""
    out = []
    for gc in cells:
        status, rows = read_status(gc.dir), read_rows(gc.dir) if is_done(gc.dir) else None
        row: dict[str, Any] = {"study": gc.cell["study"], "cell": gc.cell_key, "folder": gc.name, **gc.vary,
                               **{k: v for k, v in gc.cell.get("config", {}).items() if k not in gc.vary}}
        row.update({"state": status.get("state", "pending"), "host": status.get("host"), "gpus": status.get("gpus"),
                    "start": status.get("start"), "end": status.get("end"), "duration_s": status.get("duration_s"),
                    "attempts": status.get("attempts"), "error": status.get("error"), "key": gc.key,
                    "earlier_runs_s": earlier_runs_s(gc.dir)})
        if rows:
            frame = pd.DataFrame(rows)
            values = frame.iloc[0].to_dict() if len(frame) == 1 else frame.mean(numeric_only=True).to_dict()
            row.update({k: v for k, v in values.items() if k not in row})
            row["n_rows"] = len(frame)
        out.append(row)
    return pd.DataFrame(out)


def earlier_runs_s(cell_dir: Path) -> float:
    """Summed run time of a cell's earlier runs, set aside by ``--rerun`` in ``previous/``: a re-run
    that reuses the trained model takes a minute, but the profile's cost includes the first run."""
    runs = [read_status(d) for d in sorted((cell_dir / PREVIOUS_DIR).glob("*")) if d.is_dir()]
    return float(sum(r.get("duration_s") or 0.0 for r in runs))


def gathered_rows(cells: Sequence[GridCell]) -> pd.DataFrame:
    """Every result row of the finished cells, as :meth:`Study.run` gathers them (``cell`` first),
    with the varied profile fields as columns."""
    rows = [{"cell": gc.cell_key, **gc.vary, **r} for gc in cells if is_done(gc.dir) for r in read_rows(gc.dir)]
    return pd.DataFrame(rows)


def grid_study_result(study: Study, cells: Sequence[GridCell]) -> StudyResult:
    """The study's tables and figures from the finished cells (:meth:`Study.result` on their rows)."""
    rows = gathered_rows(cells)
    done = [Cell.from_dict(gc.cell) for gc in cells if is_done(gc.dir)]
    result = study.result(rows, done)
    varied: dict[str, list] = {}
    for gc in cells:
        for k, v in gc.vary.items():
            varied.setdefault(k, []).extend([] if v in varied.get(k, []) else [v])
    if varied:  # the study's captions name its profile's value; the rows hold every variant's
        note = " Grid: " + "; ".join(f"{k} = {', '.join(map(str, v))}" for k, v in varied.items()) + " (column per field)."
        result.captions = {name: text + note for name, text in result.captions.items()}
    return result


def grid_cells(grid_dir: str | Path) -> list[GridCell]:
    """The cells of a grid folder, read back from ``grid.json`` and each ``cell.json``."""
    grid_dir = Path(grid_dir)
    doc = read_json(grid_dir / GRID_FILE)
    if doc is None:
        raise FileNotFoundError(f"{grid_dir}: no {GRID_FILE} (not a grid folder; run 'python -m workbench grid' first)")
    out = []
    for name in doc["cells"]:
        c = read_json(grid_dir / "cells" / name / "cell.json")
        if c is not None:
            out.append(GridCell(c["cell"], c["key"], grid_dir / "cells" / name, c["module"], c["study_args"],
                                c.get("overrides", {}), c.get("vary", {})))
    return out


def read_grid(grid_dir: str | Path) -> pd.DataFrame:
    """``grid.csv`` of a grid folder, recomputed from the cell folders (current even mid-run)."""
    return gather(grid_cells(grid_dir))


def grid_result(grid_dir: str | Path, *, log: Log = print) -> StudyResult:
    """The study's result from a grid that already ran, rebuilding the study from ``grid.json``."""
    import importlib

    doc = read_json(Path(grid_dir) / GRID_FILE)
    if doc is None:
        raise FileNotFoundError(f"{grid_dir}: no {GRID_FILE} (not a grid folder)")
    importlib.import_module(doc["module"])
    study = study_class(doc["study"])(**doc["study_args"], log=log)
    study.prepare()
    return grid_study_result(study, grid_cells(grid_dir))
