"""Notebook 08's dense approach and the error tables it is judged by.

``dense`` – a U-Net over a timm encoder predicting background / nucleus / MN per pixel
(:mod:`workbench.models.dense`), post-processed into boxes (:mod:`workbench.inference.dense`),
its thresholds tuned on whole acquisition sets of the *training* images and never on the
held-out ones. It is trained by its own cell and timed and scored with the YOLO approaches of
:mod:`workbench.studies.micronuclei` on the same held-out images; its rows are already at the
tuned operating point (every object counts), the YOLO rows are counted at the profile's
``count_thr``. :func:`sweep_rows` adds its operating curve on the held-out images (MN
re-extracted at each probability of the tuning grid; reported, never used to choose).

Model-free tables for every approach (pure functions of box tables):

* :func:`error_table` – per approach and image, what the MN errors are: missed MN whose centre
  lies in a predicted nucleus (merged into it; the ellipse inscribed in its box stands in for
  the mask), next to a true nucleus (centre <= ``NEXT_TO_NUCLEUS`` px from its box) or
  isolated; spurious MN on a true nucleus, close to a true MN (<= ``CLOSE_TO_MN`` px: a
  duplicate or off by > 3 px), near a nucleus (within the parent distance) or farther (debris);
* :func:`per_nucleus_table` – micronuclei per nucleus (share of nuclei with 0, 1, 2, 3+ MN,
  mean) predicted vs true;
* :func:`training_table` – training time per detector from the detector cells' rows;
* :func:`worst_overlay` – the dense approach's worst held-out image with its MN outcomes drawn.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.analysis.micronuclei import MN, NUCLEUS
from workbench.core.tables import BOX_COLUMNS

DENSE = "dense"
NEXT_TO_NUCLEUS = 5.0  # px from a missed MN's centre to a true nucleus box: "next to a nucleus" (touching or ~2 px apart)
CLOSE_TO_MN = 6.0  # px: a spurious MN this close to a true MN is a duplicate or a localisation miss
ERROR_KINDS = ["fn_in_predicted_nucleus", "fn_next_to_nucleus", "fn_isolated", "fp_on_nucleus", "fp_close_to_true_mn",
               "fp_near_nucleus", "fp_debris"]


# ----------------------------------------------------------------------------- training and timing

def dense_config(prof: Any):
    """The profile's dense settings with the study's seed (a ``DenseConfig``)."""
    return replace(prof.dense, seed=prof.seed)


def dense_key(prof: Any) -> str:
    """The dense cell's key, also its run folder's name."""
    return f"mn_dense_{dense_config(prof).spec}_s{prof.seed}"


def train_dense_cell(run_dir: Path, dataset: Path, prof: Any, *, device: str | None,
                     log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Train the dense detector into ``run_dir`` (or reuse it when it finished with this config
    and data), tune its thresholds on its validation images when they are missing or older
    than its weights; one ``detector`` row (run id, training seconds)."""
    from workbench.inference.dense import THRESHOLDS_FILE, Thresholds, read_thresholds, tune_thresholds
    from workbench.models.dense import dense_finished_with, train_dense
    from workbench.models.runs import read_run_record

    cfg = dense_config(prof)
    if dense_finished_with(run_dir, cfg, dataset=dataset):
        log(f"[micronuclei] reusing {run_dir.name} (finished with the same config)")
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        train_dense(dataset, config=cfg, device=device, run_name=run_dir.name, runs_root=run_dir.parent, log=log)
    weights, tuned = run_dir / "weights" / "best.pt", run_dir / THRESHOLDS_FILE
    views = int(prof.dense_views)
    if (not tuned.exists() or tuned.stat().st_mtime < weights.stat().st_mtime
            or read_thresholds(run_dir)[0].views != views):
        t0 = time.perf_counter()
        tune_thresholds(run_dir, device=device, base=Thresholds(views=views))
        log(f"[micronuclei] dense thresholds tuned on validation images ({views} view(s)) in "
            f"{time.perf_counter() - t0:.0f} s")
    rec = read_run_record(run_dir)
    return [{"kind": "detector", "detector": DENSE, "run_id": run_dir.name, "train_s": rec.get("duration_s")}]


def dense_method(run_dir: Path, *, device: str | None) -> tuple[Callable[[np.ndarray], tuple[pd.DataFrame, dict]], Any]:
    """(image -> (boxes, info) for :func:`workbench.studies.base.time_methods`, the loaded
    :class:`workbench.inference.dense.DenseDetector`); stage 1 = the network, stage 2 = the
    post-processing."""
    from workbench.inference.dense import DenseDetector, postprocess

    det = DenseDetector(run_dir, device=device)

    def run(image: np.ndarray) -> tuple[pd.DataFrame, dict[str, Any]]:
        t0 = time.perf_counter()
        probs = det.probabilities(image)
        t1 = time.perf_counter()
        table = postprocess(probs, det.thresholds, mn_class=det.config.mn_class, nucleus_class=det.config.nucleus_class)
        return table[BOX_COLUMNS], {"stage1_s": t1 - t0, "stage2_s": time.perf_counter() - t1}

    return run, det


SWEEP_KIND = "dense_sweep"  # the kind of the evaluation cell's rows that hold the dense operating curve
SWEEP_COLUMNS = ["prob", "min_size", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1"]


def sweep_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The operating-curve rows of all cells (:func:`sweep_rows`) as a table of :data:`SWEEP_COLUMNS`."""
    keep = rows["kind"] == SWEEP_KIND if "kind" in rows else pd.Series(False, index=rows.index)
    counts = {c: "int64" for c in ("min_size", "n_pred", "tp", "fp", "fn")}
    return rows.loc[keep].reindex(columns=SWEEP_COLUMNS).astype(counts).reset_index(drop=True)


def sweep_rows(det: Any, images: Mapping[str, np.ndarray], gt: pd.DataFrame) -> list[dict[str, Any]]:
    """The dense operating curve on the held-out images: MN P/R/F1 (centre <= 3 px) with the
    MN components re-extracted at each probability of the tuning grid (the tuned minimum size).
    Reported, never used to choose anything (the thresholds come from the validation images)."""
    from workbench.inference.dense import sweep

    probs = {i: det.probabilities(img) for i, img in images.items()}
    table = sweep(probs, gt, base=det.thresholds, size_grid=(det.thresholds.mn_min_size,), nucleus_grid=(),
                  mn_class=det.config.mn_class)
    return [{"kind": SWEEP_KIND, **r} for r in table[SWEEP_COLUMNS].to_dict(orient="records")]


def run_normalisation(run_dir: Path) -> Any:
    """The 8-bit mapping of a dense run's training data (from its record; no weights loaded)."""
    from workbench.models.dense import recorded_normalisation
    from workbench.models.runs import read_run_record

    return recorded_normalisation(read_run_record(run_dir))


def dense_summary(run_dir: Path) -> dict[str, Any]:
    """What the study records of the dense run: id, budget, device, tuned thresholds and their
    validation precision / recall."""
    from workbench.inference.dense import read_thresholds
    from workbench.models.runs import read_run_record

    if not (run_dir / "run.json").is_file():
        return {"run_id": run_dir.name, "status": "not trained"}
    rec = read_run_record(run_dir)
    th, doc = read_thresholds(run_dir)
    cfg = rec["config"]["dense"]
    return {"run_id": run_dir.name, "run": str(run_dir), "status": rec.get("status"), "train_s": rec.get("duration_s"),
            "device": (rec.get("device") or {}).get("name"), "epochs": cfg["epochs"],
            "crops_seen": cfg["epochs"] * cfg["crops_per_epoch"], "crop": cfg["crop"], "spec": rec["model"]["spec"],
            "val_images": rec["dataset"].get("val_images"), "val_split": rec["dataset"].get("val_split"),
            "thresholds": doc.get("thresholds"), "tuning_rule": doc.get("rule"), "mn_val": doc.get("mn_val"),
            "best_epoch": (rec.get("final") or {}).get("epoch")}


# ----------------------------------------------------------------------------- tables

def _ellipse_hit(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) whether each point lies inside the ellipse inscribed in any of ``boxes``."""
    if not len(points) or not len(boxes):
        return np.zeros(len(points), bool)
    c = (boxes[None, :, :2] + boxes[None, :, 2:]) / 2
    r = np.maximum((boxes[None, :, 2:] - boxes[None, :, :2]) / 2, 1e-6)
    return ((((points[:, None, :] - c) / r) ** 2).sum(-1) <= 1).any(1)


def _min_gap(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    from workbench.analysis.micronuclei import box_gap

    return box_gap(points, boxes).min(1) if len(points) and len(boxes) else np.full(len(points), np.inf)


def _centres(t: pd.DataFrame) -> np.ndarray:
    return np.column_stack([(t["x1"] + t["x2"]) / 2, (t["y1"] + t["y2"]) / 2]).astype(float).reshape(-1, 2)


def image_errors(gt: pd.DataFrame, pred: pd.DataFrame, *, parent_distance: float) -> dict[str, int]:
    """The MN error kinds (:data:`ERROR_KINDS`, plus ``tp`` and ``n_true_mn``) of one image's
    truth and predictions (both with ``class x1 y1 x2 y2``; predictions already thresholded)."""
    from workbench.evaluation import tiny_matching as tm

    box = ["x1", "y1", "x2", "y2"]
    g, p = gt.assign(image="i"), pred.assign(image="i")
    m = tm.match(g[g["class"] == MN], p[p["class"] == MN], {MN: tm.CENTRE3})
    fn, fp = m[(m["kind"] == "gt") & (m["outcome"] == "fn")], m[(m["kind"] == "pred") & (m["outcome"] == "fp")]
    tp_gt = m[(m["kind"] == "gt") & (m["outcome"] == "tp")]
    true_nuc = gt.loc[gt["class"] == NUCLEUS, box].to_numpy(float)
    pred_nuc = pred.loc[pred["class"] == NUCLEUS, box].to_numpy(float)
    fn_c, fp_c = _centres(fn), _centres(fp)
    merged = _ellipse_hit(fn_c, pred_nuc)
    beside = ~merged & (_min_gap(fn_c, true_nuc) <= NEXT_TO_NUCLEUS)
    on_nucleus = _ellipse_hit(fp_c, true_nuc)
    close = ~on_nucleus & (_min_gap(fp_c, gt.loc[gt["class"] == MN, box].to_numpy(float)) <= CLOSE_TO_MN)
    near = ~on_nucleus & ~close & (_min_gap(fp_c, true_nuc) <= parent_distance)
    return {"n_true_mn": int((gt["class"] == MN).sum()), "tp": len(tp_gt),
            "fn_in_predicted_nucleus": int(merged.sum()), "fn_next_to_nucleus": int(beside.sum()),
            "fn_isolated": int((~merged & ~beside).sum()), "fp_on_nucleus": int(on_nucleus.sum()),
            "fp_close_to_true_mn": int(close.sum()), "fp_near_nucleus": int(near.sum()),
            "fp_debris": int((~on_nucleus & ~close & ~near).sum())}


def error_table(gt: pd.DataFrame, pred: pd.DataFrame, *, count_thr: Mapping[str, float], images: Sequence[str],
                parent_distance: float) -> pd.DataFrame:
    """One row per approach and image: :func:`image_errors` of the predictions with
    ``score >= count_thr[approach]``, plus ``fn``, ``fp`` and ``errors``."""
    rows = []
    for a, thr in count_thr.items():
        p = pred[(pred["approach"] == a) & (pred["score"] >= thr)]
        for i in images:
            rows.append({"approach": a, "image": i, **image_errors(gt[gt["image"] == i], p[p["image"] == i],
                                                                   parent_distance=parent_distance)})
    out = pd.DataFrame(rows, columns=["approach", "image", "n_true_mn", "tp", *ERROR_KINDS])
    out["fn"] = out[[k for k in ERROR_KINDS if k.startswith("fn")]].sum(1)
    out["fp"] = out[[k for k in ERROR_KINDS if k.startswith("fp")]].sum(1)
    out["errors"] = out["fn"] + out["fp"]
    return out


def worst_image(errors: pd.DataFrame, approach: str) -> str | None:
    """The image where ``approach`` makes the most MN errors (None without rows)."""
    e = errors[errors["approach"] == approach].sort_values(["errors", "image"], ascending=[False, True], kind="stable")
    return str(e["image"].iloc[0]) if len(e) else None


def worst_overlay(errors: pd.DataFrame, pred: pd.DataFrame, gt: pd.DataFrame,
                  load_image: Callable[[str], np.ndarray]) -> dict[str, Any]:
    """``{"mn_dense_worst": Figure}``: the dense approach's worst held-out image with its MN
    outcomes drawn (``{}`` without dense rows); ``load_image(id)`` gives the 8-bit image."""
    from workbench.studies.micronuclei_figures import error_overlay

    worst = worst_image(errors, DENSE)
    if worst is None:
        return {}
    p = pred[(pred["approach"] == DENSE) & (pred["image"] == worst)]
    return {"mn_dense_worst": error_overlay(load_image(worst), gt[gt["image"] == worst], p, title=f"dense: {worst}")}


def per_nucleus_table(pred: pd.DataFrame, true_mn: pd.DataFrame, true_nuclei: pd.DataFrame, *,
                      count_thr: Mapping[str, float], parent_distance: float) -> pd.DataFrame:
    """MN per nucleus, true and per approach: share of nuclei with 0, 1, 2 and 3+ MN, the mean,
    and the number of nuclei (truth: parents from the mask colours; predictions: nearest
    nucleus within ``parent_distance``)."""
    from workbench.analysis import micronuclei as mnx

    def summary(cells: pd.DataFrame, name: str) -> dict[str, Any]:
        n = cells["n_mn"].to_numpy(int)
        shares = {f"share_{k}_mn": float((n == k).mean()) if len(n) else float("nan") for k in (0, 1, 2)}
        return {"approach": name, "n_nuclei": len(n), **shares,
                "share_3plus_mn": float((n >= 3).mean()) if len(n) else float("nan"),
                "mn_per_nucleus": float(n.mean()) if len(n) else float("nan")}

    rows = [summary(mnx.cell_table(true_nuclei, true_mn), "truth")]
    for a, thr in count_thr.items():
        p = pred[pred["approach"] == a].drop(columns="approach")
        rows.append(summary(mnx.per_cell_outputs(p, max_distance=parent_distance, score_thr=thr)[1], a))
    return pd.DataFrame(rows)


def training_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Training seconds per detector (the detector cells' rows): ``detector, run_id, train_s``."""
    cols = ["detector", "run_id", "train_s"]
    if "kind" not in rows:
        return pd.DataFrame(columns=cols)
    return rows.loc[rows["kind"] == "detector"].reindex(columns=cols).reset_index(drop=True)
