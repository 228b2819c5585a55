"""Offline by construction: no code path may reach the network at run time.

ultralytics otherwise keeps its settings in the user's home, fetches ``Arial.ttf`` on first
plot, checks for updates and auto-installs requirements; timm/huggingface retry the hub for
about 45 s before failing. All of that is switched off here, before they are imported, and
ultralytics' config dir and runs are pinned under ``outputs/``.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from workbench.core.paths import outputs_dir

ENV = {
    "YOLO_OFFLINE": "1",  # ultralytics: is_online() -> False, no hub/sync/update checks
    "YOLO_AUTOINSTALL": "0",  # ultralytics: never pip-install missing requirements
    "YOLO_VERBOSE": os.environ.get("YOLO_VERBOSE", "False"),
    "HF_HUB_OFFLINE": "1",  # timm / huggingface_hub: fail fast instead of retrying the hub
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def ultralytics_config_dir() -> Path:
    return outputs_dir() / "ultralytics"


def configure_offline() -> None:
    """Set the offline environment and place a local font where ultralytics looks for Arial.

    Idempotent and cheap; called when :mod:`workbench` is imported.
    """
    os.environ.update(ENV)
    cfg = ultralytics_config_dir()
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)
    os.environ.setdefault("MPLCONFIGDIR", str(outputs_dir() / "matplotlib"))
    _place_fonts(cfg / "Ultralytics")


def _place_fonts(folder: Path) -> None:
    """ultralytics downloads Arial.ttf unless it finds one here; matplotlib ships DejaVuSans."""
    targets = [folder / "Arial.ttf", folder / "Arial.Unicode.ttf"]
    if all(t.exists() for t in targets):
        return
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return
    font = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not font.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for t in targets:
        if not t.exists():
            shutil.copyfile(font, t)


def configure_ultralytics() -> None:
    """Import ultralytics with settings pinned inside the project (no sync, runs under outputs/)."""
    configure_offline()
    from ultralytics import settings

    out = outputs_dir()
    wanted = {"sync": False, "runs_dir": str(out / "runs" / "ultralytics"),
              "datasets_dir": str(out / "datasets"), "weights_dir": str(out / "weights")}
    if any(settings.get(k) != v for k, v in wanted.items()):
        settings.update(wanted)
