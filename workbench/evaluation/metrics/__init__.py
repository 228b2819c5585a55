"""Detection and counting metrics over the project's box tables, equal to pycocotools.

One matching routine backs every metric: AP, the tidy match table, precision/recall/F1 at a
score threshold, the confusion matrix and the bootstrap intervals. It reproduces pycocotools'
``COCOeval`` for ``iouType='bbox'`` and area range ``'all'`` (rules and the deliberate
differences in :mod:`.matching`). The parts, lowest first; each imports only those above it:

* :mod:`.boxes`     the table contract; :func:`parse_gt` / :func:`parse_pred` validate a table once
* :mod:`.iou`       :func:`box_iou`, bit-identical to pycocotools' C code
* :mod:`.matching`  the greedy COCO assignment at several IoU thresholds; :func:`default_max_dets`
* :mod:`.matches`   :func:`match`: one row per GT and prediction with partner and outcome
* :mod:`.ap`        :func:`evaluate`: AP per class, mAP50, mAP50-95, PR curves
* :mod:`.prf`       P/R/F1 and the confusion matrix from match tables
* :mod:`.counting`  :func:`count_metrics`: per-image counts, MAE, bias, Pearson r
* :mod:`.bootstrap` :func:`bootstrap_ci`: intervals over images, replaying the one matching
* :mod:`.coco`      COCO JSON in and out (for pycocotools and other tools)

Tables: GT ``image class x1 y1 x2 y2`` (+ optional ``iscrowd`` / ``ignore``); predictions add
``score``; extra columns are carried into match tables. Use the package
(``from workbench.evaluation import metrics; metrics.evaluate(gt, pred)``); the modules are
its layout, not separate APIs.
"""

from __future__ import annotations

from workbench.evaluation.metrics.ap import COCO_IOU_THRESHOLDS, RECALL_THRESHOLDS, EvalResult, evaluate
from workbench.evaluation.metrics.bootstrap import bootstrap_ci
from workbench.evaluation.metrics.boxes import BOX_COLUMNS, GT_COLUMNS, PRED_COLUMNS, parse_gt, parse_pred
from workbench.evaluation.metrics.coco import gt_from_coco, gt_to_coco, preds_from_coco, preds_to_coco
from workbench.evaluation.metrics.counting import CountResult, count_metrics
from workbench.evaluation.metrics.iou import box_iou
from workbench.evaluation.metrics.matches import match
from workbench.evaluation.metrics.matching import default_max_dets
from workbench.evaluation.metrics.prf import (MISSED, OVERALL, SPURIOUS, confusion_from_matches, confusion_matrix,
                                              precision_recall_f1, prf_from_matches)

__all__ = [
    "BOX_COLUMNS",
    "COCO_IOU_THRESHOLDS",
    "GT_COLUMNS",
    "MISSED",
    "OVERALL",
    "PRED_COLUMNS",
    "RECALL_THRESHOLDS",
    "SPURIOUS",
    "CountResult",
    "EvalResult",
    "bootstrap_ci",
    "box_iou",
    "confusion_from_matches",
    "confusion_matrix",
    "count_metrics",
    "default_max_dets",
    "evaluate",
    "gt_from_coco",
    "gt_to_coco",
    "match",
    "parse_gt",
    "parse_pred",
    "precision_recall_f1",
    "preds_from_coco",
    "preds_to_coco",
    "prf_from_matches",
]
