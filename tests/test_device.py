"""Device choice: auto-detection order, overrides, clear errors, settings that fit the machine."""
from __future__ import annotations

import pytest
import torch

from workbench.core import device as dv


def test_auto_picks_the_best_available_device():
    got = dv.pick_device(None)
    assert got == dv.pick_device("auto") == dv.pick_device(" AUTO ")
    if torch.cuda.is_available():
        assert got == "cuda:0"
    elif dv._mps_available():
        assert got == "mps"
    else:
        assert got == "cpu"


def test_cpu_override_always_works():
    assert dv.pick_device("cpu") == "cpu"
    assert dv.pick_device("CPU") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("request_", ["cuda", "cuda:0", "0"])
def test_cuda_request_without_cuda_is_a_clear_error(request_):
    with pytest.raises(ValueError, match="CUDA is not available.*available: cpu"):
        dv.pick_device(request_)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_is_checked():
    assert dv.pick_device("cuda") == dv.pick_device("0") == "cuda:0"
    with pytest.raises(ValueError, match="CUDA device"):
        dv.pick_device(f"cuda:{torch.cuda.device_count()}")


def test_unknown_device_names_the_choices():
    with pytest.raises(ValueError, match="unknown device 'tpu'.*auto, cpu, mps, cuda"):
        dv.pick_device("tpu")


def test_description_for_run_records():
    info = dv.describe_device("cpu")
    assert info["device"] == "cpu" and info["type"] == "cpu"
    assert info["cpu_count"] == dv.cpu_count() >= 1
    assert info["torch"] == torch.__version__
    assert isinstance(info["name"], str) and info["name"]


def test_cpu_settings_fit_the_machine():
    assert 1 <= dv.default_workers("cpu") <= dv.cpu_count()
    assert dv.default_workers("cuda:0") <= dv.cpu_count()
    assert dv.default_batch("cpu", 160) <= 16
    assert dv.default_batch("cpu", 1024) < dv.default_batch("cpu", 320)
    assert dv.use_amp("cuda:0") is True
    assert dv.use_amp("cpu") is False and dv.use_amp("mps") is False


def test_all_cpu_threads_uses_every_cpu_inside_and_restores_after():
    import torch

    from workbench.core.device import all_cpu_threads, cpu_count

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what ultralytics' device selection leaves on a 2-core machine
    try:
        with all_cpu_threads("cpu"):
            assert torch.get_num_threads() == cpu_count()
        assert torch.get_num_threads() == 1
        with all_cpu_threads("cuda:0"):  # accelerators: thread count untouched
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cpu_count_respects_a_grid_cells_share(monkeypatch):
    from workbench.core.device import CPU_THREADS_ENV, cpu_count
    from workbench.studies.grid_cells import cell_env

    monkeypatch.delenv(CPU_THREADS_ENV, raising=False)
    every = cpu_count()
    env = cell_env(gpus=None, cpus=1)
    assert env["OMP_NUM_THREADS"] == env[CPU_THREADS_ENV] == "1"
    monkeypatch.setenv(CPU_THREADS_ENV, "1")
    assert cpu_count() == 1
    monkeypatch.setenv(CPU_THREADS_ENV, str(every + 8))  # a share never exceeds what the OS allows
    assert cpu_count() == every
    monkeypatch.setenv(CPU_THREADS_ENV, "two")
    with pytest.raises(ValueError, match=CPU_THREADS_ENV):
        cpu_count()


def test_cpu_training_gets_every_core_back_from_ultralytics():
    """ultralytics leaves torch at cpu_count - 1 threads while it trains on CPU without loader workers;
    the training callback gives the process every core (and only on CPU)."""
    import types

    import torch

    from workbench.core.device import cpu_count
    from workbench.models.yolo import _all_threads_on_cpu

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _all_threads_on_cpu(types.SimpleNamespace(device=torch.device("cuda", 0)))
        assert torch.get_num_threads() == 1
        _all_threads_on_cpu(types.SimpleNamespace(device=torch.device("cpu")))
        assert torch.get_num_threads() == cpu_count()
    finally:
        torch.set_num_threads(before)
