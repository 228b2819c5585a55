"""Evaluation: model-free scoring of prediction tables against ground truth.

:mod:`.metrics` (COCO-rule matching, AP, P/R/F1, counting, bootstrap), :mod:`.tiny_matching`
(per-class criteria for 5 px objects), :mod:`.clinical` (detection / FP / FN rates against lab
presets) and :mod:`.files` (``evaluate``: files in, metrics.json and tables out). Imports no model code.
"""
from workbench.evaluation.files import (GroundTruth, evaluate_files, evaluate_tables, load_ground_truth,
                                        load_predictions)

__all__ = ["GroundTruth", "evaluate_files", "evaluate_tables", "load_ground_truth", "load_predictions"]
