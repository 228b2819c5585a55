"""The study skeleton: every notebook's study is a :class:`Study` subclass with a few hooks.

A study is a grid of independent *cells* (train a model, evaluate it, time a method), each a
plain JSON-serialisable :class:`Cell`, so the same cells run one after another in a notebook,
one at a time from the command line, or fanned out to a cluster engine. The base class owns
what every study shares and must do the same way:

- the profile lookup (:func:`pick`) and the profile's documented fields (:class:`Profile`);
- one folder convention: ``out_dir`` (default ``outputs/notebooks/<notebook>__<dataset>_<profile>``)
  holds the executed notebook, ``results/`` (what :meth:`Study.write_outputs` writes) and
  ``work/`` (runs and derived datasets, reused by the next execution; ``work_dir`` moves it);
- one run-reuse policy (:meth:`Study.train_or_reuse`): a finished run is reused only when its
  resolved config matches (:func:`workbench.models.runs.finished_with`), a run stopped part-way
  with that config is resumed (:func:`workbench.models.runs.resumable_with`), otherwise it is retrained;
- one timing loop (:func:`time_methods`): warm-up, methods taking turns, median per image;
- atomic outputs (:meth:`Study.write_outputs`): one CSV per table, ``study.json`` and the
  figures (PNG + PDF + caption, with provenance) appear together or not at all.

Hooks, in the order :meth:`Study.run` calls them::

    prepare()                     build or find the datasets the cells need (idempotent)
    cells() -> [Cell]             the independent units, in dependency order
    run_cell(cell) -> rows        one unit; idempotent (reuses finished runs)
    tables(rows) -> {name: df}    the study's tables from all cells' rows
    figures(tables) -> {name: Figure}
    caption(name, tables) -> str  one caption per figure (profile, seeds, split, what was scored)
    settings() -> dict            what ``study.json`` records besides the profile

Subclasses register themselves in :data:`REGISTRY` under their notebook's name.
"""
from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence, TypeVar

import numpy as np
import pandas as pd

from workbench.core.atomic import new_folder, write_text
from workbench.core.paths import outputs_dir
from workbench.core.tables import utc_now
import workbench.report  # noqa: F401  (study figures display inline in a kernel, whoever built them)

P = TypeVar("P")
Log = Callable[[str], None]
STUDY_FILE = "study.json"


def pick(profile: str | P, profiles: Mapping[str, P]) -> P:
    """The profile named ``profile`` in ``profiles`` (a profile object is returned as it is);
    an unknown name is a ``ValueError`` that lists the known ones."""
    if not isinstance(profile, str):
        return profile
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}; known: {sorted(profiles)}")
    return profiles[profile]


@dataclass(frozen=True)
class Profile:
    """The fields every study profile has; each study's profile subclasses this and documents
    every field it adds with a comment where the field is declared."""

    name: str  # smoke (CI: proves the pipeline), cpu (2 CPU cores: answers the study's question), full (a GPU)

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


@dataclass(frozen=True)
class Cell:
    """One independent unit of a study, runnable on its own from this description.

    ``config`` holds plain JSON values only; ``needs`` names the cells that must be done first
    (e.g. fine-tuning needs the pretraining run).
    """

    study: str  # registry name of the study (the notebook's name)
    key: str  # unique within the study; also names the cell's run folder
    config: Mapping[str, Any]  # everything run_cell needs beyond the study's own settings
    needs: tuple[str, ...] = ()  # keys of cells to run first

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "key": self.key, "config": _plain(dict(self.config)), "needs": list(self.needs)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Cell":
        return cls(str(doc["study"]), str(doc["key"]), dict(doc.get("config", {})), tuple(doc.get("needs", ())))


@dataclass
class StudyResult:
    """What a study produced: tables, figures with captions, and the settings for ``study.json``."""

    study: str
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Any]  # name -> matplotlib Figure
    captions: dict[str, str]
    settings: dict[str, Any]
    cells: list[dict[str, Any]] = field(default_factory=list)

    def table(self, name: str) -> pd.DataFrame:
        if name not in self.tables:
            raise KeyError(f"study {self.study} has no table {name!r}; it has {sorted(self.tables)}")
        return self.tables[name]


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (dataset names, paths)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")[:60] or "x"


class Study:
    """Base of every study; see the module docstring for the hooks and what the base does."""

    name: ClassVar[str] = ""  # the notebook's name, e.g. "04_model_size"
    profiles: ClassVar[Mapping[str, Profile]] = {}
    default_dataset: ClassVar[str | None] = "bccd"  # None: the study fixes its own data
    headline_tables: ClassVar[tuple[str, ...]] = ()  # tables shown in the committed results' README
    # False: tables() pools every row it gets (boxes of one run per approach), so the rows of several
    # grid variants (--vary) would be scored as one run: the grid refuses such a plan
    varies: ClassVar[bool] = True

    def __init__(self, dataset: str | Path | None = None, *, profile: str | Profile = "smoke",
                 out_dir: str | Path | None = None, work_dir: str | Path | None = None,
                 fmt: str | None = None, device: str | None = None, log: Log = print) -> None:
        self.dataset = str(dataset if dataset is not None else self.default_dataset)
        self.profile = pick(profile, self.profiles)
        self.fmt = fmt
        self.device = device
        self.log = log
        tag = f"{slug(Path(self.dataset).name)}_{self.profile.name}"
        self.out_dir = Path(out_dir) if out_dir else outputs_dir() / "notebooks" / f"{self.name}__{tag}"
        self.work_dir = Path(work_dir) if work_dir else self.out_dir / "work"

    # ----------------------------------------------------------------- hooks
    def prepare(self) -> None:
        """Build or find the datasets the cells need; must be idempotent (called before each cell)."""

    def cells(self) -> list[Cell]:
        raise NotImplementedError

    def run_cell(self, cell: Cell) -> list[dict[str, Any]]:
        """Run one cell and return its result rows; must reuse finished work (idempotent)."""
        raise NotImplementedError

    def tables(self, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """The study's tables from the rows of all cells (default: one table of the rows)."""
        return {self.short_name: rows}

    def figures(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
        return {}

    def caption(self, name: str, tables: Mapping[str, pd.DataFrame]) -> str:
        return ""

    def settings(self) -> dict[str, Any]:
        """Extra provenance for ``study.json`` (datasets, fingerprints, split sizes)."""
        return {}

    # ----------------------------------------------------------------- shared
    @property
    def short_name(self) -> str:
        """The notebook's name without its number (``model_size``), used for file names."""
        return self.name.split("_", 1)[1] if self.name[:2].isdigit() else self.name

    def cell(self, key: str, needs: Sequence[str] = (), **config: Any) -> Cell:
        """A cell of this study (shorthand for subclasses' :meth:`cells`)."""
        return Cell(self.name, key, config, tuple(needs))

    def study_args(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this study in another process."""
        return {"dataset": self.dataset, "profile": self.profile.name, "out_dir": str(self.out_dir),
                "work_dir": str(self.work_dir), "fmt": self.fmt, "device": self.device}

    def run(self, *, cells: Iterable[Cell] | None = None) -> StudyResult:
        """Prepare, run every cell in order, then build tables, figures and captions."""
        self.prepare()
        todo = list(self.cells() if cells is None else cells)
        rows: list[dict[str, Any]] = []
        for i, c in enumerate(todo, 1):
            t0 = time.perf_counter()
            out = self.run_cell(c)
            rows.extend({"cell": c.key, **r} for r in out)
            self.log(f"[{self.short_name}] cell {i}/{len(todo)} {c.key} done in {time.perf_counter() - t0:.1f} s")
        return self.result(pd.DataFrame(rows), todo)

    def result(self, rows: pd.DataFrame, cells: Sequence[Cell]) -> StudyResult:
        """Tables, figures and captions from the rows of finished cells (e.g. gathered by a grid)."""
        tables = self.tables(rows)
        figures = self.figures(tables)
        captions = {name: self.caption(name, tables) for name in figures}
        settings = {"study": self.name, "dataset": self.dataset, "profile": self.profile.to_dict(),
                    "device": self.device, "created": utc_now(), **self.settings()}
        return StudyResult(self.name, tables, figures, captions, _plain(settings), [c.to_dict() for c in cells])

    def train_or_reuse(self, run_dir: str | Path, dataset: str | Path, *, model: str, epochs: int, imgsz: int,
                       batch: int | None, seed: int, pretrained: str | Path | None = None, **train_args: Any) -> Path:
        """The one run-reuse policy: reuse ``run_dir`` when it finished with this resolved config
        (model, epochs, image size, batch, seed, initial weights and dataset fingerprint); resume
        it from ``weights/last.pt`` when it stopped part-way with that config (its ``run.json``
        lists each resume); else delete it and train afresh. Returns the run folder."""
        from workbench.models.runs import finished_with, resumable_with
        from workbench.models.yolo import resume_run, train

        run_dir = Path(run_dir)
        same = dict(model=model, epochs=epochs, imgsz=imgsz, batch=batch, seed=seed, pretrained=pretrained,
                    dataset=dataset)
        if finished_with(run_dir, **same):
            self.log(f"[{self.short_name}] reusing {run_dir.name} (finished with the same config)")
            return run_dir
        if resumable_with(run_dir, **same):
            self.log(f"[{self.short_name}] resuming {run_dir.name} (stopped part-way with the same config)")
            return Path(resume_run(run_dir, device=self.device, workers=train_args.get("workers"),
                                   callbacks=train_args.get("callbacks")))
        if run_dir.exists():
            shutil.rmtree(run_dir)
        return Path(train(dataset, model=model, epochs=epochs, imgsz=imgsz, batch=batch, seed=seed,
                          pretrained=pretrained, device=self.device, run_name=run_dir.name,
                          runs_root=run_dir.parent, **train_args))

    @property
    def grid_dir(self) -> Path:
        """Where ``python -m workbench grid`` keeps this study's cells (``out_dir/grid``)."""
        return self.out_dir / "grid"

    def result_from_grid(self, grid_dir: str | Path | None = None) -> StudyResult:
        """The result :meth:`run` would give, built from the finished cells of a grid that already
        ran (``python -m workbench grid``, see :mod:`workbench.studies.grid`); runs no cell."""
        from workbench.studies.grid import grid_cells, grid_study_result

        self.prepare()
        return grid_study_result(self, grid_cells(grid_dir if grid_dir is not None else self.grid_dir))

    @property
    def results_dir(self) -> Path:
        """Where :meth:`write_outputs` puts the study's tables, figures and ``study.json``."""
        return self.out_dir / "results"

    def write_outputs(self, result: StudyResult, out: str | Path | None = None) -> list[Path]:
        """Write every table as CSV, ``study.json`` and every figure (PNG + PDF + caption with the
        study's provenance) into ``out`` (default :attr:`results_dir`), atomically: the folder
        appears, or replaces the previous one, only once everything is written."""
        from workbench.report.figures import save_figure

        out = Path(out) if out is not None else self.results_dir
        with new_folder(out, overwrite=True) as tmp:
            for name, table in result.tables.items():
                table.to_csv(tmp / f"{name}.csv", index=False)
            prov = {"study": result.study, "profile": result.settings.get("profile", {}).get("name"),
                    "dataset": result.settings.get("dataset")}
            for name, fig in result.figures.items():
                save_figure(fig, tmp / name, caption=result.captions.get(name, ""), provenance=prov)
            doc = {**result.settings, "tables": sorted(result.tables), "figures": sorted(result.figures),
                   "captions": result.captions, "cells": result.cells}
            write_text(tmp / STUDY_FILE, json.dumps(doc, indent=2, default=str) + "\n")
        return sorted(out.iterdir())


def _plain(value: Any) -> Any:
    """JSON-ready copy: paths as strings, tuples as lists, numpy scalars as Python numbers."""
    if is_dataclass(value) and not isinstance(value, type):
        return _plain({f.name: getattr(value, f.name) for f in fields(value)})
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- timing

Method = tuple[str, str, Callable[[np.ndarray], tuple[pd.DataFrame, dict[str, Any]]]]


def time_methods(methods: list[Method], images: dict[str, np.ndarray], *, repeats: int,
                 log: Log = print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every ``(method, setting, fn)`` on every image ``repeats`` times after one warm-up
    pass; ``fn(image) -> (box table, info)`` with optional ``stage1_s``/``stage2_s`` (else its
    whole time counts as stage 2), ``area_share``, ``canvases``, ``regions``, ``region_boxes``.

    Returns (one row per method, setting and image: median stage and total seconds and the
    last run's info; the predictions of the last run, with ``image method setting``).
    """
    first = next(iter(images.values()))
    for _, _, fn in methods:  # warm-up: first calls pay for allocation and thread start-up
        fn(first)
    # methods take turns within each repeat, so load from other processes on a shared
    # machine falls on all of them alike (blocks of one method each drifted by 3x here)
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
    last: dict[tuple[int, str], pd.DataFrame] = {}
    for r in range(max(1, repeats)):
        for name, img in images.items():
            for m, (_, _, fn) in enumerate(methods):
                t0 = time.perf_counter()
                table, info = fn(img)
                elapsed = time.perf_counter() - t0
                if "stage2_s" not in info:
                    info = {**info, "stage1_s": float("nan"), "stage2_s": elapsed}
                runs.setdefault((m, name), []).append(info)
                last[(m, name)] = table
        log(f"[timing] repeat {r + 1}/{max(1, repeats)} done")
    rows, preds = [], []
    for m, (method, setting, _) in enumerate(methods):
        for name in images:
            times = runs[(m, name)]
            info = times[-1]
            preds.append(last[(m, name)].assign(image=name, method=method, setting=setting))
            rows.append({"method": method, "setting": setting, "image": name,
                         "stage1_s": statistics.median(t["stage1_s"] for t in times),
                         "stage2_s": statistics.median(t["stage2_s"] for t in times),
                         "total_s": statistics.median((0 if np.isnan(t["stage1_s"]) else t["stage1_s"]) + t["stage2_s"]
                                                      for t in times),
                         "area_share": info.get("area_share", 1.0), "canvases": info.get("canvases", np.nan),
                         "regions": info.get("regions", np.nan), "region_boxes": info.get("region_boxes")})
        log(f"[timing] {method} ({setting}): {statistics.median(r['total_s'] for r in rows[-len(images):]):.2f} s/image")
    return pd.DataFrame(rows), pd.concat(preds, ignore_index=True)


# --------------------------------------------------------------------------- registry

REGISTRY: dict[str, type[Study]] = {}


def register(cls: type[Study]) -> type[Study]:
    """Class decorator: make ``cls`` the study of notebook ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a registered study needs a notebook name")
    REGISTRY[cls.name] = cls
    return cls


def study_class(name: str) -> type[Study]:
    """The study of notebook ``name`` (importing the study modules registers them)."""
    import workbench.studies.registry  # noqa: F401  (imports every study module)

    key = Path(name).stem
    if key not in REGISTRY:
        raise ValueError(f"no study for notebook {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[key]


def run_cell_from_dict(doc: Mapping[str, Any], study_args: Mapping[str, Any], *, log: Log = print) -> list[dict[str, Any]]:
    """Rebuild a study from its constructor arguments and run one cell (for a worker process)."""
    cell = Cell.from_dict(doc)
    study = study_class(cell.study)(**dict(study_args), log=log)
    study.prepare()
    return study.run_cell(cell)
