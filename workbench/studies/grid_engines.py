"""Where a grid's cells run: ``local`` (subprocesses on this machine) or ``ray`` (a Ray cluster).

Both engines take cells and two callbacks from the driver (:func:`workbench.studies.grid.run_grid`):
``start(cell, info) -> bool`` (takes the cell's lock; False skips the cell) and ``finish(cell,
outcome)`` (records the result). Every cell runs as its own process group
(:func:`~workbench.studies.grid_cells.cell_process`), under either engine.

- :class:`LocalEngine` (the default, needs nothing): up to ``max_parallel`` cell processes; GPU ids
  handed out round-robin through ``CUDA_VISIBLE_DEVICES`` (``gpus_per_cell`` each, never shared).
  It follows the cells' needs itself (``follows_needs``): it gets every cell in the study's order
  and a third callback, ``ready(cell, active) -> "run" | "wait" | "skip"``, and starts the first
  queued cell that is ready whenever a slot is free.
- :class:`RayEngine` (given one dependency level at a time): each cell is a Ray task ``num_gpus=gpus_per_cell, num_cpus=cpus_per_cell``
  that starts the cell process; Ray sets ``CUDA_VISIBLE_DEVICES`` per task, places tasks across
  the cluster's nodes, and re-runs a task whose cell crashed (killed by a signal) or whose worker
  died, once (``max_retries=1``); cells are idempotent, so a retry redoes only unfinished work.
  ``address=None`` starts a local Ray instance for the run; ``"auto"`` or ``"HOST:PORT"`` joins
  a cluster. A Ray session the caller already holds is used and never shut down.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Protocol, Sequence

from workbench.core.device import cpu_count
from workbench.studies.grid_cells import (
    KILL_GRACE_S, CellCrashed, GridCell, GroupProcess, cell_env, cell_process, collect, run_on_worker)

Start = Callable[[GridCell, dict[str, Any]], bool]
Finish = Callable[[GridCell, dict[str, Any]], None]
Ready = Callable[[GridCell, Collection[GridCell]], str]  # "run", "wait" or "skip"
ENGINES = ("local", "ray")
POLL_S = 0.2


class Engine(Protocol):
    name: str

    def run(self, cells: Sequence[GridCell], *, start: Start, finish: Finish) -> None:
        """Run ``cells`` (independent of each other), calling ``start`` before and ``finish`` after each."""


def make_engine(name: str, *, address: str | None = None, max_parallel: int | None = None,
                gpus_per_cell: int | None = None, cpus_per_cell: int | None = None,
                timeout_s: float | None = None) -> Engine:
    """The engine called ``name`` (``local`` or ``ray``) with these limits."""
    if name == "local":
        if address:
            raise ValueError("--address joins a Ray cluster: use it with --engine ray")
        return LocalEngine(max_parallel=max_parallel, gpus_per_cell=gpus_per_cell, cpus_per_cell=cpus_per_cell,
                           timeout_s=timeout_s)
    if name == "ray":
        return RayEngine(address=address, max_parallel=max_parallel, gpus_per_cell=gpus_per_cell,
                         cpus_per_cell=cpus_per_cell, timeout_s=timeout_s)
    raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")


def visible_gpus() -> list[str]:
    """GPU ids this machine offers cells: ``CUDA_VISIBLE_DEVICES`` when set, else every CUDA device."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


# ----------------------------------------------------------------------------- local

class LocalEngine:
    """Cell processes on this machine, at most ``max_parallel`` at once."""

    name = "local"

    def __init__(self, *, max_parallel: int | None = None, gpus_per_cell: int | None = None,
                 cpus_per_cell: int | None = None, timeout_s: float | None = None,
                 gpus: Sequence[str] | None = None) -> None:
        self.gpus = list(gpus) if gpus is not None else None
        self.max_parallel, self.gpus_per_cell = max_parallel, gpus_per_cell
        self.cpus_per_cell, self.timeout_s = cpus_per_cell, timeout_s

    def plan(self) -> tuple[list[str], int, int, int]:
        """(GPU ids, GPUs per cell, cells at once, CPU threads per cell)."""
        gpus = visible_gpus() if self.gpus is None else self.gpus
        per = self.gpus_per_cell if self.gpus_per_cell is not None else (1 if gpus else 0)
        if per > len(gpus):
            raise ValueError(f"--gpus-per-cell {per}: this machine offers {len(gpus)} GPU(s) ({','.join(gpus) or 'none'})")
        slots = len(gpus) // per if per else None  # a GPU is never shared by two cells
        parallel = self.max_parallel or slots or 1  # CPU only: one at a time unless asked
        parallel = min(parallel, slots) if slots else parallel
        cpus = self.cpus_per_cell or max(1, cpu_count() // parallel)
        return gpus, per, max(1, parallel), cpus

    follows_needs = True

    def run(self, cells: Sequence[GridCell], *, start: Start, finish: Finish, ready: Ready | None = None) -> None:
        gpus, per, parallel, cpus = self.plan()
        free = deque(gpus)  # released ids go to the back: round-robin over the GPUs
        queue = list(cells)
        running: dict[GridCell, tuple[GroupProcess, list[str]]] = {}
        try:
            while queue or running:
                while queue and len(running) < parallel:
                    gc = next_ready(queue, running, ready)
                    if gc is None:
                        break
                    ids = [free.popleft() for _ in range(per)]
                    if not start(gc, {"host": socket.gethostname(), "gpus": ",".join(ids)}):
                        free.extend(ids)
                        continue
                    env = cell_env(gpus=ids if (per or gpus) else None, cpus=cpus)
                    running[gc] = (cell_process(gc.dir, env=env, timeout_s=self.timeout_s), ids)
                for gc, (proc, ids) in list(running.items()):
                    rc = proc.poll()
                    if rc is not None:
                        del running[gc]
                        free.extend(ids)
                        finish(gc, collect(gc.dir, rc=rc, timed_out=proc.timed_out, timeout_s=self.timeout_s))
                if queue and not running and next_ready(queue, running, ready, peek=True) is None:
                    break  # only cells waiting on cells that will not run here: nothing can start
                time.sleep(POLL_S)
        finally:  # the driver was interrupted: no cell process outlives it
            for gc, (proc, _) in running.items():
                proc.kill()
                finish(gc, {"state": "failed", "error": "interrupted (the grid driver stopped)", "rows": None,
                            "status": {}, "rc": None, "crashed": False})


def next_ready(queue: list[GridCell], running: Mapping[GridCell, Any], ready: Ready | None, *,
               peek: bool = False) -> GridCell | None:
    """The first cell of ``queue`` that ``ready`` says may run, taken out of the queue (left in with
    ``peek``); cells it says to skip are dropped. None when every queued cell waits."""
    for gc in list(queue):
        verdict = "run" if ready is None else ready(gc, {*queue, *running})
        if verdict == "skip":
            queue.remove(gc)
        elif verdict == "run":
            if not peek:
                queue.remove(gc)
            return gc
    return None


# ----------------------------------------------------------------------------- ray

def ray_module():
    """``import ray`` with usage stats off (set before import, as Ray reads it then)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ValueError("--engine ray needs the 'ray' package (pinned in pyproject.toml: pip install -e .)") from None
    return ray


def connect(address: str | None = None, *, attempts: int = 3, log: Callable[[str], None] = print,
            **init_args: Any) -> bool:
    """Join the cluster at ``address`` (``auto``: the one ``ray start`` runs here; ``HOST:PORT``) or,
    with None, start a new local Ray instance for this run; a session this process already holds
    is reused. True when this call started the session (then the caller shuts it down).

    Starting a local instance is tried ``attempts`` times: Ray 2.58's raylet gives its agent
    process a fixed 15 s to report its port and aborts otherwise (ray-project/ray#65983), which a
    2-core machine busy with other work misses now and then (seen here at loads of 6 to 10).
    """
    ray = ray_module()
    if ray.is_initialized():
        return False
    for attempt in range(1, attempts + 1):
        before = _child_pids()
        try:
            # "local": a new instance, never someone's running one; no dashboard (a web UI);
            # workers' output stays in the cells' train.log
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, **init_args)
            return True
        except Exception as exc:
            for pid in _child_pids() - before:  # the failed start's GCS server would idle on
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if address is not None or "timed out during startup" not in str(exc):
                raise
            if attempt == attempts:
                raise RuntimeError(
                    f"Ray's local instance timed out during startup {attempts} times: its raylet waits a fixed 15 s "
                    "for its agent process, too short on a machine this busy. Run the grid with --engine local, "
                    "or start Ray once with 'ray start --head' and pass --address auto") from exc
            log(f"[grid] Ray's local instance did not start in time (attempt {attempt}/{attempts}); trying again")
    return True


def _child_pids() -> set[int]:
    """This process's direct children (Linux ``/proc``; empty elsewhere)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                out.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


class RayEngine:
    """Each cell a Ray task that starts the cell process; ``max_retries=1`` for crashed cells."""

    name = "ray"

    def __init__(self, *, address: str | None = None, max_parallel: int | None = None,
                 gpus_per_cell: int | None = None, cpus_per_cell: int | None = None,
                 timeout_s: float | None = None, retries: int = 1) -> None:
        self.address, self.max_parallel = address, max_parallel
        self.gpus_per_cell, self.cpus_per_cell = gpus_per_cell, cpus_per_cell or 1
        self.timeout_s, self.retries = timeout_s, retries

    def run(self, cells: Sequence[GridCell], *, start: Start, finish: Finish) -> None:
        ray = ray_module()
        owned = connect(self.address)
        try:
            self._run(ray, cells, start, finish)
        finally:
            if owned:
                ray.shutdown()

    def _run(self, ray, cells: Sequence[GridCell], start: Start, finish: Finish) -> None:
        gpus_total = ray.cluster_resources().get("GPU", 0)
        per = self.gpus_per_cell if self.gpus_per_cell is not None else (1 if gpus_total >= 1 else 0)
        if per > gpus_total:
            raise ValueError(f"--gpus-per-cell {per}: the Ray cluster has {gpus_total:g} GPU(s); no cell could start")
        task = ray.remote(run_on_worker).options(num_cpus=self.cpus_per_cell, num_gpus=per, max_retries=self.retries,
                                                 retry_exceptions=[CellCrashed])
        queue: deque[GridCell] = deque(cells)
        pending: dict[Any, GridCell] = {}
        try:
            self._loop(ray, task, queue, pending, start, finish)
        except BaseException:  # interrupted: cancelled tasks kill their cells' process groups
            for ref in pending:
                ray.cancel(ref)
            ray.wait(list(pending), num_returns=len(pending), timeout=KILL_GRACE_S + 5)
            for gc in pending.values():
                finish(gc, {"state": "failed", "error": "interrupted (the grid driver stopped)", "rows": None,
                            "status": {}, "rc": None, "crashed": False})
            raise

    def _loop(self, ray, task, queue: deque, pending: dict, start: Start, finish: Finish) -> None:
        while queue or pending:
            while queue and (not self.max_parallel or len(pending) < self.max_parallel):
                gc = queue.popleft()
                if start(gc, {"host": f"ray ({self.address or 'local'})", "gpus": "", "state": "pending"}):
                    pending[task.remote(str(gc.dir), gc.doc(), self.timeout_s, self.cpus_per_cell)] = gc
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0) if pending else ([], [])
            for ref in ready:
                gc = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # retries used up: a crashed cell or a lost worker
                    outcome = {"state": "failed", "rows": None, "status": {}, "rc": None, "crashed": True,
                               "error": f"crashed {self.retries + 1} time(s): {_first_line(exc)}"}
                finish(gc, outcome)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return next((t for t in reversed(text) if "CellCrashed" in t or "Error" in t), text[0] if text else repr(exc))[:300]
