"""Dense micronucleus / nucleus detector: a U-Net over a timm encoder, trained per pixel.

Box regressors fight their stride on 5 px micronuclei (MN); a dense output at full resolution
sees a 5 px MN as ~20 pixels. Like MNFinder's own model (an Attention U-Net on 128 px crops
predicting background / nucleus / MN), the network here predicts one of :data:`CLASSES` per
pixel; :mod:`workbench.inference.dense` turns the probabilities into boxes and the prediction
table.

* Network: ``segmentation_models_pytorch.Unet`` over a timm encoder (``tu-resnet18`` by
  default), random init (``encoder_weights=None``) or local weights; nothing is downloaded.
* Targets: rasterised from the canonical dataset's ``objects.csv`` polygons (pixel-corner
  outlines from the masks importer; boxes without a polygon become their inscribed ellipse).
  MN are painted over nuclei; touching nuclei are parted by a 1 px background line so their
  instances stay apart after connected components (inference gives the line back). Targets,
  the split and the crops live in :mod:`workbench.models.dense_data`.
* Data: only the images of ``train_split``; a share of them, whole acquisition sets
  (``group_by``, the ``set`` column of the masks importer), is held out for validation (the
  epoch metrics, best.pt, and the thresholds tuned by :func:`workbench.inference.dense.tune_thresholds`).
  Random crops, a share centred on a MN (MN cover < 1 % of the pixels), rot90/flips and
  intensity jitter (gamma, contrast, brightness, noise), on the 8-bit images of the canonical
  dataset (16-bit sources went through its recorded normalisation).
* Loss: cross-entropy (MN pixels weighted ``mn_weight``) + soft dice of the MN channel.

A run folder ``<runs_root>/<run_id>/`` describes itself like the detector's
(:mod:`workbench.models.runs`): ``run.json`` (config, seed, versions, git, dataset fingerprint
and normalisation, train/val images, device, status), ``metrics.csv`` (one row per epoch),
``weights/last.pt`` (resumable: model, optimiser, scheduler, epoch) and ``weights/best.pt``
(highest validation MN dice). Seeds fix the split, the crops and the initial weights.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from workbench.core.atomic import new_file
from workbench.core.tables import utc_now
from workbench.models.dense_data import (
    CLASSES, MN, NUCLEUS, crop_batch, epoch_rngs, load_training_images, split_by_group)
from workbench.models.runs import (
    METRICS_FILE, check_run_name, dataset_fingerprint, finished_with, git_state, make_run_id, package_versions,
    read_run_record, runs_dir, update_run_record, write_run_record)

FAMILY = "dense"
VAL_STREAM = 2 ** 31 - 1  # the "epoch" whose crops are the fixed validation crops (never a training epoch)
STRIDE_BASE = 2  # each encoder stage halves the resolution: inputs must divide by 2 ** depth
Log = Callable[[str], None]


@dataclass(frozen=True)
class DenseConfig:
    """Every setting of a dense run, with its meaning and unit (recorded in ``run.json``)."""

    encoder: str = "tu-resnet18"  # smp encoder name; "tu-<timm name>" = any timm features_only model
    encoder_depth: int = 3  # encoder stages used (3: down to stride 8, ~100 px receptive field)
    decoder_channels: tuple[int, ...] = (64, 32, 16)  # one per stage, highest resolution last
    crop: int = 128  # training crop side (px; MNFinder trains on 128 px crops)
    batch: int = 16  # crops per optimiser step
    epochs: int = 16  # passes of crops_per_epoch crops (16 x 512 crops: ~25 min on 2 idle CPU cores)
    crops_per_epoch: int = 512  # random crops per epoch (fresh each epoch, seeded by seed and epoch)
    mn_crop_share: float = 0.5  # share of crops centred (+- crop/3) on a random MN
    lr: float = 1e-3  # AdamW learning rate (cosine decay to 5 % over the epochs)
    weight_decay: float = 1e-4  # AdamW weight decay
    mn_weight: float = 5.0  # cross-entropy weight of MN pixels (background and nucleus: 1)
    dice_weight: float = 1.0  # weight of the soft dice loss of the MN channel
    val_share: float = 0.2  # share of the training images held out (whole groups) for validation and tuning
    group_by: str = "set"  # meta column of acquisition sets; the validation split never cuts one
    val_crops: int = 64  # fixed validation crops (seeded) scored after every epoch
    tile: int = 512  # inference window side (px), see workbench.inference.dense.probabilities
    tile_overlap: int = 64  # overlap of inference windows (px), blended with a linear ramp
    nucleus_gap: bool = True  # part touching nuclei by a 1 px background line in the targets
    mn_class: str = "mn"  # the dataset's micronucleus class
    nucleus_class: str = "nucleus"  # the dataset's nucleus class
    seed: int = 0  # split, crops, augmentation and initial weights

    def __post_init__(self) -> None:
        if self.encoder_depth < 1 or len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(f"need one decoder channel count per encoder stage: depth {self.encoder_depth}, "
                             f"decoder_channels {self.decoder_channels}")
        if self.crop % STRIDE_BASE ** self.encoder_depth or self.tile % STRIDE_BASE ** self.encoder_depth:
            raise ValueError(f"crop ({self.crop}) and tile ({self.tile}) must divide by "
                             f"{STRIDE_BASE ** self.encoder_depth} (2 ** encoder_depth)")
        if not 0 <= self.mn_crop_share <= 1 or not 0 < self.val_share < 1:
            raise ValueError(f"need 0 <= mn_crop_share <= 1 and 0 < val_share < 1, got {self.mn_crop_share}, "
                             f"{self.val_share}")
        if min(self.epochs, self.batch, self.crops_per_epoch, self.val_crops) < 1 or self.tile_overlap >= self.tile:
            raise ValueError("epochs, batch, crops_per_epoch and val_crops must be >= 1 and tile_overlap < tile")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        return d

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "DenseConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"unknown dense setting(s) {unknown}; known: {sorted(known)}")
        doc = dict(doc)
        if "decoder_channels" in doc:
            doc["decoder_channels"] = tuple(int(c) for c in doc["decoder_channels"])
        return cls(**doc)

    @property
    def spec(self) -> str:
        """The model's name in run records: ``unet-<encoder>-d<depth>-<decoder channels>``."""
        return f"unet-{self.encoder}-d{self.encoder_depth}-" + "-".join(map(str, self.decoder_channels))


# ----------------------------------------------------------------------------- model

def build_model(cfg: DenseConfig, in_channels: int):
    """The U-Net of ``cfg`` with random weights (``encoder_weights=None``: never a download)."""
    import segmentation_models_pytorch as smp

    return smp.Unet(cfg.encoder, encoder_weights=None, encoder_depth=cfg.encoder_depth, in_channels=in_channels,
                    classes=len(CLASSES), decoder_channels=tuple(cfg.decoder_channels))


def load_dense(run_dir: str | Path, *, which: str = "best", device: str = "cpu"):
    """(model in eval mode on ``device``, run record) of a dense run; ``which``: best or last."""
    import torch

    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    if (record.get("model") or {}).get("family") != FAMILY:
        raise ValueError(f"{run_dir}: not a dense run (model family {(record.get('model') or {}).get('family')!r})")
    path = run_dir / "weights" / f"{which}.pt"
    if not path.is_file():
        path = run_dir / "weights" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no weights/{which}.pt or weights/last.pt")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(DenseConfig.from_dict(ckpt["config"]), int(ckpt["in_channels"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), record


def recorded_normalisation(record: dict[str, Any]):
    """The 8-bit mapping of a dense run's training data (``run.json`` dataset.normalisation)."""
    from workbench.core.images import Normalisation

    norm = (record.get("dataset") or {}).get("normalisation") or {}
    return Normalisation(norm.get("method", "percentile"), float(norm.get("low", 0.5)), float(norm.get("high", 99.5)))


# ----------------------------------------------------------------------------- loss and metrics

def loss_terms(logits, target, cfg: DenseConfig):
    """(total, cross-entropy, MN dice loss) of a batch (torch tensors)."""
    import torch
    import torch.nn.functional as F

    weight = torch.tensor([1.0, 1.0, cfg.mn_weight], device=logits.device)
    ce = F.cross_entropy(logits, target, weight=weight)
    p = logits.softmax(1)[:, MN]
    t = (target == MN).float()
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return ce + cfg.dice_weight * dice, ce, dice


def dice_counts(pred: np.ndarray, target: np.ndarray, cls: int) -> tuple[int, int, int]:
    """(true positive, predicted, true) pixel counts of class ``cls`` (argmax maps)."""
    p, t = pred == cls, target == cls
    return int((p & t).sum()), int(p.sum()), int(t.sum())


def dice(tp: int, n_pred: int, n_true: int) -> float:
    return 2 * tp / (n_pred + n_true) if n_pred + n_true else float("nan")


# ----------------------------------------------------------------------------- training

def train_dense(dataset: str | Path, *, config: DenseConfig = DenseConfig(), device: str | None = None,
                train_split: str = "train", run_name: str | None = None, runs_root: str | Path | None = None,
                resume: bool = False, pretrained: str | Path | None = None, log: Log = print) -> Path:
    """Train a dense detector on canonical dataset ``dataset``; return the run folder.

    Only images of ``train_split`` are read (validation = whole ``config.group_by`` groups of
    them). ``resume=True`` continues run ``run_name`` in ``runs_root`` from ``weights/last.pt``
    with its recorded config (``config`` is ignored). ``pretrained``: local weights (a dense
    run's ``best.pt`` or a state dict) loaded where names and shapes match.
    """
    from workbench.core.device import pick_device

    root = Path(runs_root).expanduser().resolve() if runs_root else runs_dir()
    if resume:
        if not run_name:
            raise ValueError("resume=True needs run_name= (the id of the run folder to resume)")
        run_dir = root / check_run_name(run_name)
        record = read_run_record(run_dir)
        if record.get("status") == "finished":
            raise ValueError(f"{run_dir}: run finished all {record['config']['epochs']} epochs; nothing to resume")
        cfg = DenseConfig.from_dict(record["config"]["dense"])
        dev = pick_device(device or record["config"].get("device"))
        record["resumed"] = [*record.get("resumed", []), {"at": utc_now(), "device": dev}]
        record.update(status="running", error=None)
        write_run_record(run_dir, record)
        return _fit(run_dir, record, cfg, dev, log=log)
    cfg, dev = config, pick_device(device)
    data_root = Path(dataset).expanduser().resolve()
    data_root = data_root.parent if data_root.is_file() else data_root
    run_dir = _new_run_dir(root, run_name, data_root.name, cfg)
    record = _new_record(run_dir, data_root, cfg, dev, train_split=train_split, pretrained=pretrained)
    run_dir.mkdir(parents=True, exist_ok=True)  # only once the data and settings passed their checks
    write_run_record(run_dir, record)
    return _fit(run_dir, record, cfg, dev, log=log)


def _new_run_dir(root: Path, run_name: str | None, dataset_name: str, cfg: DenseConfig) -> Path:
    """The folder of a new run (not created yet): ``run_name``, else a fresh readable id."""
    root.mkdir(parents=True, exist_ok=True)
    if run_name:
        run_dir = root / check_run_name(run_name)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(f"{run_dir}: run folder exists; choose another run_name or resume it with resume=True")
        return run_dir
    return root / make_run_id(dataset_name, cfg.spec, cfg.seed, root=root)


def _new_record(run_dir: Path, data_root: Path, cfg: DenseConfig, dev: str, *, train_split: str,
                pretrained: str | Path | None) -> dict[str, Any]:
    """The run record of a new run (checks the data and the settings; writes nothing)."""
    from workbench.core.device import describe_device, use_amp
    from workbench.data.canonical import read_classes, read_meta

    meta = read_meta(data_root)
    pool = meta[meta["split"] == train_split]
    classes = read_classes(data_root)
    for c in (cfg.mn_class, cfg.nucleus_class):
        if c not in classes:
            raise ValueError(f"{data_root}: no class {c!r} (classes: {classes}); set mn_class / nucleus_class")
    train_ids, val_ids, note = split_by_group(pool, val_share=cfg.val_share, group_by=cfg.group_by, seed=cfg.seed)
    info_path = data_root / "dataset.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    pre = Path(pretrained).expanduser().resolve() if pretrained else None
    if pre is not None and not pre.is_file():
        raise FileNotFoundError(f"{pretrained}: pretrained weights file not found (never downloaded)")
    record = {
        "run_id": run_dir.name, "status": "running", "created": utc_now(), "finished": None, "duration_s": None,
        "dataset": {"path": str(data_root), "name": data_root.name, "classes": classes, "train_split": train_split,
                    "images": {"train": len(train_ids), "val": len(val_ids)}, "train_images": train_ids,
                    "val_images": val_ids, "val_split": note, "normalisation": info.get("normalisation", {}),
                    "fingerprint": dataset_fingerprint(data_root)},
        "model": {"family": FAMILY, "spec": cfg.spec, "architecture": "Unet", "encoder": cfg.encoder,
                  "classes": list(CLASSES), "pretrained": str(pre) if pre else None},
        "config": {"epochs": cfg.epochs, "imgsz": cfg.crop, "batch": cfg.batch, "seed": cfg.seed, "device": dev,
                   "amp": use_amp(dev), "dense": cfg.to_dict()},
        "device": describe_device(dev),
        "versions": {"python": sys.version.split()[0],
                     **package_versions(("workbench", "torch", "timm", "segmentation-models-pytorch", "numpy",
                                         "scikit-image", "scipy"))},
        "git": git_state(), "command": " ".join(sys.argv), "resumed": [],
    }
    return record


def _fit(run_dir: Path, record: dict[str, Any], cfg: DenseConfig, dev: str, *, log: Log) -> Path:
    """The training loop (new or resumed run); finishes the record whatever happens."""
    from workbench.core.device import all_cpu_threads

    t0 = time.perf_counter()
    try:
        with all_cpu_threads(dev):
            _epochs(run_dir, record, cfg, dev, log=log)
    except BaseException as exc:
        update_run_record(run_dir, status="failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted",
                          error=f"{type(exc).__name__}: {exc}",
                          duration_s=round((record.get("duration_s") or 0) + time.perf_counter() - t0, 2))
        raise
    best = _best_row(run_dir)
    update_run_record(run_dir, status="finished", finished=utc_now(), error=None,
                      duration_s=round((record.get("duration_s") or 0) + time.perf_counter() - t0, 2),
                      final=best, model={**record["model"], "parameters": _parameters(run_dir)})
    log(f"[dense] {run_dir.name}: finished; best epoch {best.get('epoch')} (val MN dice {best.get('val_mn_dice')})")
    return run_dir


def _epochs(run_dir: Path, record: dict[str, Any], cfg: DenseConfig, dev: str, *, log: Log) -> None:
    """Epochs ``start..cfg.epochs`` (``start`` > 0 when resuming), each saved before the next."""
    import torch

    ds = record["dataset"]
    root = Path(ds["path"])
    train = load_training_images(root, ds["train_images"], cfg)
    val = load_training_images(root, ds["val_images"], cfg)
    val_x, val_y = crop_batch(val, epoch_rngs(cfg.seed, VAL_STREAM, cfg.val_crops), cfg, train=False)
    torch.manual_seed(cfg.seed)
    in_channels = 1 if train.images[0].ndim == 2 else train.images[0].shape[2]
    model = build_model(cfg, in_channels).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * 0.05)
    start, best = _restore(run_dir, record, model, opt, sched)
    steps = math.ceil(cfg.crops_per_epoch / cfg.batch)
    amp = bool(record["config"].get("amp")) and dev.startswith("cuda")
    for epoch in range(start, cfg.epochs):
        t_epoch = time.perf_counter()
        model.train()
        rngs = epoch_rngs(cfg.seed, epoch, steps * cfg.batch)
        sums = np.zeros(3)
        for s in range(steps):
            x, y = crop_batch(train, rngs[s * cfg.batch:(s + 1) * cfg.batch], cfg, train=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):  # bf16 needs no loss scaling
                logits = model(torch.from_numpy(x).to(dev))
            total, ce, dl = loss_terms(logits.float(), torch.from_numpy(y).to(dev), cfg)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sums += [float(total.detach()), float(ce.detach()), float(dl.detach())]
        sched.step()
        row = {"epoch": epoch + 1, "time_s": round(time.perf_counter() - t_epoch, 2),
               "train_loss": sums[0] / steps, "train_ce": sums[1] / steps, "train_mn_dice_loss": sums[2] / steps,
               **_validate(model, val_x, val_y, cfg, dev), "lr": opt.param_groups[0]["lr"]}
        improved = not (row["val_mn_dice"] <= best)  # NaN (no MN predicted or true) never beats a number
        best = row["val_mn_dice"] if improved and not np.isnan(row["val_mn_dice"]) else best
        _save_epoch(run_dir, row, model, opt, sched, cfg, in_channels, best, improved)
        log(f"[dense] epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.3f}, val loss {row['val_loss']:.3f}, "
            f"val MN dice {row['val_mn_dice']:.3f}, {row['time_s']:.0f} s")


def _validate(model, x: np.ndarray, y: np.ndarray, cfg: DenseConfig, dev: str) -> dict[str, float]:
    """Loss and pixel dice (argmax) of MN and nuclei on the fixed validation crops."""
    import torch

    model.eval()
    losses, preds = [], []
    with torch.no_grad():
        for s in range(0, len(x), cfg.batch):
            logits = model(torch.from_numpy(x[s:s + cfg.batch]).to(dev))
            losses.append(float(loss_terms(logits, torch.from_numpy(y[s:s + cfg.batch]).to(dev), cfg)[0]))
            preds.append(logits.argmax(1).cpu().numpy())
    pred = np.concatenate(preds)
    tp, n_pred, n_true = dice_counts(pred, y, MN)
    return {"val_loss": float(np.mean(losses)), "val_mn_dice": dice(tp, n_pred, n_true),
            "val_mn_pixel_precision": tp / n_pred if n_pred else float("nan"),
            "val_mn_pixel_recall": tp / n_true if n_true else float("nan"),
            "val_nucleus_dice": dice(*dice_counts(pred, y, NUCLEUS))}


def _restore(run_dir: Path, record: dict[str, Any], model, opt, sched) -> tuple[int, float]:
    """(first epoch to run, best validation MN dice so far): from ``weights/last.pt`` when
    resuming, else from scratch (or from ``pretrained`` weights where they fit)."""
    import torch

    last = run_dir / "weights" / "last.pt"
    if last.is_file():
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        _trim_metrics(run_dir, int(ckpt["epoch"]))
        return int(ckpt["epoch"]), float(ckpt["best"])
    pre = (record.get("model") or {}).get("pretrained")
    if pre:
        state = torch.load(pre, map_location="cpu", weights_only=False)
        state = state.get("model", state) if isinstance(state, dict) else state
        own = model.state_dict()
        fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(fit, strict=False)
        update_run_record(run_dir, pretrained_layers={"loaded": len(fit), "of": len(own)})
    return 0, -math.inf


def _trim_metrics(run_dir: Path, epochs: int) -> None:
    """Drop metric rows after the checkpoint's epoch (an epoch cut short by an interruption)."""
    path = run_dir / METRICS_FILE
    if path.is_file():
        m = pd.read_csv(path)
        with new_file(path) as tmp:
            m[m["epoch"] <= epochs].to_csv(tmp, index=False)


def _save_epoch(run_dir: Path, row: dict[str, Any], model, opt, sched, cfg: DenseConfig, in_channels: int,
                best: float, improved: bool) -> None:
    """Append the epoch's metrics, write last.pt (resumable) and, if it improved, best.pt."""
    import torch

    path = run_dir / METRICS_FILE
    m = pd.concat([pd.read_csv(path) if path.is_file() else None, pd.DataFrame([row])], ignore_index=True)
    with new_file(path) as tmp:
        m.to_csv(tmp, index=False)
    weights = {"model": model.state_dict(), "config": cfg.to_dict(), "in_channels": in_channels,
               "classes": list(CLASSES), "epoch": row["epoch"]}
    if improved:
        with new_file(run_dir / "weights" / "best.pt") as tmp:
            torch.save(weights, tmp)
    with new_file(run_dir / "weights" / "last.pt") as tmp:
        torch.save({**weights, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "best": best}, tmp)


def _best_row(run_dir: Path) -> dict[str, Any]:
    m = pd.read_csv(run_dir / METRICS_FILE)
    if m["val_mn_dice"].notna().any():
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in m.loc[m["val_mn_dice"].idxmax()].items()}
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in m.iloc[-1].items()}


def _parameters(run_dir: Path) -> int:
    import torch

    ckpt = torch.load(run_dir / "weights" / "last.pt", map_location="cpu", weights_only=False)
    return int(sum(v.numel() for k, v in ckpt["model"].items() if "num_batches_tracked" not in k))


def dense_finished_with(run_dir: str | Path, cfg: DenseConfig, *, dataset: str | Path,
                        pretrained: str | Path | None = None) -> bool:
    """True when ``run_dir`` is a finished dense run of exactly ``cfg`` on ``dataset`` (the one
    reuse policy, :func:`workbench.models.runs.finished_with`, plus every dense setting)."""
    if not finished_with(run_dir, model=cfg.spec, epochs=cfg.epochs, imgsz=cfg.crop, batch=cfg.batch, seed=cfg.seed,
                         pretrained=pretrained, dataset=dataset):
        return False
    return read_run_record(run_dir)["config"].get("dense") == cfg.to_dict()

