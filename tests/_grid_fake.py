"""A study that trains nothing, for the grid tests: each cell sleeps, fails, crashes or leaves a
sleeping grandchild, as its config says, and records what it saw (pid, GPU ids, times) in the
profile's ``trace`` folder. Imported by the cell processes too (tests/ is on their PYTHONPATH)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.studies.base import Cell, Profile, Study, register


@dataclass(frozen=True)
class FakeProfile(Profile):
    cells: tuple = ()  # (key, mode, seconds, needs): mode ok | fail | fail-until-fixed | crash | grandchild
    trace: str = ""  # folder where each cell records its start (one line per attempt) and its run
    level: int = 0  # a field to vary


PROFILES = {"fake": FakeProfile("fake"),
            "two": FakeProfile("two", cells=(("a", "ok", 0, ()), ("b", "ok", 0, ("a",)))),
            "partial": FakeProfile("partial", cells=(("a", "ok", 0, ()), ("b", "fail", 0, ())))}


@register
class FakeStudy(Study):
    name = "99_fake_grid"
    profiles = PROFILES
    default_dataset = None
    profile: FakeProfile

    def cells(self) -> list[Cell]:
        return [self.cell(key, needs=needs, mode=mode, seconds=seconds, trace=self.profile.trace)
                for key, mode, seconds, needs in self.profile.cells]

    def run_cell(self, cell: Cell) -> list[dict[str, Any]]:
        c = cell.config
        trace = Path(c["trace"]) if c["trace"] else None
        seen = {"cell": cell.key, "pid": os.getpid(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "threads": os.environ.get("OMP_NUM_THREADS"), "start": time.time()}
        if trace:
            with open(trace / f"{cell.key}.starts", "a") as fh:
                fh.write(json.dumps(seen) + "\n")
        mode = c["mode"]
        if mode == "fail" or (mode == "fail-until-fixed" and not (trace / "fixed").exists()):
            raise ValueError(f"cell {cell.key} fails on purpose")
        if mode == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "grandchild":
            child = subprocess.Popen(["sleep", "300"])
            (trace / "grandchild.pid").write_text(str(child.pid))
        time.sleep(float(c["seconds"]))
        seen["end"] = time.time()
        if trace:
            (trace / f"{cell.key}.json").write_text(json.dumps(seen))
        return [{"score": float(len(cell.key)), "seconds": float(c["seconds"]), "gpus": seen["gpus"]}]

    def tables(self, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
        return {"fake": rows}


def fake_study(tmp_path: Path, *cells, **profile) -> FakeStudy:
    """The fake study with ``cells`` given as (key, mode, seconds[, needs]), tracing into
    ``tmp_path/trace``, its outputs in ``tmp_path/study``."""
    trace = tmp_path / "trace"
    trace.mkdir(exist_ok=True)
    specs = tuple((key, mode, seconds, tuple(needs[0]) if needs else ()) for key, mode, seconds, *needs in cells)
    return FakeStudy(profile=FakeProfile("fake", cells=specs, trace=str(trace), **profile), out_dir=tmp_path / "study",
                     log=lambda message: None)

