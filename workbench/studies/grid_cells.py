"""One grid cell on disk and as a process: its folder, status, lock, and the process that runs it.

A cell's folder ``<grid_dir>/cells/<cell key>-<hash>/`` describes and records one unit::

    cell.json     what to run: the study's cell, the study's constructor arguments, profile overrides
    status.json   state (pending | running | done | failed), host, GPU ids, start, end, duration, error
    rows.json     the cell's result rows; written before ``status.json`` says done
    train.log     everything the cell process printed
    lock          the driver that runs the cell (pid, host); created with O_EXCL, so one driver only
    ultralytics/  the cell's own ultralytics settings dir (parallel cells never share one)

The hash (:func:`cell_key`) covers the resolved cell config, the study arguments that change
results, the dataset fingerprint and the package versions: change any and the cell gets a new
folder, so a finished folder is never reused for different work.

A cell runs as ``python -m workbench cell CELL_DIR`` (:func:`run_cell_dir`) in its own process
group (:func:`cell_process`): a timeout kills the whole group, grandchildren (data-loader workers,
DDP ranks) included; Ray would kill only the direct child.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.abc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from workbench.core.atomic import write_text
from workbench.core.device import CPU_THREADS_ENV
from workbench.core.offline import ultralytics_config_dir
from workbench.core.paths import PROJECT_ROOT
from workbench.core.tables import utc_now

CELL_FILE, STATUS_FILE, ROWS_FILE, LOG_FILE, LOCK_FILE = "cell.json", "status.json", "rows.json", "train.log", "lock"
STATES = ("pending", "running", "done", "failed")
KILL_GRACE_S = 10.0  # SIGTERM, then this long, then SIGKILL for the whole process group


class CellCrashed(RuntimeError):
    """The cell process died from a signal (OOM killer, segfault, lost node): worth one retry."""


@dataclass(frozen=True, eq=False)  # identity: a cell is one planned unit, usable as a dict key
class GridCell:
    """One cell of a grid: the study's :class:`~workbench.studies.base.Cell` (as a dict), where it
    lives and everything a fresh process needs to rebuild the study and run it."""

    cell: Mapping[str, Any]  # Cell.to_dict(): study, key, config, needs
    key: str  # hash of everything that changes the cell's result (see cell_key)
    dir: Path  # <grid_dir>/cells/<cell key>-<hash[:12]>
    module: str  # the module that registers the study (imported by the cell process)
    study_args: Mapping[str, Any]  # Study constructor arguments, profile by name
    overrides: Mapping[str, Any] = field(default_factory=dict)  # profile fields changed by this variant
    vary: Mapping[str, Any] = field(default_factory=dict)  # the varied profile fields, with this variant's values

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def cell_key(self) -> str:
        """The study's own key (unique within one variant)."""
        return str(self.cell["key"])

    def doc(self) -> dict[str, Any]:
        """The content of ``cell.json``."""
        return {"key": self.key, "cell": dict(self.cell), "module": self.module,
                "study_args": dict(self.study_args), "overrides": dict(self.overrides), "vary": dict(self.vary)}


def cell_key(cell: Mapping[str, Any], *, profile: Mapping[str, Any], study_args: Mapping[str, Any],
             dataset: Mapping[str, Any], versions: Mapping[str, Any]) -> str:
    """sha256 over the resolved cell, the resolved profile, the study arguments that change results
    (dataset, format, device; not where outputs go), the dataset fingerprint and package versions."""
    relevant = {k: study_args.get(k) for k in ("dataset", "fmt", "device")}
    doc = {"cell": cell, "profile": profile, "study": relevant, "data": dataset, "versions": versions}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=_json_default).encode()).hexdigest()


def cell_folder(cells_dir: Path, cell: Mapping[str, Any], key: str) -> Path:
    """``<cells_dir>/<readable cell key>-<first 12 hex of the hash>``."""
    from workbench.studies.base import slug

    return Path(cells_dir) / f"{slug(str(cell['key']))}-{key[:12]}"


# ----------------------------------------------------------------------------- files

def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's content, or ``default`` when it is missing or half-written."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_json(path: Path, doc: Any) -> Path:
    return write_text(path, json.dumps(doc, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def read_status(cell_dir: Path) -> dict[str, Any]:
    return read_json(Path(cell_dir) / STATUS_FILE, {}) or {}


def write_status(cell_dir: Path, **changes: Any) -> dict[str, Any]:
    """Update ``status.json`` atomically (readers never see half a file)."""
    doc = {**read_status(cell_dir), **changes}
    if doc.get("state") not in STATES:
        raise ValueError(f"cell state must be one of {STATES}, got {doc.get('state')!r}")
    write_json(Path(cell_dir) / STATUS_FILE, doc)
    return doc


def read_rows(cell_dir: Path) -> list[dict[str, Any]] | None:
    return read_json(Path(cell_dir) / ROWS_FILE)


def is_done(cell_dir: Path) -> bool:
    """Done means both: ``status.json`` says so and the rows it was written after exist."""
    return read_status(cell_dir).get("state") == "done" and read_rows(cell_dir) is not None


def prepare_folder(gc: GridCell) -> None:
    """Write ``cell.json`` (when it changed) and a pending ``status.json`` for a new cell."""
    gc.dir.mkdir(parents=True, exist_ok=True)
    if read_json(gc.dir / CELL_FILE) != json.loads(json.dumps(gc.doc(), default=_json_default)):
        write_json(gc.dir / CELL_FILE, gc.doc())
    if not read_status(gc.dir):
        write_status(gc.dir, state="pending", attempts=0)


# ----------------------------------------------------------------------------- lock

def acquire_lock(cell_dir: Path) -> bool:
    """Take the cell's lock (``O_EXCL`` create with pid and host); False when another live driver
    holds it. A lock left by a dead process on this host is taken over."""
    path = Path(cell_dir) / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not lock_is_stale(path):
                return False
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}, fh)
        return True
    return False


def lock_is_stale(path: Path) -> bool:
    """True when the lock's process is gone (same host only: another host's pid cannot be checked)."""
    doc = read_json(path)
    if doc is None:  # unreadable: a driver died between create and write, or is writing right now
        return time.time() - _mtime(path) > 60
    return doc.get("host") == socket.gethostname() and not pid_alive(int(doc.get("pid", -1)))


def lock_holder(cell_dir: Path) -> str:
    doc = read_json(Path(cell_dir) / LOCK_FILE) or {}
    return f"{doc.get('host', '?')}:{doc.get('pid', '?')}"


def release_lock(cell_dir: Path) -> None:
    """Remove the lock if this process holds it."""
    path = Path(cell_dir) / LOCK_FILE
    doc = read_json(path) or {}
    if doc.get("pid") == os.getpid() and doc.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


# ----------------------------------------------------------------------------- the process

def cell_env(*, gpus: Sequence[str] | None, cpus: int | None) -> dict[str, str]:
    """Environment of a cell process: ``CUDA_VISIBLE_DEVICES`` when ``gpus`` is given (None: keep
    what is set, e.g. by Ray), ``OMP_NUM_THREADS`` and ``WORKBENCH_CPU_THREADS`` (what
    :func:`workbench.core.device.cpu_count` allows) so parallel CPU cells do not oversubscribe."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # train.log follows the cell as it runs
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    if cpus:
        env["OMP_NUM_THREADS"] = env[CPU_THREADS_ENV] = str(int(cpus))
    return env


class GroupProcess:
    """``command`` in a new session (its own process group), output appended to ``log_path``;
    past ``timeout_s`` the whole group is terminated, then killed."""

    def __init__(self, command: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None,
                 timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self.timed_out = False
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"\n=== {utc_now()} {socket.gethostname()} {' '.join(map(str, command))}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(list(map(str, command)), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=dict(env if env is not None else os.environ),
                                         cwd=PROJECT_ROOT, start_new_session=True,
                                         preexec_fn=_term_with_parent if sys.platform == "linux" else None)
        self.started = time.monotonic()

    def poll(self) -> int | None:
        """The exit code once the process ended (after a timeout, once its group is gone)."""
        rc = self.proc.poll()
        if rc is None and self.timeout_s and time.monotonic() - self.started > self.timeout_s:
            self.timed_out = True
            self.kill()
            rc = self.proc.wait()
        if rc is not None:
            _signal_group(self.proc.pid, signal.SIGKILL)  # leftovers of a finished cell (stray workers)
        return rc

    def wait(self, interval: float = 0.5) -> int:
        while (rc := self.poll()) is None:
            time.sleep(interval)
        return rc

    def kill(self) -> None:
        """SIGTERM to the whole process group, SIGKILL after :data:`KILL_GRACE_S`."""
        _signal_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def cell_process(cell_dir: Path, *, env: Mapping[str, str], timeout_s: float | None = None) -> GroupProcess:
    """``python -m workbench cell CELL_DIR``, its output in the cell's ``train.log``."""
    return GroupProcess([sys.executable, "-m", "workbench", "cell", str(cell_dir)], log_path=Path(cell_dir) / LOG_FILE,
                        env=env, timeout_s=timeout_s)


def _term_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the parent dies, e.g. a Ray worker killed by
    ``ray.cancel(force=True)``; the cell process then takes its own group down (:func:`run_cell_dir`)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def collect(cell_dir: Path, *, rc: int, timed_out: bool = False, timeout_s: float | None = None) -> dict[str, Any]:
    """What a finished cell process left: ``state`` done or failed, its rows, its status, the
    error, and ``crashed`` (killed by a signal, not by our timeout)."""
    cell_dir = Path(cell_dir)
    status, rows = read_status(cell_dir), read_rows(cell_dir)
    out: dict[str, Any] = {"rc": rc, "status": status, "rows": rows, "crashed": False, "log_tail": log_tail(cell_dir)}
    if rc == 0 and status.get("state") == "done" and rows is not None:
        return {**out, "state": "done", "error": None}
    if timed_out:
        error = f"timed out after {timeout_s:g} s (process group killed)"
    elif status.get("state") == "failed" and status.get("error"):
        error = status["error"]
    elif rc < 0:
        error = f"cell process killed by {signal.Signals(-rc).name}"
        out["crashed"] = True
    else:
        error = f"cell process exited with code {rc} without finishing (see {LOG_FILE})"
    return {**out, "state": "failed", "error": error}


def log_tail(cell_dir: Path, n: int = 4000) -> str:
    try:
        with open(Path(cell_dir) / LOG_FILE, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - n))
            return fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def run_on_worker(cell_dir: str, doc: Mapping[str, Any], timeout_s: float | None, cpus: int | None) -> dict[str, Any]:
    """Run one cell to the end from where the process lives (a Ray task's body): writes
    ``cell.json`` when this node does not see the grid folder, raises :class:`CellCrashed` when
    the cell died from a signal (so Ray retries it), else returns :func:`collect`'s result."""
    folder = Path(cell_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if read_json(folder / CELL_FILE) is None:
        write_json(folder / CELL_FILE, dict(doc))
    # Ray has set CUDA_VISIBLE_DEVICES for this task; the cell process inherits it
    proc = cell_process(folder, env=cell_env(gpus=None, cpus=cpus), timeout_s=timeout_s)
    try:
        rc = proc.wait()
    except BaseException:  # ray.cancel raises KeyboardInterrupt here: the cell's group goes too
        proc.kill()
        raise
    out = collect(folder, rc=rc, timed_out=proc.timed_out, timeout_s=timeout_s)
    if out["crashed"]:
        raise CellCrashed(f"{folder.name}: {out['error']}")
    return {**out, "host": socket.gethostname()}


# ----------------------------------------------------------------------------- inside the cell process

def run_cell_dir(cell_dir: str | Path) -> int:
    """``python -m workbench cell CELL_DIR``: rebuild the study, run the cell, write ``rows.json``
    and then ``status.json`` done; on any error ``status.json`` failed with the error. Exit code 0/1."""
    folder = Path(cell_dir).resolve()
    doc = read_json(folder / CELL_FILE)
    if doc is None:
        raise FileNotFoundError(f"{folder}: no {CELL_FILE} (not a grid cell folder)")
    _own_ultralytics_dir(folder / "ultralytics")
    signal.signal(signal.SIGTERM, _fail_on_sigterm)
    attempts = int(read_status(folder).get("attempts", 0) or 0) + 1
    start, t0 = utc_now(), time.perf_counter()
    write_status(folder, state="running", host=socket.gethostname(), pid=os.getpid(), start=start, end=None,
                 gpus=os.environ.get("CUDA_VISIBLE_DEVICES", ""), attempts=attempts, error=None, duration_s=None)
    try:
        rows = run_cell_doc(doc)
    except BaseException as exc:  # a KeyboardInterrupt / SystemExit inside the study fails the cell too
        traceback.print_exc()
        write_status(folder, state="failed", end=utc_now(), duration_s=round(time.perf_counter() - t0, 2),
                     error=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, SystemExit) and os.getpgid(0) == os.getpid():
            _signal_group(os.getpid(), signal.SIGKILL)  # stray workers and DDP ranks, then this process
        return 1
    write_json(folder / ROWS_FILE, rows)
    write_status(folder, state="done", end=utc_now(), duration_s=round(time.perf_counter() - t0, 2))
    print(f"cell {folder.name} done: {len(rows)} row(s)", flush=True)
    return 0


def _fail_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a timeout, a cancelled Ray task, a dead parent): fail the cell, end its process group."""
    raise SystemExit(128 + signum)


def run_cell_doc(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rebuild the study of a ``cell.json`` (profile overrides applied) and run its cell."""
    from workbench.studies.base import run_cell_from_dict

    importlib.import_module(doc["module"])  # registers the study
    return run_cell_from_dict(doc["cell"], study_arguments(doc), log=lambda msg: print(msg, flush=True))


def study_arguments(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The study's constructor arguments, with the profile object when the variant overrides fields."""
    from workbench.studies.base import pick, study_class

    args = dict(doc["study_args"])
    if doc.get("overrides"):
        cls = study_class(doc["cell"]["study"])
        args["profile"] = override_profile(pick(args["profile"], cls.profiles), doc["overrides"])
    return args


def override_profile(profile: Any, overrides: Mapping[str, Any]) -> Any:
    """``profile`` with ``overrides`` replaced; unknown fields are a ``ValueError``; JSON lists
    become tuples where the profile holds a tuple."""
    names = {f.name for f in dataclasses.fields(profile)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"profile {profile.name!r} has no field(s) {unknown}; it has {sorted(names)}")
    fixed = {k: tuple(v) if isinstance(v, list) and isinstance(getattr(profile, k), tuple) else v
             for k, v in overrides.items()}
    return dataclasses.replace(profile, **fixed)


class _ConfigDirOnImport(importlib.abc.MetaPathFinder):
    """Points ``YOLO_CONFIG_DIR`` at the cell's folder at the moment ultralytics is first imported
    (ultralytics reads it once, at import; :mod:`workbench.core.offline` sets the shared one on
    every configure call), so parallel cells never write one settings file or DDP temp folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "ultralytics":
            os.environ["YOLO_CONFIG_DIR"] = str(self.folder)
            sys.meta_path.remove(self)
        return None  # the ordinary finders import it


def _own_ultralytics_dir(folder: Path) -> None:
    fonts = folder / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    for font in (ultralytics_config_dir() / "Ultralytics").glob("Arial*.ttf"):  # placed offline at import
        if not (fonts / font.name).exists():
            shutil.copyfile(font, fonts / font.name)
    if "ultralytics" not in sys.modules:
        sys.meta_path.insert(0, _ConfigDirOnImport(folder))
