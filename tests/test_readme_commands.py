"""Every command the README shows is run by a test here, with the README's own arguments (or, for
the study-grid commands whose examples need GPUs or a cluster, by the test named in ELSEWHERE).

The commands are read from README.md (bash blocks and inline code): each test takes its line
from there, fills the placeholders (DIR, OUT, outputs/runs/<run>, ...) with real data in a tmp
folder, shrinks only what would take long (epochs, image size) and runs it: ``python -m
workbench ...`` through the CLI's ``main`` (the same parser), ``make ...`` as a subprocess with
this interpreter (``-o .venv/.installed``: the environment step is not repeated inside the
suite). :func:`test_every_readme_command_has_a_test` fails when the README gains a command no
test runs, or a test names a command the README no longer shows.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from _tiny import tiny_bccd
from conftest import BCCD, MNFINDER
from workbench.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
COVERS: dict[str, list[str]] = {}  # README command key -> tests that run it


def covers(*keys: str) -> Callable:
    """Register the README commands (``"workbench convert"``, ``"make audit"``) a test runs."""
    def mark(test: Callable) -> Callable:
        for key in keys:
            COVERS.setdefault(key, []).append(test.__name__)
        return test
    return mark


# ----------------------------------------------------------------------------- reading the README

def readme_commands(text: str | None = None) -> list[str]:
    """Every ``python -m workbench ...`` and ``make ...`` command in README.md: bash-block lines
    (continuations joined, comments dropped) and inline code spans."""
    text = (ROOT / "README.md").read_text(encoding="utf-8") if text is None else text
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(" ".join(line.split()))
    inline = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += [" ".join(c.split()) for c in re.findall(r"`([^`\n]+)`", inline)]
    return [c for c in lines if c.startswith(("python -m workbench ", "make "))]


def command_key(command: str) -> str:
    """``"workbench library compose"``, ``"workbench train"``, ``"make audit"``."""
    words = command.split()
    if words[0] == "make":
        return f"make {words[1].split('=')[0]}" if len(words) > 1 else "make"
    sub = words[3:5] if len(words) > 4 and words[3] in ("library", "cascade") else words[3:4]
    return "workbench " + " ".join(sub)


def readme_argv(start: str, *, contains: str = "", subs: dict[str, str] | None = None,
                options: dict[str, str] | None = None, choose: str | None = None) -> list[str]:
    """The README command beginning ``start`` (and containing ``contains``) as argv for ``main``:
    ``[optional]`` parts kept, ``{a,b}`` replaced by ``choose``, placeholder tokens by ``subs``,
    option values by ``options`` (``{"--epochs": "1"}``)."""
    found = [c for c in readme_commands() if (c + " ").startswith(start + " ") and contains in c]
    assert len(found) == 1, f"README: {len(found)} commands start with {start!r} and contain {contains!r}"
    line = re.sub(r"\[([^\]]*)\]", r"\1", found[0])
    line = re.sub(r"\{[^}]*\}", lambda m: choose or m.group(0), line)
    argv = [(subs or {}).get(tok, tok) for tok in shlex.split(line)]
    for opt, value in (options or {}).items():
        argv[argv.index(opt) + 1] = value
    return argv[3:] if argv[:3] == ["python", "-m", "workbench"] else argv


def run_make(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``make ARGS`` in the checkout with this interpreter (the .venv stamp is taken as up to date)."""
    return subprocess.run(["make", "-o", ".venv/.installed", f"PY={sys.executable}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


# Commands whose README examples need GPUs, a Ray cluster or hours: the test that runs the command
# (same CLI, a small study) lives with the feature.
ELSEWHERE = {
    "workbench grid": "tests/test_grid.py::test_cli_grid_and_cell",
    "workbench cell": "tests/test_grid.py::test_cli_grid_and_cell",
    # hours of training per study: publishing is tested on a constructed study, the make target below
    "workbench results": "tests/test_results.py::test_publish_copies_tables_small_figures_and_writes_readme_and_provenance",
    "make results": "tests/test_readme_commands.py::test_make_results_runs_the_results_command",
}


def test_make_results_runs_the_results_command():
    out = run_make("-n", "results", "ONLY=03 04")
    assert out.returncode == 0, out.stderr
    assert "-m workbench results --profile cpu --only 03 04" in out.stdout


def test_every_readme_command_has_a_test():
    shown = {command_key(c) for c in readme_commands()}
    tested = set(COVERS) | set(ELSEWHERE)
    assert shown - tested == set(), "README commands without a test that runs them"
    assert tested - shown == set(), "tests for commands the README no longer shows"
    tests = {name for name in dir(sys.modules[__name__]) if name.startswith("test_")}
    assert {t for ts in COVERS.values() for t in ts} <= tests
    for where in ELSEWHERE.values():
        path, name = where.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(encoding="utf-8"), re.M), where


def test_the_readme_reader_finds_blocks_continuations_and_inline_commands():
    text = ("```bash\npython -m workbench library compose DIR --out LIB \\\n    --n 100   # why\n"
            "# a comment\nmake demo    # all\n```\nRun `make audit DATASET=bccd` or `python -m workbench notebook x`.")
    assert readme_commands(text) == ["python -m workbench library compose DIR --out LIB --n 100", "make demo",
                                     "make audit DATASET=bccd", "python -m workbench notebook x"]
    assert [command_key(c) for c in readme_commands(text)] == ["workbench library compose", "make demo",
                                                               "make audit", "workbench notebook"]


# ----------------------------------------------------------------------------- data commands

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.mark.slow  # five imports and an audit: ~30 s
@covers("workbench convert", "workbench split", "workbench audit", "workbench export", "workbench tile")
def test_data_commands(data_dir, monkeypatch, capsys):
    monkeypatch.chdir(data_dir)
    src = data_dir / "voc"
    shutil.copytree(BCCD / "Annotations", src / "Annotations", ignore=lambda d, names: sorted(names)[12:])
    (src / "JPEGImages").mkdir()
    for xml in sorted((src / "Annotations").glob("*.xml")):
        shutil.copy(BCCD / "JPEGImages" / f"{xml.stem}.jpg", src / "JPEGImages")
    assert main(readme_argv("python -m workbench convert", subs={"SRC": str(src), "DIR": "bccd"}, choose="voc")) == 0
    assert len(pd.read_csv("bccd/meta.csv")) == 12
    split = readme_argv("python -m workbench split", subs={"DIR": "bccd", "N": "3", "COL": "labelled", "BITS": "4"})
    assert main([a for a in split if a != "--exact"]) == 0  # the stable hash placement ...
    assert main(readme_argv("python -m workbench split", subs={"DIR": "bccd"})[:2] + ["--exact"]) == 0  # ... or exact
    assert set(pd.read_csv("bccd/meta.csv")["split"]) <= {"train", "val", "test"}
    assert main(readme_argv("python -m workbench audit", subs={"DIR": "bccd", "OUT": "audit"})) == 0
    assert json.loads(Path("audit/audit.json").read_text())["images"] == 12
    for fmt in ("yolo", "coco", "labelme"):
        assert main(readme_argv("python -m workbench export", subs={"DIR": "bccd", "PATH": f"export_{fmt}"},
                                choose=fmt)) == 0, fmt
        assert Path(f"export_{fmt}").exists()
    assert main(readme_argv("python -m workbench tile", subs={"DIR": "bccd", "TILES": "tiles"},
                            options={"--tile": "320"})) == 0
    assert len(pd.read_csv("tiles/meta.csv")) > 12
    assert "error" not in capsys.readouterr().err.lower()


@pytest.mark.slow  # audits the images for their measurements (several seconds)
@covers("workbench library levels", "workbench library compose", "workbench library add")
def test_library_commands(tmp_path, monkeypatch, capsys):
    """On MNFinder (the README's --positive-class mn); DIR2 is a second import of the same raw
    images under another folder name, so its image ids are new to the library."""
    monkeypatch.chdir(tmp_path)
    assert main(["convert", str(MNFINDER), "--format", "masks", "--out", "mn"]) == 0
    meta = pd.read_csv("mn/meta.csv")
    meta.assign(split="train").to_csv("mn/meta.csv", index=False)  # all 5 vendored images form the pool
    shutil.copytree(MNFINDER, tmp_path / "raw2" / "batch1")
    assert main(["convert", str(tmp_path / "raw2"), "--format", "masks", "--out", "mn2"]) == 0
    assert main(readme_argv("python -m workbench library levels", subs={"DIR": "mn"})) == 0
    assert set(pd.read_csv("levels.csv")["style_level"]) == {0, 1, 2}
    assert main(readme_argv("python -m workbench library compose", subs={"DIR": "mn"})) == 0
    out = capsys.readouterr().out
    assert "wrote LIB" in out and "DERIVED" in out  # the pool is short of --n 100: said, not hidden
    assert main(readme_argv("python -m workbench library add", subs={"DIR2": "mn2"})) == 0
    assert "batch1" in capsys.readouterr().out and Path("LIB2").is_dir() and Path("LIB").is_dir()


# ----------------------------------------------------------------------------- models

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The README's train line on tiny real BCCD (1 epoch at 64 px instead of 100 at 640)."""
    tmp = tmp_path_factory.mktemp("readme_models")
    ds = tiny_bccd(tmp / "bccd", n_train=6, n_val=4)
    argv = readme_argv("python -m workbench train", contains="W.pt",
                       subs={"DIR": str(ds), "W.pt": str(tmp / "none.pt")},
                       options={"--epochs": "1", "--imgsz": "64"})
    argv = argv[:argv.index("--pretrained")] + argv[argv.index("--pretrained") + 2:]  # trained below from these
    assert main([*argv, "--runs-root", str(tmp / "runs"), "--name", "det", "--workers", "0"]) == 0
    return tmp, ds, tmp / "runs" / "det"


@pytest.mark.slow
@covers("workbench train", "workbench predict", "workbench evaluate")
def test_train_predict_evaluate(trained, monkeypatch):
    tmp, ds, run = trained
    monkeypatch.chdir(tmp)
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    # --pretrained W.pt: a local weights file (here the run just trained)
    argv = readme_argv("python -m workbench train", contains="W.pt",
                       subs={"DIR": str(ds), "W.pt": str(run / "weights" / "best.pt")},
                       options={"--epochs": "1", "--imgsz": "64"})
    assert main([*argv, "--runs-root", str(tmp / "runs"), "--name", "det_pre", "--workers", "0"]) == 0
    rec = json.loads((tmp / "runs" / "det_pre" / "run.json").read_text())
    assert rec["model"]["pretrained"].endswith("det/weights/best.pt")
    assert main(readme_argv("python -m workbench predict", subs={"outputs/runs/RUN_ID": str(run), "DIR": str(ds)})) == 0
    assert list(pd.read_csv("pred.csv").columns[:7]) == ["image", "x1", "y1", "x2", "y2", "class", "score"]
    assert main(readme_argv("python -m workbench evaluate", contains="pred.csv", subs={"DIR": str(ds)})) == 0
    assert {"map50", "map50_95"} <= set(json.loads(Path("OUT/metrics.json").read_text()))


@pytest.mark.slow
@covers("workbench train")
def test_train_resume_continues_an_interrupted_run(tmp_path, monkeypatch):
    from workbench.models import yolo

    ds = tiny_bccd(tmp_path / "bccd", n_train=4, n_val=2)
    monkeypatch.setenv("WORKBENCH_OUTPUTS", str(tmp_path / "outputs"))  # the default runs root

    class Stop(Exception):
        pass

    def crash(trainer):
        if trainer.epoch == 0:
            raise Stop("interrupted after the first epoch")

    with pytest.raises(Stop):
        yolo.train(ds, model="yolov8n.yaml", epochs=2, imgsz=64, device="cpu", workers=0, run_name="cut",
                   callbacks={"on_fit_epoch_end": crash})
    assert main(readme_argv("python -m workbench train", contains="--resume",
                            subs={"DIR": str(ds), "RUN_ID": "cut"})) == 0
    rec = json.loads((tmp_path / "outputs" / "runs" / "cut" / "run.json").read_text())
    assert rec["status"] == "finished" and rec["epochs_completed"] == 2 and len(rec["resumed"]) == 1


@pytest.mark.slow
@covers("workbench cascade train", "workbench cascade predict", "workbench evaluate", "workbench predict-large")
def test_cascade_and_large_image_commands(trained, monkeypatch):
    tmp, ds, det = trained
    monkeypatch.chdir(tmp)
    images = tmp / "images"  # IMAGES: a folder of plain image files
    images.mkdir(exist_ok=True)
    for f in sorted((ds / "images").iterdir())[-2:]:
        shutil.copy(f, images)
    argv = readme_argv("python -m workbench cascade train", subs={"DIR": str(ds), "outputs/runs/<det_run>": str(det)})
    assert main([*argv, "--epochs", "1", "--runs-root", str(tmp / "runs"), "--name", "cls", "--device", "cpu"]) == 0
    cls = tmp / "runs" / "cls"
    assert (cls / "cascade.json").exists()
    assert main(readme_argv("python -m workbench cascade predict", contains="--split",
                            subs={"outputs/runs/<cls_run>": str(cls), "DIR": str(ds)})) == 0
    assert {"det_class", "cls_class", "final_class"} <= set(pd.read_csv("cascade.csv").columns)
    assert main(readme_argv("python -m workbench evaluate", contains="--positive", subs={"DIR": str(ds)})) == 0
    assert "ci" in json.loads(Path("OUT/metrics.json").read_text())
    assert main(readme_argv("python -m workbench cascade predict", contains="--tile",
                            subs={"outputs/runs/<cls_run>": str(cls), "IMAGES": str(images)})) == 0
    for mode in ("tiled", "two-stage"):
        assert main(readme_argv("python -m workbench predict-large", contains=f"--mode {mode}",
                                subs={"outputs/runs/<run>": str(det), "IMAGES": str(images)})) == 0, mode
        assert list(pd.read_csv("pred.csv").columns[:7]) == ["image", "x1", "y1", "x2", "y2", "class", "score"]


# ----------------------------------------------------------------------------- notebooks and make

@covers("workbench notebook")
def test_notebook_command_passes_the_readme_parameters(monkeypatch, capsys):
    """The README's example (profile=cpu: hours) is parsed and handed to the runner as given;
    `make audit` below executes a notebook through the same command for real."""
    import workbench.studies.notebooks as notebooks

    seen = {}
    monkeypatch.setattr(notebooks, "run_notebook", lambda name, params, out_dir=None: seen.update(
        name=name, params=params) or Path("executed.ipynb"))
    assert main(readme_argv("python -m workbench notebook")) == 0
    assert seen == {"name": "03_pretrain_vs_scratch", "params": {"profile": "cpu", "dataset": "bccd"}}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
@covers("make audit")
def test_make_audit(tmp_path):
    assert "make audit DATASET=bccd|monuseg|mnfinder" in readme_commands()
    done = run_make("audit", "DATASET=bccd", f"OUT={tmp_path}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["images"] == 292
    assert _mode(tmp_path / "01_dataset_audit.ipynb") & 0o044 == 0o044  # readable by others


@pytest.mark.slow
@covers("make demo")
def test_make_demo(tmp_path):
    """`make demo`, narrowed to the BCCD audit (the whole demo is every notebook test again):
    index with figures and a line per section, notebook HTML that loads nothing from the network,
    files readable by others."""
    from workbench.studies.notebook_html import external_resources

    done = run_make("demo", "ONLY=01_dataset_audit__bccd", f"OUT={tmp_path}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    index = (tmp_path / "index.html").read_text()
    assert "class_counts.png" in index and "class='shows'" in index and "vendored data as shipped" in index
    page = tmp_path / "01_dataset_audit__bccd" / "01_dataset_audit.html"
    assert external_resources(page.read_text()) == [] and "data:image/png;base64," in page.read_text()
    assert _mode(page) & 0o044 == 0o044 and _mode(tmp_path / "index.html") & 0o044 == 0o044


@covers("make test")
def test_make_test_runs_the_whole_suite_under_a_virtual_display():
    """`make test` runs this suite, so here it is only expanded (-n), not run inside itself."""
    done = run_make("-n", "test")
    assert done.returncode == 0 and "-m pytest -q" in done.stdout
    if shutil.which("xvfb-run"):
        assert 'xvfb-run -a -s "-screen 0 1280x1024x24"' in done.stdout


@pytest.mark.slow
@covers("make inspect")
def test_make_inspect_up_to_the_display(trained):
    """Predicts with the run on the README's GT folder, ranks the images and stops where napari
    needs a display (none here), saying what to do; the log counts every predicted image."""
    from workbench.data.datasets import prepare

    _, _, run = trained
    usage = run_make("inspect")
    assert usage.returncode != 0 and "usage: make inspect RUN=" in usage.stdout
    argv = readme_commands()
    line = next(c for c in argv if c.startswith("make inspect"))
    assert "GT=data/generated/bccd SPLIT=val" in line
    prepare("bccd")  # data/generated/bccd, as the notebooks and the demo make it
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run(["make", "-o", ".venv/.installed", f"PY={sys.executable}",
                           *line.replace("outputs/runs/<run_id>", str(run)).split()[1:]],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode != 0 and "napari needs a display" in done.stderr
    n_val = int((pd.read_csv(ROOT / "data" / "generated" / "bccd" / "meta.csv")["split"] == "val").sum())
    assert re.search(rf"predicted \d+ boxes \(score >= 0.25\) on {n_val} images, \d+ of them with boxes", done.stdout)
    assert re.search(rf"^{n_val} images, \d+ with errors", done.stdout, re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@covers("make lab")
def test_make_lab_starts_and_says_how_to_reach_it(tmp_path):
    """JupyterLab starts (as root too: --allow-root), prints the URL with its token, serves the
    project's kernel, and stops."""
    port = _free_port()
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "-o", ".venv/.installed", f"PY={sys.executable}", "lab", f"LAB_PORT={port}"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")})
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
            url = re.search(rf"http://(?:localhost|127\.0\.0\.1):{port}/lab\?token=(\w+)", log.read_text())
        text = log.read_text()
        assert url, text[-3000:]
        assert "is running at" in text and "LAB_IP=0.0.0.0" in text and f"port {port}" in text
        if os.geteuid() == 0:
            assert "--allow-root" in text
        api = f"http://127.0.0.1:{port}/api/kernelspecs?token={url.group(1)}"
        for attempt in range(20):  # the URL is printed a moment before the server accepts (seen once under load)
            try:
                with urllib.request.urlopen(api, timeout=30) as r:
                    specs = json.load(r)["kernelspecs"]
                break
            except urllib.error.URLError as exc:
                if not isinstance(exc.reason, ConnectionRefusedError) or attempt == 19 or proc.poll() is not None:
                    raise
                time.sleep(0.5)
        assert specs["workbench"]["spec"]["display_name"] == "Cell Workbench (.venv)"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@covers("workbench train-dense", "workbench predict-dense")
def test_dense_commands(tmp_path, monkeypatch):
    """The dense detector's two commands as the README shows them, on the vendored MNFinder images
    (epochs and crops shrunk: one tiny epoch proves the commands, not the model)."""
    monkeypatch.setenv("WORKBENCH_OUTPUTS", str(tmp_path / "outputs"))  # the default runs root
    data = tmp_path / "mn"
    assert main(["convert", str(MNFINDER), "--format", "masks", "--out", str(data)]) == 0
    train = readme_argv("python -m workbench train-dense", subs={"DIR": str(data)},
                        options={"--epochs": "1", "--crops-per-epoch": "8", "--device": "cpu"})
    assert main(train + ["--crop", "64", "--batch", "4", "--set", "val_crops=4", "--name", "dense"]) == 0
    run = tmp_path / "outputs" / "runs" / "dense"
    assert json.loads((run / "thresholds.json").read_text())["tuned"]
    out = tmp_path / "pred.csv"
    assert main(readme_argv("python -m workbench predict-dense",
                            subs={"outputs/runs/RUN_ID": str(run), "DIR": str(data), "pred.csv": str(out)})) == 0
    assert list(pd.read_csv(out).columns) == ["image", "x1", "y1", "x2", "y2", "class", "score"]
