"""Where and how ``convert`` writes (issue 16, items 5, 6 and 11's stale temporaries): never
inside its source, one writer per output, no silent replacement, corrections kept, no
``.partial`` left behind. Real BCCD copies; raw bytes checked unchanged.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BCCD, checksums
from workbench.cli.main import main
from workbench.data import canonical
from workbench.data.canonical import read_meta
from workbench.data.importers import convert
from workbench.data.outputs import OutputBusyError, exclusive_output, lock_path


def test_out_inside_the_source_is_refused(tmp_path, bccd_subset, capsys):
    before = checksums(bccd_subset)
    assert main(["convert", str(bccd_subset), "--format", "voc", "--out", str(bccd_subset / "canon")]) == 2
    err = capsys.readouterr().err
    assert "the output lies inside the source" in err and str(bccd_subset) in err
    assert not (bccd_subset / "canon").exists() and checksums(bccd_subset) == before
    # nor may the output hold the source: --overwrite would delete the raw data
    with pytest.raises(ValueError, match="the output holds the source"):
        convert(bccd_subset, "voc", bccd_subset.parent, overwrite=True)
    assert checksums(bccd_subset) == before
    # and not inside the --images folder of a JSON source
    (tmp_path / "ann.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(ValueError, match="inside the source"):
        convert(tmp_path / "ann.json", "coco", bccd_subset / "JPEGImages" / "c", images=bccd_subset / "JPEGImages")


def test_a_second_writer_of_the_same_out_fails_with_a_clear_message(tmp_path, bccd_subset, capsys):
    out = tmp_path / "canon"
    with exclusive_output(out) as tmp:  # another convert is writing (its own open file, its own lock)
        (tmp / "theirs.txt").write_text("x")
        code = main(["convert", str(bccd_subset), "--format", "voc", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "another command is writing this folder right now" in err and str(out) in err
        with pytest.raises(OutputBusyError, match=f"pid {os.getpid()}"):
            convert(bccd_subset, "voc", out, overwrite=True)
    assert (out / "theirs.txt").read_text() == "x"  # the first writer's result, intact
    assert not lock_path(out).exists()
    assert len(read_meta(convert(bccd_subset, "voc", tmp_path / "other"))) == 12


def test_a_folder_created_during_the_write_is_not_replaced(tmp_path, bccd_subset, monkeypatch):
    out = tmp_path / "canon"
    real = canonical._write_image

    def someone_else_writes(*args, **kwargs):
        if not out.exists():  # another tool (not holding the lock) fills the folder meanwhile
            out.mkdir()
            (out / "theirs.txt").write_text("x")
        return real(*args, **kwargs)

    monkeypatch.setattr(canonical, "_write_image", someone_else_writes)
    with pytest.raises(FileExistsError, match="another writer created this folder while this one ran"):
        convert(bccd_subset, "voc", out)
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_overwrite_keeps_a_dataset_holding_label_versions_unless_told(tmp_path, bccd_subset, capsys):
    out = convert(bccd_subset, "voc", tmp_path / "canon")
    (out / "versions" / "v0001").mkdir(parents=True)
    (out / "versions" / "v0001" / "changes.csv").write_text("image_id\n")
    code = main(["convert", str(bccd_subset), "--format", "voc", "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "1 label version(s) in versions/" in err and "--discard-versions" in err
    assert (out / "versions" / "v0001" / "changes.csv").exists()
    assert main(["convert", str(bccd_subset), "--format", "voc", "--out", str(out), "--overwrite",
                 "--discard-versions"]) == 0
    assert not (out / "versions").exists() and len(read_meta(out)) == 12


def test_stale_partials_of_a_killed_writer_are_cleaned(tmp_path, bccd_subset):
    stale = tmp_path / ".canon.k1l2l3ed.partial"
    (stale / "images").mkdir(parents=True)
    unrelated = tmp_path / ".canon2.abcdefgh.partial"  # another output's: not touched
    unrelated.mkdir()
    out = convert(bccd_subset, "voc", tmp_path / "canon")
    assert not stale.exists() and unrelated.exists()
    info = json.loads((out / "dataset.json").read_text())
    assert info["stale_partials_removed"] == [str(stale)]


@pytest.mark.slow
def test_sigterm_during_convert_leaves_no_partial_folder(tmp_path):
    out = tmp_path / "canon"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "convert", str(BCCD), "--format", "voc",
                             "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    assert any(p.name.endswith(".partial") for p in tmp_path.iterdir()), "the writer never started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no .partial, no lock, no half dataset
