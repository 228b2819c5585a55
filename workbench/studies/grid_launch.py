"""Multi-GPU training from a notebook: the ``train`` command as a subprocess, its log followed here.

ultralytics trains on several GPUs (``device="0,1"``) by starting ``torch.distributed.run`` on a
generated script; inside a Jupyter kernel that appears to hang (the workers' output is not
shown) and an interrupt leaves workers behind (ultralytics issues 1295, 3904, 4261).
:func:`launch_train` runs ``python -m workbench train ... --device 0,1`` as its own process
group, prints its log as it grows, and kills the whole group on an interrupt or after
``timeout_s``. The run folder is the one the command line makes: ``run.json`` stays outside
ultralytics' save_dir, which its DDP launcher deletes (see :mod:`workbench.models.yolo`).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from workbench.models.runs import check_run_name, make_run_id, runs_dir
from workbench.studies.grid_cells import GroupProcess, cell_env


def train_command(dataset: str | Path, *, run_name: str, runs_root: Path, device: str, model: str = "yolov8n.yaml",
                  epochs: int = 100, imgsz: int = 640, batch: int | None = None, seed: int = 0,
                  pretrained: str | Path | None = None, **overrides: Any) -> list[str]:
    """The ``python -m workbench train`` command line for these settings."""
    cmd = [sys.executable, "-m", "workbench", "train", str(dataset), "--model", str(model), "--epochs", str(epochs),
           "--imgsz", str(imgsz), "--seed", str(seed), "--device", str(device), "--name", run_name,
           "--runs-root", str(runs_root)]
    if batch is not None:
        cmd += ["--batch", str(batch)]
    if pretrained is not None:
        cmd += ["--pretrained", str(pretrained)]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    return cmd


def launch_train(dataset: str | Path, *, device: str, model: str = "yolov8n.yaml", epochs: int = 100,
                 imgsz: int = 640, batch: int | None = None, seed: int = 0, run_name: str | None = None,
                 runs_root: str | Path | None = None, pretrained: str | Path | None = None,
                 timeout_s: float | None = None, log: Callable[[str], None] = print, poll_s: float = 2.0,
                 **overrides: Any) -> Path:
    """Train in a ``python -m workbench train`` subprocess (e.g. ``device="0,1"`` for DDP) and
    follow its log (``<runs_root>/<run_name>.log``) through ``log``; return the run folder.

    A failed command raises ``RuntimeError`` with the end of the log; ``KeyboardInterrupt`` (the
    notebook's stop button) or ``timeout_s`` kills the command's whole process group first.
    Give ``batch`` for multi-GPU runs: ultralytics refuses automatic batch sizes there.
    """
    root = Path(runs_root).expanduser().resolve() if runs_root else runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    name = check_run_name(run_name) if run_name else make_run_id(Path(dataset).name, Path(str(model)).stem, seed,
                                                                 root=root)
    log_path = root / f"{name}.log"
    cmd = train_command(dataset, run_name=name, runs_root=root, device=device, model=model, epochs=epochs,
                        imgsz=imgsz, batch=batch, seed=seed, pretrained=pretrained, **overrides)
    proc = GroupProcess(cmd, log_path=log_path, env=cell_env(gpus=None, cpus=None), timeout_s=timeout_s)
    offset = log_path.stat().st_size
    try:
        while (rc := proc.poll()) is None:
            offset = _follow(log_path, offset, log)
            time.sleep(poll_s)
    except BaseException:
        proc.kill()  # the interrupt reaches this kernel only; the DDP workers go with the group
        raise
    _follow(log_path, offset, log)
    if rc != 0:
        why = f"timed out after {timeout_s:g} s" if proc.timed_out else f"exited with code {rc}"
        raise RuntimeError(f"training {name} {why}; end of {log_path}:\n{_tail(log_path)}")
    return root / name


def _follow(path: Path, offset: int, log: Callable[[str], None]) -> int:
    """Pass the complete lines written since ``offset`` to ``log`` (of a progress bar redrawn with
    carriage returns, its last state); return the new offset."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        chunk = fh.read()
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].decode("utf-8", "replace").splitlines():
        if line.strip():
            log(line.rsplit("\r", 1)[-1])
    return offset + end


def _tail(path: Path, n: int = 3000) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    return text[-n:]
