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
