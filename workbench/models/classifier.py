"""Cell classifier on crops: any ``timm`` architecture, trained into a self-describing run.

Offline by construction: models are built with ``pretrained=False`` unless ``pretrained`` names
a local weights file, which is then loaded by timm through
``pretrained_cfg_overlay=dict(file=PATH)`` (timm drops the 1000-class head and adapts the
first convolution to extra input channels); nothing is ever downloaded.

A run folder ``outputs/runs/<run_id>/`` (like the detector runs, see :mod:`workbench.models.runs`)::

    run.json      kind "classifier", dataset (path, fingerprint, crops per split and class),
                  model, crop spec, class balance used, config, seed, versions, git, device,
                  status, best epoch and its metrics
    metrics.csv   one row per epoch: train_loss, val_loss, val_accuracy,
                  val_balanced_accuracy (mean per-class recall), val_recall_<class>, lr, time
    weights/best.pt, weights/last.pt   state dict + everything needed to rebuild the model

Training: crops of the ground-truth boxes of the ``train`` split (balanced, see
:mod:`workbench.models.balance`), early stopping on the ``val`` split (natural class mix) after
``patience`` epochs without improvement of ``monitor``; AdamW with a cosine learning rate;
augmentation = random flips and 90-degree rotations (cells have no orientation), applied to
whole batches on the device. Seeded: the same seed, data and versions give the same run on
CPU.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from workbench.core.atomic import new_file, write_text
from workbench.core.tables import utc_now
from workbench.models.balance import balance_indices
from workbench.models.crops import CropSet, CropSpec, gt_crops
from workbench.core.device import all_cpu_threads, describe_device, pick_device
from workbench.models.runs import (
    METRICS_FILE, check_run_name, dataset_fingerprint, git_state, make_run_id, package_versions, read_run_record, runs_dir, update_run_record, write_run_record)

DEFAULT_ARCH = "resnet34"
WEIGHTS_FORMAT = "workbench-classifier/1"
MONITORS = {"val_balanced_accuracy": "max", "val_accuracy": "max", "val_loss": "min"}
# ImageNet statistics (timm's default) for RGB; extra channels are centred at mid-grey.
_EXTRA_MEAN, _EXTRA_STD = 0.5, 0.5


# ----------------------------------------------------------------------------- model

def build_model(arch: str, n_classes: int, *, in_chans: int = 3,
                pretrained: str | Path | None = None) -> torch.nn.Module:
    """A timm model with ``n_classes`` outputs; ``pretrained`` is a local weights file or None.

    Raises ``ValueError`` for an unknown architecture (with close names) and
    ``FileNotFoundError`` for a missing weights file.
    """
    import timm

    if n_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('.')[0][:8]}*")[:12]
        raise ValueError(f"unknown timm architecture {arch!r}" + (f"; similar: {', '.join(close)}" if close else
                         "; see timm.list_models()"))
    kwargs: dict[str, Any] = {"num_classes": n_classes, "in_chans": in_chans}
    if pretrained is not None:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{pretrained}: pretrained classifier weights file not found (the "
                                    "workbench never downloads weights; give a local .pth/.safetensors "
                                    "file for this architecture, or train from scratch)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path.resolve())))
    else:
        kwargs["pretrained"] = False
    try:
        return timm.create_model(arch, **kwargs)
    except (RuntimeError, KeyError) as exc:
        if pretrained is None:
            raise
        raise ValueError(f"{pretrained}: cannot load these weights into {arch!r}: {exc}") from None


def _norm_stats(model: torch.nn.Module, in_chans: int) -> tuple[list[float], list[float]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = list(cfg.get("mean", (0.485, 0.456, 0.406)))[:3]
    std = list(cfg.get("std", (0.229, 0.224, 0.225)))[:3]
    extra = in_chans - 3
    return mean + [_EXTRA_MEAN] * extra, std + [_EXTRA_STD] * extra


@dataclass
class Classifier:
    """A loaded classifier: ``predict_proba(crops)`` -> (N, K) probabilities over ``classes``."""

    model: torch.nn.Module
    classes: list[str]
    spec: CropSpec
    mean: list[float]
    std: list[float]
    device: str
    arch: str
    in_chans: int
    path: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)

    def to_tensor(self, crops: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)
        # NHWC: oneDNN / cuDNN convolutions run ~1.5x faster on it (measured on CPU, resnet18 at 64 px)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def predict_proba(self, crops: np.ndarray, *, batch: int = 256) -> np.ndarray:
        """Class probabilities of (N, S, S, C) uint8 crops, in batches of ``batch``."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[3] != self.in_chans:
            raise ValueError(f"crops of shape {crops.shape}: this classifier expects "
                             f"(N, {self.spec.size}, {self.spec.size}, {self.in_chans})")
        out = np.zeros((len(crops), len(self.classes)), dtype=np.float32)
        self.model.eval()
        with torch.inference_mode(), all_cpu_threads(self.device):
            for start in range(0, len(crops), batch):
                logits = self.model(self.to_tensor(crops[start:start + batch]))
                out[start:start + len(logits)] = torch.softmax(logits.float(), 1).cpu().numpy()
        return out


def load_classifier(path: str | Path, *, device: str | None = None) -> Classifier:
    """A classifier from a run folder (its best weights) or a weights file written here."""
    path = Path(path).expanduser()
    record: dict[str, Any] = {}
    if path.is_dir():
        record = read_run_record(path)
        weights = next((p for p in (path / "weights" / "best.pt", path / "weights" / "last.pt") if p.is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path}: classifier run has no weights/best.pt or weights/last.pt")
    elif path.is_file():
        weights = path
    else:
        raise FileNotFoundError(f"{path}: no such classifier run folder or weights file")
    try:
        ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{weights}: not a readable classifier weights file ({exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{weights}: not a workbench classifier weights file (expected format "
                         f"{WEIGHTS_FORMAT!r}; detector weights go to the detector)")
    dev = pick_device(device)
    model = build_model(ckpt["arch"], len(ckpt["classes"]), in_chans=int(ckpt["in_chans"]))
    model.load_state_dict(ckpt["state_dict"])
    model.to(dev, memory_format=torch.channels_last).eval()
    return Classifier(model, list(ckpt["classes"]), CropSpec.from_dict(ckpt["crop"]), list(ckpt["mean"]),
                      list(ckpt["std"]), dev, ckpt["arch"], int(ckpt["in_chans"]),
                      path if path.is_dir() else None, record)


# ----------------------------------------------------------------------------- training

def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random element of the dihedral group (flips, 90-degree turns) per sample, batched."""
    n = x.shape[0]
    draws = torch.rand((3, n), generator=gen) < 0.5
    flip_h, flip_v, trans = (d.to(x.device).view(n, 1, 1, 1) for d in draws)
    x = torch.where(flip_h, x.flip(-1), x)
    x = torch.where(flip_v, x.flip(-2), x)
    return torch.where(trans, x.transpose(-1, -2), x)  # crops are square


def _evaluate(clf: Classifier, crops: CropSet, *, batch: int) -> dict[str, float]:
    probs = clf.predict_proba(crops.crops, batch=batch)
    y = crops.labels
    pred = probs.argmax(1)
    eps = 1e-12
    out = {"val_loss": float(-np.log(probs[np.arange(len(y)), y] + eps).mean()) if len(y) else float("nan"),
           "val_accuracy": float((pred == y).mean()) if len(y) else float("nan")}
    recalls = []
    for k, name in enumerate(clf.classes):
        here = y == k
        r = float((pred[here] == k).mean()) if here.any() else float("nan")
        out[f"val_recall_{name}"] = r
        if here.any():
            recalls.append(r)
    out["val_balanced_accuracy"] = float(np.mean(recalls)) if recalls else float("nan")
    return out


def _save_weights(path: Path, payload: dict[str, Any]) -> None:
    with new_file(path) as tmp:
        torch.save(payload, tmp)


def train_classifier(dataset: str | Path, *, arch: str = DEFAULT_ARCH, classes: Sequence[str] | None = None,
                     crop: CropSpec = CropSpec(), balance: str = "equal",
                     negative: Sequence[str] | None = None, ratio: float = 1.0, epochs: int = 30,
                     patience: int = 5, batch: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
                     augment: bool = True, monitor: str = "val_balanced_accuracy", seed: int = 0,
                     device: str | None = None, pretrained: str | Path | None = None,
                     run_name: str | None = None, runs_root: str | Path | None = None,
                     train_split: str = "train", val_split: str = "val", verbose: bool = True) -> Path:
    """Train a crop classifier on the GT boxes of a canonical dataset; return the run folder.

    ``classes``: classes to learn (default all of the dataset's); ``balance``/``negative``/
    ``ratio``: see :func:`workbench.models.balance.balance_indices`; ``monitor``: val metric for
    early stopping and the best epoch (val_balanced_accuracy, val_accuracy or val_loss).
    """
    if monitor not in MONITORS:
        raise ValueError(f"monitor must be one of {sorted(MONITORS)}, got {monitor!r}")
    if epochs < 1 or patience < 1 or batch < 2:
        raise ValueError(f"need epochs >= 1, patience >= 1, batch >= 2; got {epochs}, {patience}, {batch}")
    if not lr > 0 or weight_decay < 0:
        raise ValueError(f"need lr > 0 and weight_decay >= 0, got {lr}, {weight_decay}")
    root_ds = Path(dataset).expanduser().resolve()
    if root_ds.is_file():  # dataset.yaml given
        root_ds = root_ds.parent
    dev = pick_device(device)

    train_set = gt_crops(root_ds, crop, split=train_split, classes=classes)
    val_set = gt_crops(root_ds, crop, split=val_split, classes=train_set.classes)
    names = train_set.classes
    if len(val_set.table) == 0:
        raise ValueError(f"{root_ds}: no boxes of {names} in the {val_split!r} split to validate on")
    absent = [c for c, n in zip(names, np.bincount(train_set.labels, minlength=len(names))) if n == 0]
    if absent:
        raise ValueError(f"{root_ds}: no training boxes of class(es) {absent} in the {train_split!r} split")
    keep, balance_record = balance_indices(train_set.labels, names, mode=balance, negative=negative,
                                           ratio=ratio, seed=seed)
    train_set = train_set.subset(keep)

    torch.manual_seed(seed)
    in_chans = int(train_set.crops.shape[3])
    model = build_model(arch, len(names), in_chans=in_chans, pretrained=pretrained)
    model.to(dev, memory_format=torch.channels_last)
    mean, std = _norm_stats(model, in_chans)
    clf = Classifier(model, names, crop, mean, std, dev, arch, in_chans)

    root = Path(runs_root).expanduser().resolve() if runs_root else runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    if run_name:
        run_id = check_run_name(run_name)
        if (root / run_id).exists() and any((root / run_id).iterdir()):
            raise FileExistsError(f"{root / run_id}: run folder exists; choose another run name")
    else:
        run_id = make_run_id(root_ds.name, f"cls-{arch}", seed, root=root)
    run_dir = root / run_id
    run_dir.mkdir(parents=True, exist_ok=bool(run_name))

    config = {"epochs": epochs, "patience": patience, "batch": batch, "lr": lr,
              "weight_decay": weight_decay, "optimizer": "AdamW", "schedule": "cosine",
              "augment": "random flips + 90-degree turns" if augment else None, "monitor": monitor,
              "seed": seed, "device": dev, "train_split": train_split, "val_split": val_split}
    split_counts = {s: {c: int(n) for c, n in zip(names, np.bincount(cs.labels, minlength=len(names)))}
                    for s, cs in (("train_balanced", train_set), (val_split, val_set))}
    record = {
        "run_id": run_id, "kind": "classifier", "status": "running", "created": utc_now(),
        "finished": None, "duration_s": None,
        "dataset": {"path": str(root_ds), "name": root_ds.name, "fingerprint": dataset_fingerprint(root_ds),
                    "crops": split_counts,
                    "dropped_small_boxes": int(train_set.table.attrs.get("dropped_small", 0))},
        "classes": names,
        "model": {"arch": arch, "in_chans": in_chans, "pretrained": str(Path(pretrained).resolve()) if pretrained else None,
                  "parameters": int(sum(p.numel() for p in model.parameters()))},
        "crop": crop.to_dict(), "balance": balance_record, "config": config, "seed": seed,
        "device": describe_device(dev), "versions": {"python": sys.version.split()[0], **package_versions()},
        "git": git_state(), "command": " ".join(sys.argv),
    }
    write_run_record(run_dir, record)
    start = time.perf_counter()
    try:
        best = _fit(clf, train_set, val_set, run_dir, balance_record, config, verbose=verbose)
    except BaseException as exc:
        update_run_record(run_dir, status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                          finished=utc_now(), duration_s=round(time.perf_counter() - start, 2),
                          error=f"{type(exc).__name__}: {exc}")
        raise
    update_run_record(run_dir, status="finished", finished=utc_now(),
                      duration_s=round(time.perf_counter() - start, 2), error=None, **best)
    return run_dir


def _fit(clf: Classifier, train_set: CropSet, val_set: CropSet, run_dir: Path,
         balance_record: dict[str, Any], config: dict[str, Any], *, verbose: bool) -> dict[str, Any]:
    model, dev = clf.model, clf.device
    epochs, patience, batch = config["epochs"], config["patience"], config["batch"]
    weights = balance_record.get("class_weights")
    criterion = torch.nn.CrossEntropyLoss(
        weight=torch.tensor([weights[c] for c in clf.classes], dtype=torch.float32, device=dev) if weights else None)
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    rng = np.random.default_rng(config["seed"])
    gen = torch.Generator().manual_seed(config["seed"])
    labels = torch.from_numpy(np.array(train_set.labels, dtype=np.int64))
    sign = 1.0 if MONITORS[config["monitor"]] == "max" else -1.0
    payload = {"format": WEIGHTS_FORMAT, "arch": clf.arch, "classes": clf.classes, "in_chans": clf.in_chans,
               "crop": clf.spec.to_dict(), "mean": clf.mean, "std": clf.std}
    rows: list[dict[str, Any]] = []
    best_score, best_epoch, stale = -math.inf, 0, 0
    best_row: dict[str, Any] = {}
    n = len(train_set.labels)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(n)
        # BatchNorm cannot train on a batch of one: fold a lone last sample into the previous batch
        cuts = list(range(0, n, batch))
        if len(cuts) > 1 and n - cuts[-1] == 1:
            cuts.pop()
        total, seen = 0.0, 0
        for k, s in enumerate(cuts):
            e = cuts[k + 1] if k + 1 < len(cuts) else n
            idx = order[s:e]
            x = clf.to_tensor(train_set.crops[idx])
            if config["augment"]:
                x = _augment(x, gen)
            y = labels[idx].to(dev)
            opt.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        row = {"epoch": epoch, "time": round(time.perf_counter() - t0, 3), "lr": lr,
               "train_loss": total / max(seen, 1), **_evaluate(clf, val_set, batch=256)}
        rows.append(row)
        write_text(run_dir / METRICS_FILE, pd.DataFrame(rows).to_csv(index=False))
        payload_epoch = {**payload, "epoch": epoch, "state_dict": model.state_dict()}
        _save_weights(run_dir / "weights" / "last.pt", payload_epoch)
        score = sign * row[config["monitor"]]
        if not math.isnan(score) and score > best_score:
            best_score, best_epoch, best_row, stale = score, epoch, row, 0
            _save_weights(run_dir / "weights" / "best.pt", payload_epoch)
        else:
            stale += 1
        if verbose:
            print(f"epoch {epoch}/{epochs}: train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
                  f"val_acc {row['val_accuracy']:.3f}  val_bal_acc {row['val_balanced_accuracy']:.3f}"
                  + ("  *" if best_epoch == epoch else ""), flush=True)
        if stale >= patience:
            break
    if best_epoch == 0:  # every monitored value was NaN: keep the last epoch
        best_epoch, best_row = rows[-1]["epoch"], rows[-1]
        _save_weights(run_dir / "weights" / "best.pt", {**payload, "epoch": best_epoch,
                                                        "state_dict": model.state_dict()})
    return {"best_epoch": best_epoch, "best_metrics": best_row, "epochs_completed": len(rows),
            "stopped_early": len(rows) < epochs}
