"""Offline by construction: the main commands make no network attempt at all."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BCCD

pytestmark = pytest.mark.slow  # each test runs a fresh interpreter on real data (~1 min together)

TESTS = Path(__file__).resolve().parent


def _run_guarded(code: str, tmp_path: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(TESTS), WORKBENCH_OUTPUTS=str(tmp_path / "outputs"))
    env.pop("YOLO_CONFIG_DIR", None)
    proc = subprocess.run([sys.executable, "-c", "import _netguard\n" + code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_convert_and_audit_make_no_network_attempt(tmp_path):
    out = _run_guarded(
        "from workbench.cli.main import main\n"
        f"assert main(['convert', {str(BCCD)!r}, '--format', 'voc', '--out', 'ds']) == 0\n"
        "assert main(['audit', 'ds', '--out', 'audit', '--workers', '1']) == 0\n", tmp_path)
    assert "NETWORK_ATTEMPTS=0" in out, out[-2000:]
    assert (tmp_path / "audit" / "audit.json").exists()


def test_ultralytics_builds_a_model_and_finds_its_font_offline(tmp_path):
    out = _run_guarded(
        "import workbench\n"
        "from workbench.core.offline import configure_ultralytics\n"
        "configure_ultralytics()\n"
        "from ultralytics import YOLO, settings\n"
        "from ultralytics.utils.checks import check_font\n"
        "m = YOLO('yolov8n.yaml')\n"
        "assert sum(p.numel() for p in m.model.parameters()) > 1e6\n"
        "font = check_font('Arial.ttf')\n"
        "assert font is not None and str(font).startswith(%r), font\n"
        "assert settings['sync'] is False\n"
        "print('RUNS', settings['runs_dir'])\n" % str(tmp_path / "outputs"), tmp_path)
    assert "NETWORK_ATTEMPTS=0" in out, out[-2000:]
    assert f"RUNS {tmp_path / 'outputs'}" in out
