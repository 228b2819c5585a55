"""The slow mark is enforced: a test not marked slow that trains or executes a notebook fails."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import refusal

TESTS = Path(__file__).resolve().parent


TRAINS, EXECUTES = "trains a model", "executes a notebook"
ENTRY_POINTS = [  # module, attribute, what the guard says it does
    ("workbench.models.yolo", "train", f"{TRAINS} (workbench.models.yolo.train)"),
    ("workbench.models.classifier", "train_classifier", f"{TRAINS} (workbench.models.classifier.train_classifier)"),
    ("workbench.models.dense", "train_dense", f"{TRAINS} (workbench.models.dense.train_dense)"),
    ("workbench.studies.notebooks", "run_notebook", f"{EXECUTES} (workbench.studies.notebooks.run_notebook)"),
    # imported by name at module level: the name is bound to the guard, not to the bare function
    ("workbench.studies.demo", "run_notebook", f"{EXECUTES} (workbench.studies.notebooks.run_notebook)"),
    ("papermill", "execute_notebook", f"{EXECUTES} (papermill.execute.execute_notebook)"),
    ("ultralytics", "YOLO.train", f"{TRAINS} (ultralytics.engine.model.Model.train)"),
    ("ultralytics.engine.trainer", "BaseTrainer.train", f"{TRAINS} (ultralytics.engine.trainer.BaseTrainer.train)"),
]


# never marked slow, although importing papermill takes seconds: the guard lets a slow test through
@pytest.mark.parametrize("module, attr, what", ENTRY_POINTS, ids=[f"{m}.{a}" for m, a, _ in ENTRY_POINTS])
def test_an_unmarked_test_cannot_train_or_execute_a_notebook(request, tmp_path, module, attr, what):
    target = importlib.import_module(module)
    for part in attr.split("."):
        target = getattr(target, part)
    # the guard refuses before the entry point (or method: the path stands in for self) reads its arguments
    with pytest.raises(pytest.fail.Exception) as failed:
        target(tmp_path / "dataset.yaml")
    assert str(failed.value) == refusal(request.node.nodeid, what)
    assert str(failed.value).endswith("but is not marked slow: add @pytest.mark.slow")


@pytest.mark.slow
def test_fixtures_that_train_are_caught_whichever_test_sets_them_up(tmp_path):
    """In a separate pytest run on a stand-in trainer: a fixture that trains inside an unmarked
    test fails it, a slow test may train, and an unmarked test that reuses the slow test's cached
    session fixture fails too (otherwise `-m "not slow"` would fail where the full run passes)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: trains\n")
    (tmp_path / "fake_trainer.py").write_text("def train():\n    return 'weights'\n")
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("project_conftest", {str(TESTS / "conftest.py")!r})
        guard = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = guard
        spec.loader.exec_module(guard)
        guard.GUARDED["fake_trainer"] = {{"train": "trains a model"}}
        from project_conftest import pytest_fixture_setup, pytest_runtest_protocol, pytest_runtest_setup
        """))
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.fixture(scope="session")
        def model():
            import fake_trainer
            return fake_trainer.train()

        @pytest.fixture
        def other_model():
            import fake_trainer
            return fake_trainer.train()

        def test_a_unmarked_fixture_trains(other_model):
            pass

        @pytest.mark.slow
        def test_b_slow_trains(model):
            assert model == "weights"

        def test_c_unmarked_reuses(model):
            pass

        def test_d_unmarked_calls():
            import fake_trainer
            fake_trainer.train()
        """))
    # no installed plugins: this run needs none, and napari's take seconds to import
    env = dict(os.environ, WORKBENCH_OUTPUTS=str(tmp_path / "outputs"), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert re.search(r"\b1 failed, 1 passed, (\d+ warnings?, )?2 errors\b", out), out[-3000:]
    assert refusal("test_inner.py::test_a_unmarked_fixture_trains", "trains a model (fake_trainer.train)") in out
    assert refusal("test_inner.py::test_c_unmarked_reuses",
                   "uses fixture(s) ['model'] that train a model / execute a notebook") in out
    assert refusal("test_inner.py::test_d_unmarked_calls", "trains a model (fake_trainer.train)") in out
