"""Notebook 04's study: cell order and table order (no training here; the smoke notebook trains)."""
import pandas as pd

from workbench.studies.model_size import ModelSizeStudy


def test_cells_start_with_the_largest_model_and_the_table_is_ordered_by_parameters(tmp_path):
    study = ModelSizeStudy("bccd", profile="cpu", out_dir=tmp_path)
    # the longest run first: on 2 cores, yolov8m alone takes most of the grid's wall time
    assert [c.key for c in study.cells()] == ["yolov8m_s0", "yolov8s_s0", "yolov8n_s0"]
    rows = pd.DataFrame({"cell": ["yolov8m_s0", "yolov8s_s0", "yolov8n_s0"], "model": ["yolov8m", "yolov8s", "yolov8n"],
                         "params": [25_800_000, 11_100_000, 3_000_000]})
    table = study.tables(rows)["model_size"]
    assert table["model"].tolist() == ["yolov8n", "yolov8s", "yolov8m"] and "cell" not in table
    assert study.tables(rows.iloc[:0])["model_size"].empty


def test_figure_plots_test_map50_against_parameters_and_latency_with_intervals():
    from workbench.studies.model_size import size_figure

    t = pd.DataFrame({"model": ["yolov8n", "yolov8s"], "params": [3.0e6, 11.1e6], "map50": [0.55, 0.60],
                      "map50_lo": [0.50, 0.55], "map50_hi": [0.61, 0.66], "latency_ms": [40.0, 95.0],
                      "latency_device": ["AMD EPYC (2 CPU cores)"] * 2})
    fig = size_figure(t)
    left, right = fig.axes
    assert left.get_xlabel() == "parameters (millions)"
    assert right.get_xlabel() == "latency on AMD EPYC (2 CPU cores) (ms per image, batch 1)"
    # one error bar per model, spanning its interval, at its x
    segs = [c.get_segments()[0] for c in right.collections]
    assert [(s[0][0], s[0][1], s[1][1]) for s in segs] == [(40.0, 0.50, 0.61), (95.0, 0.55, 0.66)]
    assert len(size_figure(t.drop(columns=["latency_ms"])).axes) == 1  # no latency measured: one panel
