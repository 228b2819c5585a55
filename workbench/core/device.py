"""Which device to train and predict on, and settings that fit it.

Auto-detection order: CUDA, then Apple MPS, then CPU. A user's choice always wins, and a
choice the machine cannot honour is an error (never a silent fall-back to CPU).
Device strings are torch/ultralytics style: ``"cpu"``, ``"mps"``, ``"cuda:0"``.
"""
from __future__ import annotations

import os
import platform
import re
from contextlib import contextmanager
from typing import Any, Iterator

import torch

_CUDA = re.compile(r"^(?:cuda)?:?(\d+)$")


def pick_device(requested: str | None = None) -> str:
    """Resolve ``requested`` (None/"auto", "cpu", "mps", "cuda", "cuda:1", "0") to a device string.

    Raises ``ValueError`` naming what is available when the request cannot be met.
    """
    req = (requested or "auto").strip().lower()
    if req == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        if _mps_available():
            return "mps"
        return "cpu"
    if req == "cpu":
        return "cpu"
    if req == "mps":
        if not _mps_available():
            raise ValueError(f"device 'mps' requested but Apple MPS is not available; {_available()}")
        return "mps"
    if req == "cuda":
        req = "cuda:0"
    m = _CUDA.match(req)
    if m is None:
        raise ValueError(f"unknown device {requested!r}: use auto, cpu, mps, cuda or cuda:N; {_available()}")
    index = int(m.group(1))
    if not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available; {_available()}")
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {requested!r} requested but only {torch.cuda.device_count()} "
                         f"CUDA device(s) exist; {_available()}")
    return f"cuda:{index}"


def describe_device(device: str) -> dict[str, Any]:
    """What a run record needs to know about ``device`` (a :func:`pick_device` result)."""
    info: dict[str, Any] = {"device": device, "type": device.split(":")[0],
                            "cpu": _cpu_name(), "cpu_count": cpu_count(),
                            "torch": torch.__version__, "platform": platform.platform()}
    if device.startswith("cuda"):
        index = int(device.split(":")[1])
        props = torch.cuda.get_device_properties(index)
        info.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    elif device == "mps":
        info.update(name="Apple MPS")
    else:
        info.update(name=info["cpu"], threads=torch.get_num_threads())
    return info


@contextmanager
def all_cpu_threads(device: str = "cpu") -> Iterator[None]:
    """Let torch use every CPU of this process inside the block (CPU devices only).

    ultralytics' device selection sets torch to ``cpu_count - 1`` threads (to leave a core for
    its data loaders) and leaves it there, so after the first prediction everything torch does
    in the process, the cascade's classifier included, runs on one thread of a 2-core machine.
    Inference has no loader to leave room for; the previous setting is restored afterwards.
    """
    if not str(device).startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_count())
    try:
        yield
    finally:
        torch.set_num_threads(before)


CPU_THREADS_ENV = "WORKBENCH_CPU_THREADS"  # a grid cell's share of the CPUs (grid --cpus-per-cell)


def cpu_count() -> int:
    """CPUs this process may use: the affinity / container limit where the OS tells, capped by
    ``WORKBENCH_CPU_THREADS`` when set (a grid cell's share, so parallel cells do not oversubscribe)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = os.environ.get(CPU_THREADS_ENV, "").strip()
    if share:
        try:
            n = min(n, int(share))
        except ValueError:
            raise ValueError(f"{CPU_THREADS_ENV}={share!r}: expected a whole number of CPU threads") from None
    return max(1, n)


def default_batch(device: str, imgsz: int) -> int:
    """A batch size that fits: small on CPU (memory and speed), ultralytics' 16 on accelerators.

    On CPU the cost per image grows with ``imgsz**2``; 8 images of 640 px use ~2 GB.
    """
    if device == "cpu":
        return 16 if imgsz <= 320 else 8 if imgsz <= 640 else 4
    return 16


def default_workers(device: str) -> int:
    """Data-loader worker processes, never more than the CPUs available.

    On CPU the workers compete with the training threads; two are enough to hide decoding
    (measured: 1 and 2 workers tie on 2 cores, 0 is ~2x slower on the first epoch).
    """
    n = cpu_count()
    return min(2, n) if device == "cpu" else min(8, n)


def use_amp(device: str) -> bool:
    """Mixed precision only on CUDA (ultralytics disables it on CPU/MPS anyway)."""
    return device.startswith("cuda")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _available() -> str:
    found = ["cpu"]
    if _mps_available():
        found.append("mps")
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return "available: " + ", ".join(found)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(info: dict[str, Any]) -> str:
    """A short name for a :func:`describe_device` record, for captions and tables."""
    return str(info.get("name") or f"CPU ({info.get('cpu') or 'unknown'}, {info.get('cpu_count')} cores)")
