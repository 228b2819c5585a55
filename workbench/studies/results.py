"""Committed study results: ``python -m workbench results --profile cpu`` (``make results``).

Runs each study notebook's profile with papermill, then *publishes* what it wrote into
``outputs/results/<notebook>/`` (the one part of ``outputs/`` that is committed): the figures as
small PNG + PDF with their captions, the CSV tables, ``study.json``, a ``summary.csv`` (the
study's ``summary`` table, else its first headline table, else its first) and a ``README.md``
with the headline tables and the provenance (commit, dataset fingerprints, seeds, profile, wall
time, device). Never weights.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from workbench.core.atomic import new_folder, write_text
from workbench.core.paths import PROJECT_ROOT, outputs_dir
from workbench.core.tables import utc_now
from workbench.studies.base import STUDY_FILE, Study, study_class

RESULTS_DIR_NAME = "results"
MAX_TABLE_BYTES = 2_000_000  # larger CSVs (e.g. every predicted box) stay in outputs/notebooks, not in git
PNG_DPI = 110  # committed PNGs are for reading on GitHub; the PDF keeps the vector figure


@dataclass(frozen=True)
class ResultJob:
    """One notebook run for the committed results."""

    notebook: str
    params: dict[str, Any] = field(default_factory=dict)  # notebook parameters besides the profile
    # profile fields run once per value (e.g. training seeds): the job runs as a grid with --vary
    vary: dict[str, tuple[Any, ...]] = field(default_factory=dict)


# The studies whose cpu profile answers its question on 2 CPU cores, in the order they run.
RESULT_JOBS = (
    ResultJob("03_pretrain_vs_scratch", {"dataset": "bccd"}),
    ResultJob("04_model_size", {"dataset": "bccd"}),
    ResultJob("05_independent_test", {"dataset": "bccd"}, vary={"seed": (0, 1, 2)}),  # detector vs cascade: 3 seeds
    ResultJob("02_style_levels", {"dataset": "bccd"}),
    ResultJob("08_micronuclei", {}),
    ResultJob("07_large_images", {}),
)


def results_root() -> Path:
    """``outputs/results`` (committed)."""
    return outputs_dir() / RESULTS_DIR_NAME


def run_results(*, profile: str = "cpu", only: list[str] | None = None, device: str | None = None,
                log: Callable[[str], None] = print) -> list[Path]:
    """Execute each result job's notebook with ``profile`` and publish its results; return the folders."""
    from workbench.studies.notebooks import run_notebook

    done = []
    for job in _jobs(only):
        if profile not in study_class(job.notebook).profiles:  # e.g. 07 / 08 have no cpu profile yet
            log(f"[results] {job.notebook}: skipped, it has no {profile!r} profile "
                f"(it has {sorted(study_class(job.notebook).profiles)})")
            continue
        if job.vary:  # several runs of one study: a grid (resumable), published from its cells
            from workbench.studies.grid import run_grid

            run_grid(_study(job, profile, device, log), vary=job.vary, progress=False, write_outputs=False)
            done += [out] if (out := _publish_grid_job(job, profile=profile, device=device, log=log)) else []
            continue
        params = {**job.params, "profile": profile, **({"device": device} if device else {})}
        t0 = time.perf_counter()
        executed = run_notebook(job.notebook, params)
        wall = time.perf_counter() - t0
        done.append(publish(executed.parent / RESULTS_DIR_NAME, job.notebook, wall_s=wall, params=params))
        log(f"[results] {job.notebook} ({profile}): {wall / 60:.1f} min -> {done[-1]}")
    return done


def publish_grid(*, profile: str = "cpu", only: list[str] | None = None, device: str | None = None,
                 log: Callable[[str], None] = print) -> list[Path]:
    """Publish what each result job's grid (``python -m workbench grid``, in the study's default
    folder) has finished so far, without training anything: a long profile run cell by cell, across
    sessions or machines, is published as it grows. The README and ``provenance.json`` say how many
    cells are done and name the others; the wall time is the finished cells' summed run time, with the
    earlier runs of cells re-run by ``--rerun``."""
    return [out for job in _jobs(only) if (out := _publish_grid_job(job, profile=profile, device=device, log=log))]


def _study(job: ResultJob, profile: str, device: str | None, log: Callable[[str], None]) -> Study:
    """The job's study object at ``profile`` (nothing prepared or trained)."""
    return study_class(job.notebook)(**job.params, profile=profile, device=device, log=log)


def _publish_grid_job(job: ResultJob, *, profile: str, device: str | None,
                      log: Callable[[str], None]) -> Path | None:
    """Publish one job's grid (its finished cells); None when it has no grid or no finished cell."""
    from workbench.studies.grid import read_grid

    study = _study(job, profile, device, log)
    if not (study.grid_dir / "grid.json").is_file():
        vary = "".join(f" --vary {k}={','.join(map(str, v))}" for k, v in job.vary.items())
        log(f"[results] {job.notebook}: no grid at {study.grid_dir} (run 'python -m workbench grid "
            f"{job.notebook} --profile {profile}{vary}' first)")
        return None
    cells = read_grid(study.grid_dir)
    finished = cells[cells["state"] == "done"]
    if finished.empty:
        log(f"[results] {job.notebook}: no finished cell yet in {study.grid_dir}")
        return None
    study.write_outputs(study.result_from_grid())
    grid = {"folder": str(study.grid_dir), "cells": len(cells), "done": len(finished),
            "not_done": {str(r.cell): str(r.state) for r in cells[cells["state"] != "done"].itertuples()}}
    params = {**job.params, "profile": profile}
    # a re-run cell (--rerun) reuses its trained run: its first run's time is part of the cost
    spent = finished["duration_s"].fillna(0).sum() + finished["earlier_runs_s"].fillna(0).sum()
    out = publish(study.results_dir, job.notebook, wall_s=float(spent), params=params, grid=grid)
    log(f"[results] {job.notebook} ({profile}): {len(finished)} of {len(cells)} grid cells -> {out}")
    return out


def _jobs(only: list[str] | None) -> list[ResultJob]:
    jobs = [j for j in RESULT_JOBS if not only or j.notebook in only or j.notebook[:2] in only]
    if only and not jobs:
        raise ValueError(f"no result job matches {only}; known: {[j.notebook for j in RESULT_JOBS]}")
    return jobs


def publish(study_results: str | Path, notebook: str, *, wall_s: float | None = None,
            params: dict[str, Any] | None = None, out: str | Path | None = None,
            grid: dict[str, Any] | None = None) -> Path:
    """Copy one study's written results (``<out_dir>/results``) into ``outputs/results/<notebook>/``,
    atomically, with ``summary.csv`` and a README of the headline tables and provenance (``grid``:
    the state of the grid the results came from, see :func:`publish_grid`)."""
    src = Path(study_results)
    doc = json.loads((src / STUDY_FILE).read_text(encoding="utf-8"))
    out = Path(out) if out is not None else results_root() / notebook
    cls = study_class(notebook)
    provenance = _provenance(doc, wall_s=wall_s, params=params)
    if grid is not None:
        provenance["grid"] = grid
    with new_folder(out, overwrite=True) as tmp:
        tables = {}
        for name in doc.get("tables", []):
            path = src / f"{name}.csv"
            if path.is_file() and path.stat().st_size <= MAX_TABLE_BYTES:
                shutil.copy2(path, tmp / path.name)
                tables[name] = pd.read_csv(path)
        # summary.csv: the study's own summary table, else its first headline table, else its first table
        summary = "summary" if "summary" in tables else next(
            (t for t in cls.headline_tables if t in tables), next(iter(tables), None))
        if summary is not None and summary != "summary":
            tables[summary].to_csv(tmp / "summary.csv", index=False)
        for name in doc.get("figures", []):
            # the caption is in the README and study.json, and embedded in the PDF: no .caption.txt
            if (src / f"{name}.pdf").is_file():
                shutil.copy2(src / f"{name}.pdf", tmp / f"{name}.pdf")
            if (src / f"{name}.png").is_file():
                _small_png(src / f"{name}.png", tmp / f"{name}.png")
        write_text(tmp / "provenance.json", json.dumps(provenance, indent=2, default=str) + "\n")
        shutil.copy2(src / STUDY_FILE, tmp / STUDY_FILE)
        headline = tuple(t for t in cls.headline_tables if t in tables) or ((summary,) if summary else ())
        write_text(tmp / "README.md", readme(notebook, doc, tables, headline, provenance))
        _project_relative(tmp, work=src.parent / "work")
    return out


TEXT_SUFFIXES = (".csv", ".json", ".md", ".txt")


def _project_relative(folder: Path, *, work: Path) -> None:
    """Committed results name no machine's folders: in every text file of ``folder``, the study's
    run and data folders are written relative to its ``work`` folder (``runs/<id>``, ``data/<name>``),
    other paths inside the checkout relative to the checkout."""
    root, work = str(PROJECT_ROOT.resolve()), str(Path(work).resolve())
    prefixes = [(work + "/", ""), (os.path.relpath(work, root) + "/", ""), (root + "/", ""), (root, ".")]
    for path in sorted(folder.iterdir()):
        if path.suffix in TEXT_SUFFIXES:
            text = fixed = path.read_text(encoding="utf-8")
            for prefix, new in prefixes:
                fixed = fixed.replace(prefix, new)
            if fixed != text:
                write_text(path, fixed)


def _small_png(src: Path, dest: Path) -> None:
    """A PNG at :data:`PNG_DPI` from the study's 300-dpi one (committed figures stay small)."""
    from PIL import Image

    with Image.open(src) as im:
        dpi = (im.info.get("dpi") or (300, 300))[0] or 300
        scale = min(1.0, PNG_DPI / float(dpi))
        small = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
        small.save(dest, optimize=True)


def _provenance(doc: dict[str, Any], *, wall_s: float | None, params: dict[str, Any] | None) -> dict[str, Any]:
    from workbench.core.device import describe_device, pick_device
    from workbench.models.runs import git_state

    return {"published": utc_now(), "git": git_state(PROJECT_ROOT), "notebook_params": params or {},
            "wall_time_s": None if wall_s is None else round(wall_s, 1),
            "device": describe_device(pick_device(doc.get("device"))),
            "profile": doc.get("profile"), "dataset": doc.get("dataset"),
            "fingerprints": {k: v for k, v in doc.items() if "fingerprint" in k}}


def markdown_table(df: pd.DataFrame, *, digits: int = 3) -> str:
    """A GitHub markdown table (floats rounded), without extra dependencies."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.{digits}f}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def readme(notebook: str, doc: dict[str, Any], tables: dict[str, pd.DataFrame], headline: tuple[str, ...],
           provenance: dict[str, Any]) -> str:
    """The results folder's README: headline tables, figures with captions, provenance."""
    prof = doc.get("profile") or {}
    wall = provenance.get("wall_time_s")
    lines = [f"# {notebook}: `{prof.get('name')}` profile", "",
             f"Dataset `{doc.get('dataset')}`; {'summed cell time' if provenance.get('grid') else 'wall time'} "
             f"{'-' if wall is None else f'{wall / 60:.1f} min'} on "
             f"{provenance['device'].get('name') or provenance['device'].get('device')} "
             f"({provenance['device'].get('cpu_count')} CPU cores); commit "
             f"`{(provenance.get('git') or {}).get('commit', '?')}`"
             f"{' (uncommitted changes)' if (provenance.get('git') or {}).get('dirty') else ''}. "
             f"Generated by `python -m workbench results --profile {prof.get('name')} --only {notebook}"
             f"{' --from-grid' if provenance.get('grid') else ''}`.", ""]
    grid = provenance.get("grid")
    if grid and grid["done"] < grid["cells"]:
        lines += [f"**Partial result: {grid['done']} of {grid['cells']} cells finished.** Not yet finished: "
                  + ", ".join(f"`{c}` ({s})" for c, s in grid["not_done"].items())
                  + ". The tables and figures below hold the finished cells only.", ""]
    if grid:
        lines += ["Run as a grid, cell by cell (`python -m workbench grid`): the time above is the cells' summed "
                  "training and evaluation time (with the earlier runs of cells re-run by `--rerun`), which "
                  "overstates the profile when cells shared the machine. "
                  "A cell that reused a run finished earlier counts only the time to find it: the study's "
                  "own tables give the runs' training times.", ""]
    for name in headline:
        if name in tables:
            lines += [f"## {name}", "", markdown_table(tables[name]), ""]
    for name in doc.get("figures", []):
        lines += [f"## {name}", "", f"![{name}]({name}.png)", "", (doc.get("captions") or {}).get(name, ""), ""]
    lines += ["## Provenance", "", "```json", json.dumps({"profile": prof, **provenance}, indent=1, default=str),
              "```", ""]
    return "\n".join(lines)
