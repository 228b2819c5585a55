"""Figures render wherever a user looks: Figure objects display as image/png through IPython's
formatters (no backend forced, no pyplot), executed notebooks are checked for pictures instead of
``<Figure size ...>`` text, and the offline HTML loads nothing from the network.

The notebooks themselves are executed by their own tests (test_notebooks.py, test_notebook_02.py,
test_notebook_08.py, test_gallery.py), each of which calls :func:`missing_figures`."""
from __future__ import annotations

import ast
import base64
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workbench.studies.notebook_html import external_resources, notebook_html, static_widget_html
from workbench.studies.notebooks import figure_outputs, missing_figures, text_figure_reprs

ROOT = Path(__file__).resolve().parent.parent
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


def _write(tmp_path: Path, nb) -> Path:
    import nbformat

    path = tmp_path / "executed.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.slow  # the notebook stack (nbformat, jsonschema) takes seconds to import
def test_figure_outputs_and_text_reprs_of_an_executed_notebook(tmp_path):
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    nb = new_notebook(cells=[
        new_code_cell("fig", outputs=[new_output("execute_result", execution_count=1,
                                                 data={"text/plain": "<Figure size 550x400 with 1 Axes>",
                                                       "image/png": PNG})]),
        new_code_cell("display(fig)", outputs=[new_output("display_data", data={
            "text/plain": "<Figure size 660x400 with 1 Axes>"})]),
        new_code_cell("print(fig)", outputs=[new_output("stream", name="stdout",
                                                        text="Figure(640x480)\n<Figure size 640x480 with 2 Axes>\n")]),
        new_code_cell("df", outputs=[new_output("execute_result", execution_count=2, data={"text/plain": "   a\n0  1"})])])
    path = _write(tmp_path, nb)
    assert figure_outputs(path) == [0]
    assert text_figure_reprs(path) == ["cell 1: <Figure size 660x400 with 1 Axes>",
                                       "cell 2: <Figure size 640x480 with 2 Axes>"]
    assert missing_figures(path, 3) == text_figure_reprs(path) + ["1 image/png outputs for 3 figures"]
    nb.cells = nb.cells[:1]
    assert missing_figures(_write(tmp_path, nb), 1) == []


@pytest.mark.slow
def test_figures_display_as_png_through_ipython_formatters_without_pyplot():
    """In a fresh process with an IPython shell: importing workbench.report registers the PNG
    printer, a study figure formats as image/png, the backend chosen before stays, no pyplot
    figure is left open (Jupyter would show it a second time)."""
    code = """
import matplotlib
matplotlib.use("svg")
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
import pandas as pd
from workbench.report import study_plots, stats_plots, plots, overlays, figures
fig = study_plots.metric_curves(pd.DataFrame({"epoch": [1, 2, 1, 2], "mAP50": [.1, .2, .15, .25],
                                              "arm": ["a", "a", "b", "b"]}))
data, _ = shell.display_formatter.format(fig)
assert data["image/png"][:8] and "<Figure size" in data["text/plain"], sorted(data)
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
import matplotlib.pyplot as plt
assert plt.get_fignums() == [], plt.get_fignums()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


@pytest.mark.slow
def test_library_code_never_forces_a_backend_or_draws_with_pyplot():
    offenders = []
    for path in sorted((ROOT / "workbench").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("use", "switch_backend") and \
                    getattr(node.func.value, "id", "") in ("matplotlib", "plt", "mpl"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} sets the backend")
        if "report" in path.parts and "matplotlib.pyplot" in path.read_text(encoding="utf-8"):
            offenders.append(f"{path.relative_to(ROOT)} uses pyplot (its figures would stay open)")
    assert not offenders


@pytest.mark.slow
def test_the_offline_html_shows_saved_widgets_statically_and_fetches_nothing(tmp_path):
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    state = {"box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_row", "IPY_MODEL_img"]}},
             "row": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_btn", "IPY_MODEL_sld"]}},
             "btn": {"model_name": "ButtonModel", "state": {"description": "next"}},
             "sld": {"model_name": "IntSliderModel", "state": {"description": "image", "min": 1, "max": 87, "value": 1}},
             "img": {"model_name": "ImageModel", "state": {"format": "png", "layout": "IPY_MODEL_lay"},
                     "buffers": [{"path": ["value"], "encoding": "base64", "data": PNG}]},
             "lay": {"model_name": "LayoutModel", "state": {"max_width": "900px"}}}
    view = {"model_id": "box", "version_major": 2, "version_minor": 0}
    nb = new_notebook(cells=[new_markdown_cell("# Gallery"), new_code_cell("g.widget", outputs=[
        new_output("execute_result", execution_count=1,
                   data={"application/vnd.jupyter.widget-view+json": view, "text/plain": "VBox(children=(HBox(..."}),
        new_output("display_data", data={"text/plain": "<Figure size 1x1 with 1 Axes>", "image/png": PNG})])])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"version_major": 2, "version_minor": 0,
                                                                             "state": state}}
    page = notebook_html(_write(tmp_path, nb))
    assert external_resources(page) == []
    assert f"data:image/png;base64,{PNG}" in page and "max-width:900px" in page  # the gallery image and the figure
    assert "<button disabled" in page and "1 / 87" in page and "VBox(children" not in page
    snippet = static_widget_html("IPY_MODEL_row", state)
    assert snippet.startswith("<div style='display:flex;flex-direction:row")
    # nbconvert's own template fetches RequireJS and MathJax: the check would see them
    from nbconvert import HTMLExporter

    stock, _ = HTMLExporter().from_notebook_node(nb)
    assert any("require" in u for u in external_resources(stock)) and any("mathjax" in u for u in external_resources(stock))


def test_the_demo_index_shows_figures_not_training_tiles(tmp_path):
    from workbench.studies.demo import Job, figure_files, render_index

    job_dir = tmp_path / "03_pretrain_vs_scratch__bccd"
    for rel in ("results/map50_vs_epoch.png", "results/map50_vs_epoch.pdf", "results/runs.csv",
                "work/data/monuseg_tiles/images/tile_000.png", "work/runs/x/results.png", "audit/figures/a.png",
                "audit/figures/a.pdf", "work/runs/x/results.csv"):
        (job_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (job_dir / rel).write_bytes(b"x")
    assert [p.relative_to(job_dir).as_posix() for p in figure_files(job_dir)] == [
        "audit/figures/a.png", "results/map50_vs_epoch.png"]
    job = Job("03_pretrain_vs_scratch", {"dataset": "bccd", "profile": "smoke"}, "Pretrain vs scratch",
              "Validation mAP50 per epoch of each arm")
    page = render_index([(job, job_dir, 12.0, "")], tmp_path, "smoke")
    # nothing from the job's work/ folder (the committed-results section may link outside the index's folder)
    assert "tile_000" not in page and f"{Path(job_dir.name) / 'work'}/" not in page and "results/map50_vs_epoch.png" in page
    assert "Validation mAP50 per epoch of each arm (smoke profile:" in page
    assert pd.Series(page.split("<h2>")).str.contains("class='shows'").sum() == 1
