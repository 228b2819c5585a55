"""Atomic writes leave files readable as a plain open() would (not mkstemp's private 0600)."""
from __future__ import annotations

import os
import stat

import pytest

from workbench.core.atomic import new_file, new_folder, write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_and_folders_get_the_umask_mode(tmp_path, umask_022):
    report = write_text(tmp_path / "report.html", "<p>ok</p>\n")
    assert _mode(report) == 0o644 and report.read_text() == "<p>ok</p>\n"
    with new_file(tmp_path / "table.bin") as tmp:
        tmp.write_bytes(b"\x00\x01")
    assert _mode(tmp_path / "table.bin") == 0o644
    with new_folder(tmp_path / "results") as tmp:
        write_text(tmp / "a.csv", "x\n1\n")
    assert _mode(tmp_path / "results") == 0o755 and _mode(tmp_path / "results" / "a.csv") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "results", "table.bin"]  # no temp left


def test_a_stricter_umask_and_a_replaced_files_mode_are_respected(tmp_path):
    old = os.umask(0o077)
    try:
        assert _mode(write_text(tmp_path / "private.txt", "x")) == 0o600
    finally:
        os.umask(old)
    shared = tmp_path / "shared.txt"
    shared.write_text("old")
    shared.chmod(0o664)
    write_text(shared, "new")
    assert _mode(shared) == 0o664 and shared.read_text() == "new"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with new_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
