"""Thin ultralytics wrapper: train a YOLO detector into a self-describing run folder.

ultralytics does the training; this module only makes it offline, reproducible and recorded:

* architectures come from ultralytics' bundled YAMLs by name (``yolov8n.yaml``,
  ``yolo11s.yaml``, ``yolov5nu.yaml``, ``yolov8n-p2.yaml``) or from a local weights file;
  a name that ultralytics would download (``yolo11n.pt``, ``yolov8n``) is refused;
* runs go to ``outputs/runs/<run_id>/`` (absolute ``project=``/``name=``), with ``run.json``
  and ``metrics.csv`` written beside ultralytics' own files (see :mod:`workbench.models.runs`);
  a multi-GPU run (``device="0,1"``: ultralytics' DDP, started from the command line) trains
  into a subfolder first, as its launcher deletes save_dir (:func:`ultralytics_save_dir`);
* ultralytics' AMP check downloads ``yolo26n.pt`` to compare FP32 and FP16 outputs; here it
  runs only when that file is already in ultralytics' weights folder, otherwise AMP stays on
  for CUDA unless the GPU is on ultralytics' list of GPUs with broken FP16 (see
  :func:`offline_amp_check`). AMP is off on CPU and MPS.

Determinism. Training passes ``seed`` and ``deterministic=True``: ultralytics seeds Python,
NumPy and torch, seeds each data-loader worker and calls
``torch.use_deterministic_algorithms(True, warn_only=True)`` (process-wide). On CPU the same
seed, data, settings and package versions give the same losses and metrics, whatever the
number of workers (tested). On CUDA, cuDNN is set deterministic and cuBLAS gets a fixed
workspace, but operations without a deterministic kernel only *warn* (``warn_only``), AMP's
FP16 rounding and the dynamic loss scaler depend on those results, and different GPU models,
drivers or CUDA/cuDNN versions choose different kernels: expect GPU runs to agree closely,
not bit for bit, and never across machines. ``batch=-1`` (AutoBatch) depends on free GPU
memory, so fix ``batch`` for comparable runs.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import time
from copy import deepcopy
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import yaml

from workbench.core.atomic import write_text
from workbench.core.tables import utc_now
from workbench.data.canonical import read_classes, read_meta
from workbench.core.device import default_batch, default_workers, describe_device, pick_device, use_amp
from workbench.core.offline import configure_ultralytics
from workbench.models.runs import (
    METRICS_FILE, check_run_name, dataset_fingerprint, git_state, make_run_id, package_versions, read_run_record, run_weights, runs_dir, tidy_metrics, update_run_record, write_run_record)

WEIGHT_SUFFIXES = (".pt", ".pth")
YAML_SUFFIXES = (".yaml", ".yml")
EXAMPLES = "yolov8n.yaml, yolo11s.yaml, yolov5nu.yaml, yolov8n-p2.yaml"
# Keys this wrapper owns: where the run goes and what it resumes.
RESERVED = {"data", "project", "name", "exist_ok", "resume", "model", "save_dir", "mode", "task"}
# ultralytics' own list of GPUs whose FP16 gives NaN losses (checks.check_amp).
_AMP_BAD_GPU = re.compile(r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)",
                          re.IGNORECASE)
_AMP_WEIGHTS = "yolo26n.pt"  # the file ultralytics' check_amp would download
# Multi-GPU (DDP) runs: ultralytics' save_dir is this subfolder of the run folder, because its DDP
# launcher deletes save_dir before it starts; run.json stays safe one level up, and the outputs
# are moved up into the run folder when training ends (every run has the same layout).
DDP_SAVE_DIR = "ultralytics"

Callbacks = Mapping[str, Callable[[Any], None] | list[Callable[[Any], None]]]


# ----------------------------------------------------------------------------- model specs

def resolve_model(model: str | Path) -> str:
    """Check a model spec and return what ``YOLO()`` gets, without ever downloading.

    ``model`` is a bundled architecture YAML name (scale letter included, e.g.
    ``yolov8n.yaml``), a local YAML file, or a local weights file (``.pt``).
    """
    text = str(model).strip()
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if suffix in WEIGHT_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(
                f"{text}: weights file not found. The workbench never downloads weights: give a "
                f"local .pt file, or an architecture YAML ({EXAMPLES}) to train from scratch")
        return str(path.resolve())
    if suffix in YAML_SUFFIXES:
        if path.is_file():
            return str(path.resolve())
        if len(path.parts) > 1:
            raise FileNotFoundError(f"{text}: model YAML file not found")
        _check_bundled_yaml(text)
        return text
    raise ValueError(f"model {text!r}: give an architecture YAML name ({EXAMPLES}) to train "
                     "from scratch, or a path to a local .pt weights file (names without a "
                     "suffix would make ultralytics download weights)")


def _check_bundled_yaml(name: str) -> None:
    configure_ultralytics()
    from ultralytics.nn.tasks import yaml_model_load

    try:
        yaml_model_load(name)
    except FileNotFoundError:
        raise ValueError(f"unknown architecture {name!r}: ultralytics has no such YAML "
                         f"(examples: {EXAMPLES})") from None


def load_model(spec: str | Path):
    """``ultralytics.YOLO`` for a spec accepted by :func:`resolve_model`; detection only."""
    return _build(resolve_model(spec))


def _build(resolved: str):
    configure_ultralytics()
    from ultralytics import YOLO

    model = YOLO(resolved)
    if model.task != "detect":
        raise ValueError(f"{resolved}: a {model.task!r} model; the workbench trains detectors only")
    return model


def local_weights(path: str | Path) -> Path:
    """A pretrained weights path, checked to exist (never a download)."""
    p = Path(path).expanduser()
    if p.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(f"pretrained {str(path)!r}: expected a local .pt weights file")
    if not p.is_file():
        raise FileNotFoundError(f"{path}: pretrained weights file not found (the workbench never "
                                "downloads weights; give a local .pt file)")
    return p.resolve()


def architecture_name(model) -> str:
    """``yolov8n`` for a YOLO built from ``yolov8n.yaml`` or from weights trained from it."""
    yaml_file = (getattr(model.model, "yaml", None) or {}).get("yaml_file", "")
    return Path(str(yaml_file)).stem or "model"


def model_stats(weights: str | Path, *, imgsz: int) -> dict[str, Any]:
    """Parameters and GFLOPs (thop, at ``imgsz`` and at 640) of a weights file."""
    configure_ultralytics()
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    net = deepcopy(YOLO(str(weights)).model).float().cpu()
    return {"parameters": int(get_num_params(net)),
            "gflops": round(float(get_flops(net, imgsz)), 3),
            "gflops_640": round(float(get_flops(net, 640)), 3), "gflops_imgsz": imgsz}


# ----------------------------------------------------------------------------- data

def dataset_yaml_path(dataset: str | Path) -> Path:
    """``dataset.yaml`` of a canonical dataset (given as the folder or the YAML itself)."""
    p = Path(dataset).expanduser().resolve()
    yml = p / "dataset.yaml" if p.is_dir() else p
    if not yml.is_file():
        raise FileNotFoundError(f"{dataset}: no dataset.yaml (expected a canonical dataset "
                                "folder made by 'convert')")
    if not (yml.parent / "meta.csv").is_file():
        raise FileNotFoundError(f"{yml.parent}: not a canonical dataset (no meta.csv); run 'convert' first")
    doc = yaml.safe_load(yml.read_text(encoding="utf-8")) or {}
    for split in ("train", "val"):
        entry = doc.get(split)
        if not entry:
            raise ValueError(f"{yml}: no {split!r} entry; run 'split' first")
        target = yml.parent / str(entry)
        if target.suffix == ".txt" and (not target.is_file() or not target.read_text(encoding="utf-8").strip()):
            raise ValueError(f"{target}: the {split} split is empty; training needs {split} images")
    return yml


def max_det_for(dataset: str | Path, *, factor: float = 1.5, floor: int = 300) -> int:
    """Detections to keep per image: ``factor`` x the most objects on one image, at least ``floor``.

    ultralytics keeps 300 by default, too few for dense images (MoNuSeg: up to ~800 nuclei).
    A tiled dataset records the most objects on a *source* image, so a detector trained on
    tiles still keeps enough boxes when it predicts whole images.
    """
    root = Path(dataset)
    root = root.parent if root.is_file() else root
    meta = read_meta(root)
    most = int(meta["n_objects"].max()) if len(meta) else 0
    info_path = root / "dataset.json"
    if info_path.is_file():
        notes = json.loads(info_path.read_text(encoding="utf-8")).get("notes", {}) or {}
        most = max(most, int(notes.get("source_max_objects", 0) or 0))
    return max(floor, math.ceil(factor * most))


# ----------------------------------------------------------------------------- AMP offline

def offline_amp_check(model) -> bool:
    """ultralytics' AMP check without its download.

    With ``yolo26n.pt`` already in ultralytics' weights folder the original check runs (it
    compares FP32 and AMP detections). Otherwise: AMP is on for CUDA except on the GPUs that
    ultralytics lists as broken for FP16, off elsewhere.
    """
    import torch
    from ultralytics.utils import WEIGHTS_DIR
    from ultralytics.utils import checks

    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    if (Path(WEIGHTS_DIR) / _AMP_WEIGHTS).is_file():
        return bool(checks.check_amp(model))
    return not _AMP_BAD_GPU.search(torch.cuda.get_device_name(device))


@contextlib.contextmanager
def _no_download_amp_check() -> Iterator[None]:
    import ultralytics.engine.trainer as trainer_module

    original = trainer_module.check_amp
    trainer_module.check_amp = offline_amp_check
    try:
        yield
    finally:
        trainer_module.check_amp = original


# ----------------------------------------------------------------------------- training

def train(dataset_yaml: str | Path, *, model: str | Path = "yolov8n.yaml", epochs: int = 100,
          imgsz: int = 640, batch: int | None = None, seed: int = 0, device: str | None = None,
          pretrained: str | Path | None = None, run_name: str | None = None,
          runs_root: str | Path | None = None, resume: bool = False, workers: int | None = None,
          plots: bool | None = None, max_det: int | None = None,
          callbacks: Callbacks | None = None, **overrides: Any) -> Path:
    """Train a detector on a canonical dataset; return the run folder.

    ``model``: architecture YAML name or local weights (see :func:`resolve_model`);
    ``pretrained``: local weights whose matching layers initialise a YAML architecture.
    ``batch``/``workers``/``plots`` default to what fits the device (plots only off CPU);
    ``max_det`` defaults to :func:`max_det_for` the dataset. ``resume=True`` continues the
    interrupted run ``run_name`` in ``runs_root`` (see :func:`resume_run`). ``callbacks``
    maps ultralytics events (``on_fit_epoch_end`` ...) to functions. Other keyword
    arguments go to ultralytics unchanged (``lr0=``, ``patience=``, ``mosaic=`` ...).
    """
    root = Path(runs_root).expanduser().resolve() if runs_root else runs_dir()
    if resume:
        if not run_name:
            raise ValueError("resume=True needs run_name= (the id of the run folder to resume)")
        return resume_run(root / check_run_name(run_name), device=device, workers=workers,
                          batch=batch, callbacks=callbacks)
    bad = RESERVED & set(overrides)
    if bad:
        raise ValueError(f"{sorted(bad)} are set by the workbench (use run_name=, runs_root=, "
                         "resume=, model=, the dataset argument)")
    if epochs < 1 or imgsz < 32:
        raise ValueError(f"need epochs >= 1 and imgsz >= 32, got epochs={epochs}, imgsz={imgsz}")

    yml = dataset_yaml_path(dataset_yaml)
    dev = train_device(device)
    spec = resolve_model(model)
    pre = local_weights(pretrained) if pretrained is not None else None
    yolo = _build(spec)
    arch = architecture_name(yolo)

    root.mkdir(parents=True, exist_ok=True)
    if run_name:
        run_id = check_run_name(run_name)
        if (root / run_id).exists() and any((root / run_id).iterdir()):
            raise FileExistsError(f"{root / run_id}: run folder exists; choose another run_name "
                                  "or resume it with resume=True")
    else:
        run_id = make_run_id(yml.parent.name, arch, seed, root=root)
    run_dir = root / run_id

    config = {
        "epochs": epochs, "imgsz": imgsz,
        "batch": batch if batch is not None else default_batch(dev, imgsz),
        "workers": workers if workers is not None else default_workers(dev),
        "seed": seed, "deterministic": True, "device": dev, "amp": use_amp(dev),
        "plots": plots if plots is not None else dev != "cpu",
        "max_det": max_det if max_det is not None else max_det_for(yml.parent),
        "val": True,
        # a .pt model keeps its weights unless `pretrained` replaces them; a YAML starts blank
        "pretrained": str(pre) if pre else spec.endswith(WEIGHT_SUFFIXES),
    }
    config.update(overrides)
    project, name = ultralytics_save_dir(root, run_id, dev)
    args = {**config, "data": str(yml), "project": project, "name": name, "exist_ok": True}
    _check_ultralytics_args(args)

    meta = read_meta(yml.parent)
    record = {
        "run_id": run_id, "status": "running",
        "created": utc_now(), "finished": None, "duration_s": None,
        "dataset": {"path": str(yml.parent), "yaml": str(yml), "name": yml.parent.name,
                    "classes": read_classes(yml.parent),
                    "images": {s: int((meta["split"] == s).sum()) for s in ("train", "val", "test")},
                    "max_objects_per_image": int(meta["n_objects"].max()) if len(meta) else 0,
                    "fingerprint": dataset_fingerprint(yml.parent)},
        "model": {"spec": str(model), "resolved": spec, "architecture": arch,
                  "pretrained": str(pre) if pre else None},
        "config": config, "overrides": dict(overrides),
        "device": _describe(dev),
        "versions": {"python": sys.version.split()[0], **package_versions()},
        "git": git_state(),
        "command": " ".join(sys.argv),
        "resumed": [],
    }
    run_dir.mkdir(parents=True, exist_ok=bool(run_name))  # an automatic id is never reused
    write_run_record(run_dir, record)
    _add_callbacks(yolo, callbacks)
    _run(yolo, run_dir, args, imgsz)
    return run_dir


def train_device(device: str | None) -> str:
    """:func:`pick_device`, plus a GPU list for multi-GPU (DDP) training: ``0,1`` or ``cuda:0,1``
    -> ``cuda:0,1``, each id checked to exist. Run DDP from the command line, never in a notebook
    kernel (:func:`workbench.studies.grid_launch.launch_train` starts it as a subprocess)."""
    ids = [i.strip() for i in str(device or "").lower().replace("cuda:", "").split(",")]
    if len(ids) < 2:
        return pick_device(device)
    picked = [pick_device(f"cuda:{i}").split(":")[1] for i in ids]
    if len(set(picked)) != len(picked):
        raise ValueError(f"device {device!r}: a GPU is listed twice")
    return "cuda:" + ",".join(picked)


def is_multi_gpu(device: str) -> bool:
    return "," in device


def ultralytics_save_dir(root: Path, run_id: str, device: str) -> tuple[str, str]:
    """ultralytics' ``(project, name)``: the run folder itself, or its :data:`DDP_SAVE_DIR`
    subfolder for multi-GPU runs (whose launcher deletes save_dir, which must not hold run.json)."""
    return (str(root / run_id), DDP_SAVE_DIR) if is_multi_gpu(device) else (str(root), run_id)


def hoist_ddp_outputs(run_dir: Path) -> None:
    """Move a multi-GPU run's ultralytics outputs (weights/, results.csv, args.yaml, plots) from
    :data:`DDP_SAVE_DIR` up into the run folder; nothing to do for other runs."""
    sub = Path(run_dir) / DDP_SAVE_DIR
    if not sub.is_dir():
        return
    for item in sub.iterdir():
        target = Path(run_dir) / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    sub.rmdir()


def _describe(device: str) -> dict[str, Any]:
    if not is_multi_gpu(device):
        return describe_device(device)
    ids = device.split(":")[1].split(",")
    return {**describe_device(f"cuda:{ids[0]}"), "device": device, "gpus": len(ids)}


def _check_ultralytics_args(args: dict[str, Any]) -> None:
    """Let ultralytics reject unknown or mistyped options before a run folder exists."""
    from ultralytics.cfg import get_cfg

    try:
        get_cfg(overrides=args)
    except (SyntaxError, TypeError, ValueError) as exc:
        raise ValueError(f"training option: {str(exc).strip()}") from None


def resume_run(run_dir: str | Path, *, device: str | None = None, workers: int | None = None,
               batch: int | None = None, callbacks: Callbacks | None = None) -> Path:
    """Continue an interrupted run from its ``weights/last.pt`` (same folder, same settings).

    Only the device, workers and batch may change; the optimizer, EMA, epoch counter and
    learning-rate schedule come from the checkpoint.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    record = read_run_record(run_dir)
    last = run_dir / "weights" / "last.pt"
    if not last.is_file():
        raise FileNotFoundError(f"{run_dir}: nothing to resume (no weights/last.pt; the run "
                                "stopped before its first epoch ended: start it again)")
    if record.get("status") == "finished":
        raise ValueError(f"{run_dir}: run finished all {record['config']['epochs']} epochs; "
                         "nothing to resume")
    config = record["config"]
    try:
        dev = train_device(device if device is not None else config["device"])
    except ValueError as exc:
        raise ValueError(f"{run_dir}: cannot resume on the run's device: {exc}; pass device=") from None
    args: dict[str, Any] = {"resume": str(last), "device": dev, "save_dir": str(run_dir),
                            "plots": config.get("plots", False), "val": True}
    if workers is not None:
        args["workers"] = workers
    if batch is not None:
        args["batch"] = batch
    configure_ultralytics()
    from ultralytics import YOLO

    yolo = YOLO(str(last))
    record["resumed"] = [*record.get("resumed", []), {"at": utc_now(), "device": dev}]
    record.update(status="running", error=None)
    write_run_record(run_dir, record)
    _add_callbacks(yolo, callbacks)
    _run(yolo, run_dir, args, int(config["imgsz"]))
    return run_dir


def _all_threads_on_cpu(trainer) -> None:
    """ultralytics trains on CPU with ``workers=0`` (loading in the main process) but sets torch to
    ``cpu_count - 1`` threads, a core kept free for loaders it does not start: on a 2-core machine
    training ran on one core. Every CPU of the process is given back when training starts."""
    import torch

    from workbench.core.device import cpu_count

    if getattr(trainer.device, "type", "") == "cpu":
        torch.set_num_threads(cpu_count())


def _run(yolo, run_dir: Path, args: dict[str, Any], imgsz: int) -> None:
    """Call ultralytics, then finish the record whatever happened (and re-raise on failure)."""
    import torch

    start, threads = time.perf_counter(), torch.get_num_threads()
    yolo.add_callback("on_pretrain_routine_start", _all_threads_on_cpu)
    try:
        with _no_download_amp_check():
            yolo.train(**args)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        _finish(run_dir, yolo, status, time.perf_counter() - start, imgsz,
                error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        torch.set_num_threads(threads)
    _finish(run_dir, yolo, "finished", time.perf_counter() - start, imgsz)


def _finish(run_dir: Path, yolo, status: str, seconds: float, imgsz: int, error: str | None = None) -> None:
    hoist_ddp_outputs(run_dir)
    record = read_run_record(run_dir)
    changes: dict[str, Any] = {"status": status, "finished": utc_now(), "error": error,
                               "duration_s": round((record.get("duration_s") or 0) + seconds, 2)}
    results = run_dir / "results.csv"
    if results.is_file():
        metrics = tidy_metrics(results)
        write_text(run_dir / METRICS_FILE, metrics.to_csv(index=False))
        changes["epochs_completed"] = int(len(metrics))
        if len(metrics) and "mAP50_95" in metrics:
            best = metrics.loc[metrics["mAP50_95"].idxmax()]
            changes["final_metrics"] = _row(metrics.iloc[-1])
            changes["best_metrics"] = _row(best)
    args_file = run_dir / "args.yaml"
    if args_file.is_file():
        changes["ultralytics_args"] = yaml.safe_load(args_file.read_text(encoding="utf-8"))
    trainer = getattr(yolo, "trainer", None)
    if trainer is not None and hasattr(trainer, "amp"):
        changes["amp_used"] = bool(trainer.amp)
    try:
        changes["model"] = {**record.get("model", {}), **model_stats(run_weights(run_dir), imgsz=imgsz)}
    except FileNotFoundError:
        pass
    update_run_record(run_dir, **changes)


def _row(row) -> dict[str, Any]:
    return {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}


def _add_callbacks(yolo, callbacks: Callbacks | None) -> None:
    for event, fns in (callbacks or {}).items():
        for fn in fns if isinstance(fns, (list, tuple)) else [fns]:
            yolo.add_callback(event, fn)
