"""Shared fixtures: real data locations and small real-data copies in tmp folders."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from workbench.core.paths import VENDORED, shared_data_dir

BCCD = VENDORED["bccd"]
MONUSEG = VENDORED["monuseg"]
MNFINDER = VENDORED["mnfinder"]


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` (to prove raw data is never modified)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_bccd_subset(dest: Path, n: int = 12) -> Path:
    """A VOC tree with the first ``n`` real BCCD images and their XML."""
    (dest / "Annotations").mkdir(parents=True)
    (dest / "JPEGImages").mkdir()
    for xml in sorted((BCCD / "Annotations").glob("*.xml"))[:n]:
        shutil.copy(xml, dest / "Annotations" / xml.name)
        shutil.copy(BCCD / "JPEGImages" / f"{xml.stem}.jpg", dest / "JPEGImages" / f"{xml.stem}.jpg")
    return dest


@pytest.fixture
def bccd_subset(tmp_path: Path) -> Path:
    return copy_bccd_subset(tmp_path / "bccd_voc")


@pytest.fixture(scope="session")
def bccd_canonical(tmp_path_factory) -> Path:
    """The whole vendored BCCD converted once per test session (read-only for tests)."""
    from workbench.data.importers import convert

    return convert(BCCD, "voc", tmp_path_factory.mktemp("canon") / "bccd")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is not on this machine (the fuller datasets); vendored data is tested instead")
    return shared
