"""Shared fixtures (real data locations, small real-data copies in tmp folders) and the slow-mark guard."""
from __future__ import annotations

import functools
import hashlib
import importlib.abc
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

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


# --- the quick loop trains nothing: `pytest -m "not slow"` --------------------------------------
# Every training / notebook entry point is wrapped as soon as its module is imported (an import
# hook, so a quick run that never needs ultralytics or papermill does not pay for importing them).
# Inside a test not marked slow, a wrapped entry point fails the test instead of running. Modules
# that did `from x import train` get the wrapper too, because they import from the wrapped module.
GUARDED: dict[str, dict[str, str]] = {  # module -> {attribute ("Class.method" allowed): what it does}
    "workbench.models.yolo": {"train": "trains a model"},
    "workbench.models.classifier": {"train_classifier": "trains a model"},
    "workbench.models.dense": {"train_dense": "trains a model"},
    "workbench.studies.notebooks": {"run_notebook": "executes a notebook"},
    "papermill.execute": {"execute_notebook": "executes a notebook"},
    # ultralytics itself, so a direct YOLO(...).train() or trainer.train() is caught as well
    "ultralytics.engine.model": {"Model.train": "trains a model"},
    "ultralytics.engine.trainer": {"BaseTrainer.train": "trains a model"},
}
_NOW: dict[str, Any] = {"item": None, "fixtures": []}  # the running test and the fixtures being set up
_TRAINING_FIXTURES: set[tuple[str, str]] = set()  # (baseid, name) of fixtures seen training


def refusal(nodeid: str, what: str) -> str:
    """The failure message for a test that ``what`` ("trains a model (...)") without the slow mark."""
    return f"{nodeid} {what} but is not marked slow: add @pytest.mark.slow"


def _guarded(original: Callable, what: str) -> Callable:
    @functools.wraps(original)
    def guard(*args, **kwargs):
        item = _NOW["item"]
        if item is not None:
            # remember fixtures that train, so a later unmarked test that reuses their (cached)
            # result fails as well, whichever order the tests run in
            _TRAINING_FIXTURES.update((f.baseid, f.argname) for f in _NOW["fixtures"])
            if item.get_closest_marker("slow") is None:
                pytest.fail(refusal(item.nodeid, what), pytrace=False)
        return original(*args, **kwargs)

    guard.__training_guard__ = True
    return guard


def _guard_module(module: ModuleType) -> None:
    for attr, what in GUARDED.get(module.__name__, {}).items():
        owner, _, name = attr.rpartition(".")
        target = getattr(module, owner) if owner else module
        original = getattr(target, name)
        if not getattr(original, "__training_guard__", False):
            setattr(target, name, _guarded(original, f"{what} ({module.__name__}.{attr})"))


class _GuardOnImport(importlib.abc.MetaPathFinder):
    """Finds GUARDED modules through the other finders and wraps their entry points once loaded."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in GUARDED:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(fullname, path, target)
            if spec is not None and spec.loader is not None:
                execute = spec.loader.exec_module

                def exec_module(module, execute=execute):
                    execute(module)
                    _guard_module(module)

                spec.loader.exec_module = exec_module  # this loader instance serves this module only
                return spec
        return None


sys.meta_path.insert(0, _GuardOnImport())
for _name in GUARDED:
    if _name in sys.modules:  # imported before this conftest (by a plugin)
        _guard_module(sys.modules[_name])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _NOW["item"] = item
    try:
        return (yield)
    finally:
        _NOW["item"] = None


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    _NOW["fixtures"].append(fixturedef)
    try:
        return (yield)
    finally:
        _NOW["fixtures"].pop()


def pytest_runtest_setup(item):
    """An unmarked test that uses a fixture an earlier (slow) test saw training fails here."""
    if item.get_closest_marker("slow") is not None:
        return
    names = set(item.fixturenames)
    trained = sorted(n for base, n in _TRAINING_FIXTURES if n in names and item.nodeid.startswith(base))
    if trained:
        pytest.fail(refusal(item.nodeid, f"uses fixture(s) {trained} that train a model / execute a notebook"),
                    pytrace=False)
