"""Multi-GPU runs outside the notebook kernel: the run folder survives ultralytics' DDP launcher
(which deletes save_dir), GPU lists are checked, and launch_train runs the ``train`` command as
its own process group and follows its log. Real DDP needs >= 2 GPUs and is not run here."""
from __future__ import annotations

import json

import pytest

from workbench.models import yolo
from workbench.models.runs import load_run
from workbench.studies.grid_launch import launch_train, train_command


def test_a_multi_gpu_run_trains_into_a_subfolder_so_run_json_survives_the_ddp_launcher(tmp_path):
    assert yolo.ultralytics_save_dir(tmp_path, "r1", "cpu") == (str(tmp_path), "r1")
    assert yolo.ultralytics_save_dir(tmp_path, "r1", "cuda:0") == (str(tmp_path), "r1")
    assert yolo.ultralytics_save_dir(tmp_path, "r1", "cuda:0,1") == (str(tmp_path / "r1"), yolo.DDP_SAVE_DIR)

    run = tmp_path / "r1"
    save = run / yolo.DDP_SAVE_DIR
    (save / "weights").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": "r1", "status": "running"}))
    (save / "weights" / "best.pt").write_bytes(b"w")
    (save / "results.csv").write_text("epoch\n1\n")
    (save / "args.yaml").write_text("epochs: 1\n")
    yolo.hoist_ddp_outputs(run)
    assert sorted(p.name for p in run.iterdir()) == ["args.yaml", "results.csv", "run.json", "weights"]
    assert load_run(run)["weights"] == {"best": str(run / "weights" / "best.pt")}  # the layout every run has
    yolo.hoist_ddp_outputs(run)  # nothing left to move: no-op


def test_gpu_lists_are_checked_before_training(monkeypatch):
    assert yolo.train_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        yolo.train_device("0,1")
    monkeypatch.setattr(yolo, "pick_device", lambda d: d)  # as if two GPUs existed
    assert yolo.train_device("0,1") == yolo.train_device("cuda:0,1") == "cuda:0,1"
    with pytest.raises(ValueError, match="listed twice"):
        yolo.train_device("1,1")


@pytest.mark.slow  # a Python subprocess
def test_launch_train_builds_the_cli_command_and_reports_a_failed_run(tmp_path):
    cmd = train_command("data/bccd", run_name="r", runs_root=tmp_path, device="0,1", batch=32, lr0=0.01)
    assert cmd[1:4] == ["-m", "workbench", "train"] and cmd[cmd.index("--device") + 1] == "0,1"
    assert cmd[-2:] == ["--set", "lr0=0.01"] and cmd[cmd.index("--batch") + 1] == "32"
    seen: list[str] = []
    with pytest.raises(RuntimeError, match="exited with code 2") as err:
        launch_train(tmp_path / "no-such-dataset", device="cpu", run_name="r", runs_root=tmp_path, log=seen.append,
                     poll_s=0.2)
    assert "no dataset.yaml" in str(err.value) and any("no dataset.yaml" in line for line in seen)
    assert (tmp_path / "r.log").is_file()


@pytest.mark.slow
def test_launch_train_runs_the_train_command_and_follows_its_log(bccd_canonical, tmp_path):
    seen: list[str] = []
    run = launch_train(bccd_canonical, device="cpu", epochs=1, imgsz=64, batch=4, run_name="launched",
                       runs_root=tmp_path, log=seen.append, poll_s=0.5, fraction=0.05)
    assert run == tmp_path / "launched" and load_run(run)["status"] == "finished"
    assert any("status finished" in line for line in seen)  # the command's last line reached the notebook
