"""Study grids on the local engine, with a fake study whose cells train nothing (tests/_grid_fake.py):
skip-if-done, --rerun-failed, needs, the lock, a timeout that kills a sleeping grandchild, GPU ids
handed out round-robin, variants, grid.csv and the study's result read back; the CLI."""
from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from _grid_fake import FakeStudy, fake_study as fake
from workbench.cli.grid import duration, varied
from workbench.cli.main import main
from workbench.studies import grid_cells as gcells
from workbench.studies.grid import levels, plan_grid, read_grid, run_grid, variants
from workbench.studies.grid_engines import LocalEngine

TESTS = Path(__file__).resolve().parent
# each cell is a Python process (a few seconds each on 2 busy cores): not for the quick loop
SUBPROCESSES = pytest.mark.slow


@pytest.fixture(autouse=True)
def fake_study_importable(monkeypatch):
    """Cell processes import the fake study's module: put tests/ on their PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))


def starts(study: FakeStudy, key: str) -> list[dict]:
    path = Path(study.profile.trace) / f"{key}.starts"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def state(report, cell: str) -> pd.Series:
    return report.table.set_index("cell").loc[cell]


@SUBPROCESSES
def test_cells_run_as_processes_and_done_cells_are_skipped(tmp_path):
    study = fake(tmp_path, ("a", "ok", 0), ("b", "ok", 0))
    first = run_grid(study, progress=False)
    assert set(first.table["state"]) == {"done"} and sorted(first.table["cell"]) == ["a", "b"]
    assert {r["pid"] for r in starts(study, "a")} != {os.getpid()}  # ran in its own process
    grid_csv = pd.read_csv(study.grid_dir / "grid.csv")
    assert list(grid_csv["state"]) == ["done", "done"] and list(grid_csv["score"]) == [1.0, 1.0]
    assert grid_csv["host"].eq(socket.gethostname()).all() and grid_csv["duration_s"].notna().all()
    assert (study.results_dir / "fake.csv").is_file() and (study.results_dir / "study.json").is_file()
    for folder in (study.grid_dir / "cells").iterdir():
        assert {"cell.json", "status.json", "rows.json", "train.log"} <= {p.name for p in folder.iterdir()}
        assert not (folder / "lock").exists()

    second = run_grid(study, progress=False)
    assert second.ran == [] and len(starts(study, "a")) == 1 and len(starts(study, "b")) == 1
    assert set(second.table["state"]) == {"done"}


@SUBPROCESSES
def test_the_key_changes_with_the_config_so_a_changed_cell_runs_again(tmp_path):
    run_grid(fake(tmp_path, ("a", "ok", 0)), progress=False)
    changed = fake(tmp_path, ("a", "ok", 0.1))
    report = run_grid(changed, progress=False)
    assert len(report.ran) == 1 and len(starts(changed, "a")) == 2
    assert len(list((changed.grid_dir / "cells").iterdir())) == 2  # the old folder is kept, not reused


@SUBPROCESSES
def test_failed_cells_are_listed_and_run_again_only_with_rerun_failed(tmp_path):
    study = fake(tmp_path, ("a", "fail-until-fixed", 0), ("b", "ok", 0, ["a"]), ("c", "ok", 0))
    report = run_grid(study, progress=False)
    assert state(report, "a")["state"] == "failed" and "fails on purpose" in state(report, "a")["error"]
    assert state(report, "b")["state"] == "failed" and "needs ['a']" in state(report, "b")["error"]
    assert state(report, "c")["state"] == "done" and starts(study, "b") == []

    (Path(study.profile.trace) / "fixed").touch()
    again = run_grid(study, progress=False)
    assert again.ran == [] and len(starts(study, "a")) == 1  # failed cells stay failed without the flag

    fixed = run_grid(study, progress=False, rerun_failed=True)
    assert set(fixed.table["state"]) == {"done"} and len(fixed.ran) == 2  # a, then b (which needs it)
    assert len(starts(study, "a")) == 2 and len(starts(study, "c")) == 1


@SUBPROCESSES
def test_rerun_runs_named_finished_cells_again_and_keeps_their_previous_rows(tmp_path):
    study = fake(tmp_path, ("eval_a", "ok", 0), ("eval_b", "ok", 0), ("train", "ok", 0))
    run_grid(study, progress=False)
    again = run_grid(study, progress=False, rerun=["eval_*"])
    assert sorted(again.ran) == sorted(gc.name for gc in plan_grid(study) if gc.cell_key.startswith("eval_"))
    assert set(again.table["state"]) == {"done"}
    assert [len(starts(study, k)) for k in ("eval_a", "eval_b", "train")] == [2, 2, 1]
    [folder] = [gc.dir for gc in plan_grid(study) if gc.cell_key == "eval_a"]
    [previous] = list((folder / "previous").iterdir())
    assert json.loads((previous / "rows.json").read_text())[0]["score"] == 6.0
    first_run_s = json.loads((previous / "status.json").read_text())["duration_s"]
    assert json.loads((previous / "status.json").read_text())["state"] == "done" and first_run_s > 0
    earlier = read_grid(study.grid_dir).set_index("cell")["earlier_runs_s"]  # the profile's cost keeps it
    assert earlier["eval_a"] == pytest.approx(first_run_s) and earlier["train"] == 0
    with pytest.raises(ValueError, match="matches no cell of this grid; its cells: eval_a, eval_b, train"):
        run_grid(study, progress=False, rerun=["evl*"])


@SUBPROCESSES
def test_a_cell_locked_by_a_live_driver_is_left_alone_and_a_stale_lock_is_taken_over(tmp_path):
    study = fake(tmp_path, ("a", "ok", 0), ("b", "ok", 0))
    cells = {gc.cell_key: gc for gc in plan_grid(study)}
    for gc in cells.values():
        gc.dir.mkdir(parents=True)
    assert gcells.acquire_lock(cells["a"].dir) and not gcells.acquire_lock(cells["a"].dir)  # O_EXCL: one holder

    report = run_grid(study, progress=False)  # this process holds a's lock, as another driver would
    assert state(report, "a")["state"] == "pending" and state(report, "b")["state"] == "done"
    assert starts(study, "a") == []

    dead = subprocess.Popen(["true"])
    dead.wait()
    (cells["a"].dir / "lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    assert gcells.lock_is_stale(cells["a"].dir / "lock")
    report = run_grid(study, progress=False)
    assert state(report, "a")["state"] == "done" and report.ran == [cells["a"].name]


@SUBPROCESSES
def test_a_cell_starts_as_soon_as_the_cells_it_needs_are_done(tmp_path):
    # pretraining, then its fine-tune before an independent cell listed after it (as notebook 03
    # lists its headline cells): the fine-tune must not wait for every independent cell
    study = fake(tmp_path, ("pre", "ok", 1), ("long", "ok", 6), ("ft", "ok", 0, ["pre"]), ("other", "ok", 0))
    report = run_grid(study, progress=False, max_parallel=2)
    assert set(report.table["state"]) == {"done"}
    first = {k: starts(study, k)[0]["start"] for k in ("pre", "long", "ft", "other")}
    assert first["ft"] < first["other"]  # ft took the slot pre freed (level by level, "other" would have)


def test_the_local_queue_skips_waits_and_runs_in_the_study_order():
    from workbench.studies.grid_engines import next_ready

    verdicts = {"a": "wait", "b": "skip", "c": "run", "d": "run"}
    queue = list("abcd")
    seen = []
    ready = lambda gc, active: seen.append(sorted(active)) or verdicts[gc]  # noqa: E731
    assert next_ready(queue, {"r": 1}, ready, peek=True) == "c" and queue == ["a", "c", "d"]  # b dropped
    assert seen[0] == ["a", "b", "c", "d", "r"]  # queued and running cells are the active ones
    assert next_ready(queue, {}, ready) == "c" and queue == ["a", "d"]
    verdicts["d"] = "wait"
    assert next_ready(queue, {}, ready) is None and queue == ["a", "d"]


@SUBPROCESSES
def test_a_timeout_kills_the_cells_whole_process_group_grandchild_included(tmp_path):
    study = fake(tmp_path, ("slow", "grandchild", 300))
    report = run_grid(study, progress=False, timeout_s=30)  # room for the cell to start on a busy machine
    row = state(report, "slow")
    assert row["state"] == "failed" and "timed out after 30 s" in row["error"]
    grandchild = int((Path(study.profile.trace) / "grandchild.pid").read_text())
    assert not gcells.pid_alive(grandchild)


@SUBPROCESSES
def test_local_engine_hands_out_gpu_ids_round_robin_and_never_shares_one(tmp_path):
    study = fake(tmp_path, *[(k, "ok", 2) for k in "abcd"])
    engine = LocalEngine(gpus=["0", "1"], max_parallel=4)  # 2 GPUs, 1 each: at most 2 at once
    assert engine.plan()[:3] == (["0", "1"], 1, 2)
    run_grid(study, engine=engine, progress=False)
    runs = [json.loads((Path(study.profile.trace) / f"{k}.json").read_text()) for k in "abcd"]
    assert sorted(r["gpus"] for r in runs) == ["0", "0", "1", "1"]
    for r in runs:
        overlapping = [o for o in runs if o["start"] < r["end"] and r["start"] < o["end"]]
        assert len(overlapping) <= 2 and len({o["gpus"] for o in overlapping}) == len(overlapping)
    with pytest.raises(ValueError, match="offers 2 GPU"):
        LocalEngine(gpus=["0", "1"], gpus_per_cell=3).plan()


@SUBPROCESSES
def test_variants_run_every_cell_per_value_with_their_own_work_folders(tmp_path):
    study = fake(tmp_path, ("a", "ok", 0))
    report = run_grid(study, vary={"level": [0, 1]}, progress=False)
    assert sorted(report.table["level"]) == [0, 1] and set(report.table["state"]) == {"done"}
    assert sorted(report.result.table("fake")["level"]) == [0, 1]
    docs = [json.loads((study.grid_dir / "cells" / f / "cell.json").read_text()) for f in report.table["folder"]]
    assert [d["overrides"] for d in docs if d["vary"]["level"] == 1] == [{"level": 1}]
    assert [d["study_args"]["work_dir"] for d in docs if d["vary"]["level"] == 1][0].endswith("variants/level-1")


def test_variants_keys_and_dependency_levels_are_planned_without_running_anything(tmp_path):
    assert variants(None) == [{}]
    assert variants({"level": [0, 1], "x": ["p", "q"]}) == [
        {"level": 0, "x": "p"}, {"level": 0, "x": "q"}, {"level": 1, "x": "p"}, {"level": 1, "x": "q"}]
    with pytest.raises(ValueError, match="no values"):
        variants({"level": []})
    study = fake(tmp_path, ("a", "ok", 0), ("b", "ok", 0, ["a"]), ("c", "ok", 0))
    planned = plan_grid(study, vary={"level": [0, 1]})
    assert len(planned) == 6 and len({gc.key for gc in planned}) == 6 and len({gc.dir for gc in planned}) == 6
    assert [[gc.cell_key for gc in level] for level in levels(planned)] == [["a", "c", "a", "c"], ["b", "b"]]
    again = plan_grid(study, vary={"level": [0, 1]})
    assert [gc.key for gc in again] == [gc.key for gc in planned]  # keys are stable
    assert planned[0].dir.name.startswith("a-") and len(planned[0].dir.name) == len("a-") + 12
    with pytest.raises(ValueError, match="no field"):
        plan_grid(study, vary={"nonsense": [1]})
    # a study whose tables pool every cell's rows refuses several variants, before any cell runs
    study.varies = False
    with pytest.raises(ValueError, match=r"--vary is not supported .* e.g. --vary seed=1 --out DIR"):
        plan_grid(study, vary={"level": [0, 1]})
    assert len(plan_grid(study, vary={"level": [1]})) == 3  # one value per folder is fine


@SUBPROCESSES
def test_the_result_of_a_grid_that_already_ran_is_read_back(tmp_path):
    study = fake(tmp_path, ("a", "ok", 0), ("b", "fail", 0))
    report = run_grid(study, progress=False)
    table = read_grid(study.grid_dir)
    assert list(table["state"]) == ["done", "failed"]
    result = study.result_from_grid()
    assert list(result.table("fake")["cell"]) == ["a"]
    pd.testing.assert_frame_equal(result.table("fake"), report.result.table("fake"))


@SUBPROCESSES
def test_cli_grid_and_cell(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["grid", "99_fake_grid", "--profile", "two", "--out", str(out), "--no-progress"]) == 0
    assert "2 done" in capsys.readouterr().out
    table = pd.read_csv(out / "grid" / "grid.csv")
    assert list(table["cell"]) == ["a", "b"] and set(table["state"]) == {"done"}
    folder = out / "grid" / "cells" / table["folder"][0]
    assert main(["cell", str(folder)]) == 0  # a cell folder runs on its own, again (idempotent)
    assert json.loads((folder / "status.json").read_text())["attempts"] == 2
    assert duration("6h") == 21600 and duration("90m") == 5400 and duration("45") == 45
    assert varied("seed=0,1") == ("seed", [0, 1]) and varied("model=a.yaml,b") == ("model", ["a.yaml", "b"])


def test_collect_names_what_ended_a_cell(tmp_path):
    gcells.write_status(tmp_path, state="running")
    assert gcells.collect(tmp_path, rc=-9)["crashed"] is True
    assert "SIGKILL" in gcells.collect(tmp_path, rc=-9)["error"]
    assert "exited with code 3" in gcells.collect(tmp_path, rc=3)["error"]
    assert gcells.collect(tmp_path, rc=0)["state"] == "failed"  # exit 0 without rows is not done
    gcells.write_json(tmp_path / "rows.json", [{"x": 1}])
    gcells.write_status(tmp_path, state="done")
    assert gcells.collect(tmp_path, rc=0)["state"] == "done"
    with pytest.raises(ValueError, match="state must be"):
        gcells.write_status(tmp_path, state="finished")
