"""The correction loop: predict -> correct (label versions) -> fine-tune -> compare.

:func:`finetune_on_version` materialises a label version (:mod:`workbench.inspection.corrections`) as a
canonical dataset, fine-tunes the detector of an existing run on it
(:func:`workbench.models.yolo.train` with ``pretrained=<run>/weights/best.pt``, same architecture
and image size unless given), then predicts the same validation images with the model before
and after and evaluates both against the corrected labels and against the original ones
(:func:`workbench.evaluation.files.evaluate_tables`, i.e. :mod:`workbench.evaluation.metrics`). Outputs::

    OUT/dataset/          the materialised version (images hard-linked)
    OUT/predictions_before.csv, OUT/predictions_after.csv
    OUT/compare.csv       model (before/after) x labels (corrected/original): mAP, P/R/F1
    OUT/feedback.json     what was compared: runs, version, split, images, settings

The fine-tuned run goes under ``runs_root`` like any other run. ``export`` then writes the
corrected labels as YOLO/COCO/labelme from ``OUT/dataset`` (:func:`export_version`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.core.atomic import write_text
from workbench.core.tables import utc_now

__all__ = ["FeedbackResult", "compare_models", "export_version", "finetune_on_version"]

COMPARE_COLUMNS = ["model", "labels", "run", "n_images", "n_gt", "n_pred", "map50", "map50_95",
                   "precision", "recall", "f1"]


@dataclass(frozen=True)
class FeedbackResult:
    out: Path
    dataset: Path  # the materialised label version
    run_before: Path
    run_after: Path
    table: pd.DataFrame  # COMPARE_COLUMNS


def _run_settings(run: Path) -> dict[str, Any]:
    from workbench.models.runs import read_run_record

    record = read_run_record(run)
    model = (record.get("model") or {}).get("resolved") or (record.get("model") or {}).get("spec")
    return {"model": model, "imgsz": int((record.get("config") or {}).get("imgsz") or 640),
            "run_id": record.get("run_id", run.name)}


def export_version(root: str | Path, version: str | None, fmt: str, out: str | Path, *,
                   work: str | Path | None = None, **options: Any):
    """Export label version ``version`` of dataset ``root`` as ``fmt`` (yolo, coco, labelme).

    The version is materialised first (in ``work``, default a folder beside ``out``), then
    :func:`workbench.data.exporters.export` writes ``out`` from it.
    """
    from workbench.inspection.corrections import materialise, resolve_version
    from workbench.data.exporters import export

    out = Path(out)
    name = resolve_version(root, version)
    work = Path(work) if work is not None else out.parent / f".{out.name}.{name}.dataset"
    ds = materialise(root, name, work, overwrite=True)
    return export(ds, fmt, out, **options)


def compare_models(runs: dict[str, str | Path], labels: dict[str, str | Path], *, split: str = "val",
                   conf: float = 0.001, device: str | None = None, out: Path | None = None) -> pd.DataFrame:
    """Predict ``split`` of the first labels dataset with every run; evaluate on every labels set.

    ``runs``: name -> run folder; ``labels``: name -> canonical dataset (same images, e.g. a
    version and the original). Returns :data:`COMPARE_COLUMNS`; with ``out`` the prediction
    tables are written there as ``predictions_<name>.csv``.
    """
    from workbench.evaluation.files import evaluate_tables, load_ground_truth
    from workbench.core.tables import write_predictions
    from workbench.inference.predict import predict

    truths = {k: load_ground_truth(Path(v), split=split) for k, v in labels.items()}
    first = next(iter(labels.values()))
    images = [set(t.images) for t in truths.values()]
    if any(s != images[0] for s in images):
        raise ValueError(f"the label sets {list(labels)} do not cover the same {split} images")
    rows = []
    for name, run in runs.items():
        pred = predict(run, first, split=split, conf=conf, device=device)
        if out is not None:
            write_predictions(pred, Path(out) / f"predictions_{name}.csv")
        for lname, truth in truths.items():
            doc, _ = evaluate_tables(truth, pred, n_boot=0)
            rows.append({"model": name, "labels": lname, "run": str(run), "n_images": doc["n_images"],
                         "n_gt": doc["n_gt"], "n_pred": doc["n_pred"],
                         **{k: doc.get(k) for k in ("map50", "map50_95", "precision", "recall", "f1")}})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def finetune_on_version(run: str | Path, dataset: str | Path, out: str | Path, *, version: str = "latest",
                        epochs: int = 10, imgsz: int | None = None, split: str = "val", conf: float = 0.001,
                        seed: int = 0, device: str | None = None, runs_root: str | Path | None = None,
                        run_name: str | None = None, overwrite: bool = False,
                        **train_options: Any) -> FeedbackResult:
    """Fine-tune ``run``'s detector on label version ``version`` of ``dataset``; compare before/after.

    ``imgsz`` defaults to the run's; other keyword arguments go to :func:`workbench.models.yolo.train`
    (``batch=``, ``workers=``, ``lr0=`` ...). ``out`` must be new (or ``overwrite``).
    """
    from workbench.inspection.corrections import materialise, resolve_version
    from workbench.models.runs import run_weights
    from workbench.models.yolo import train

    run, dataset, out = Path(run), Path(dataset), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: folder exists and is not empty (use overwrite=True)")
    settings = _run_settings(run)
    weights = run_weights(run)
    name = resolve_version(dataset, version)
    out.mkdir(parents=True, exist_ok=True)
    corrected = materialise(dataset, name, out / "dataset", overwrite=overwrite)
    model = settings["model"] if str(settings["model"]).endswith((".yaml", ".yml")) else weights
    after = train(corrected, model=model, pretrained=weights, epochs=epochs,
                  imgsz=imgsz or settings["imgsz"], seed=seed, device=device, runs_root=runs_root,
                  run_name=run_name, **train_options)
    table = compare_models({"before": run, "after": after}, {"corrected": corrected, "original": dataset},
                           split=split, conf=conf, device=device, out=out)
    table.to_csv(out / "compare.csv", index=False)
    doc = {"created": utc_now(),
           "dataset": str(dataset.resolve()), "version": name, "materialised": str(corrected.resolve()),
           "run_before": str(run.resolve()), "weights_before": str(weights), "run_after": str(after),
           "epochs": epochs, "imgsz": imgsz or settings["imgsz"], "split": split, "conf": conf,
           "note": "both models predict the same images; 'corrected' and 'original' are the label sets "
                   "they are scored against (workbench.evaluation.metrics)",
           "table": json.loads(table.to_json(orient="records"))}
    write_text(out / "feedback.json", json.dumps(doc, indent=1) + "\n")
    return FeedbackResult(out, corrected, run, Path(after), table)


def predictions_for(dataset: str | Path, *, split: str | None = "val", run: str | Path | None = None,
                    pred: str | Path | None = None, profile: str = "smoke", out_dir: str | Path,
                    conf: float = 0.25, device: str | None = None) -> Path:
    """The prediction table to inspect: ``pred`` as given, else ``run``'s predictions of ``split``.

    Without either, the ``smoke`` profile trains a throw-away detector (yolov8n, 1 epoch,
    imgsz 160, 10 % of the training images) so the pipeline runs end to end on CPU in CI:
    its predictions are real but poor, which is all a smoke run has to show. Other profiles
    need a run or a table. The table is written to ``out_dir/predictions.csv``.
    """
    from workbench.core.tables import write_predictions
    from workbench.inference.predict import predict

    if pred is not None:
        return Path(pred)
    out_dir = Path(out_dir)
    if run is None:
        if profile != "smoke":
            raise ValueError(f"profile {profile!r}: give run= (a trained run folder) or pred= (a prediction "
                             "table); only the smoke profile trains a throw-away detector")
        from workbench.models.yolo import train

        run = train(dataset, model="yolov8n.yaml", epochs=1, imgsz=160, fraction=0.1, plots=False,
                    device=device, runs_root=out_dir / "runs", workers=0)
    table = predict(run, dataset, split=split, conf=conf, device=device)
    return write_predictions(table, out_dir / "predictions.csv")
