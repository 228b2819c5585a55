"""Predict boxes with a trained detector into the project's prediction table.

The table has one row per box: ``image`` (image id of a canonical dataset, else the file
stem or the name given), ``x1 y1 x2 y2`` (pixels of the original image), ``class`` (name),
``score``. An image without detections has no rows.

Colour order: ultralytics reads NumPy arrays as BGR (OpenCV order). Files are handed to
ultralytics as paths; arrays given here are RGB (as PIL, scikit-image and
:func:`workbench.core.images.read_image` return them) and are flipped before prediction.
Images that OpenCV would not read faithfully (16-bit, float, >4 channels) are decoded and
mapped to 8-bit here with the normalisation of the run's training dataset.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from workbench.data.canonical import read_meta, select_split
from workbench.core.device import all_cpu_threads, pick_device
from workbench.core.images import Normalisation, is_image_file, read_image, to_uint8
from workbench.core.tables import PREDICTION_COLUMNS, empty_predictions
from workbench.models.runs import read_run_record, run_weights

# PIL modes OpenCV decodes to the same 8-bit pixels: such files go to ultralytics as paths.
_CV2_SAFE_MODES = {"1", "L", "P", "RGB", "RGBA", "LA", "PA"}
_CV2_SAFE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}

Source = str | Path | Sequence[str | Path] | Mapping[str, "np.ndarray | str | Path"]


def predict(model: Any, source: Source, *, split: str | None = None, conf: float = 0.25,
            iou: float = 0.7, imgsz: int | None = None, device: str | None = None,
            max_det: int | None = None, batch: int = 8) -> pd.DataFrame:
    """Run a detector over ``source`` and return the prediction table.

    ``model``: a run folder, a weights file, or a loaded ``ultralytics.YOLO``.
    ``source``: a canonical dataset folder (images by meta id; ``split`` selects one split),
    a folder of images, one image file, a list of image files, or a mapping
    ``name -> RGB array | path``. ``imgsz`` and ``max_det`` default to the run's training
    values (else 640 and 300). ``conf`` is the score threshold (use ~0.001 for mAP).
    """
    if not 0 <= conf <= 1 or not 0 < iou <= 1:
        raise ValueError(f"need 0 <= conf <= 1 and 0 < iou <= 1, got conf={conf}, iou={iou}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    det = load_detector(model, imgsz=imgsz, max_det=max_det)
    yolo, imgsz, max_det, norm = det.yolo, det.imgsz, det.max_det, det.normalisation
    items = image_items(source, split=split)
    kwargs = dict(conf=conf, iou=iou, imgsz=imgsz, max_det=max_det, device=pick_device(device),
                  verbose=False, save=False)
    names = yolo.names
    parts = []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        prepared = [(name, _prepare(item, norm)) for name, item in chunk]
        # ultralytics takes a list of paths or a list of arrays, not a mix
        for group in ([p for p in prepared if isinstance(p[1], str)],
                      [p for p in prepared if not isinstance(p[1], str)]):
            if group:
                with all_cpu_threads(kwargs["device"]):
                    results = yolo.predict([src for _, src in group], batch=len(group), **kwargs)
                parts += [_rows(name, r, names) for (name, _), r in zip(group, results)]
    order = {name: k for k, (name, _) in enumerate(items)}
    table = pd.concat([empty_predictions(), *parts], ignore_index=True) if parts else empty_predictions()
    table = table.astype({"image": str, "class": str, "x1": float, "y1": float, "x2": float,
                          "y2": float, "score": float})
    key = table["image"].map(order)
    return (table.assign(_k=key).sort_values(["_k", "score"], ascending=[True, False], kind="stable")
            .drop(columns="_k").reset_index(drop=True))



def image_items(source: Source, *, split: str | None = None) -> list[tuple[str, Path | np.ndarray]]:
    """``(image name, path or RGB array)`` for every image of ``source`` (see :func:`predict`)."""
    if isinstance(source, Mapping):
        if split is not None:
            raise ValueError("split= applies to a canonical dataset source only")
        out = []
        for name, item in source.items():
            if isinstance(item, np.ndarray):
                out.append((str(name), item))
            else:
                out.append((str(name), _existing_image(item)))
        return out
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir() and (path / "meta.csv").is_file():
            return _dataset_items(path, split)
        if split is not None:
            raise ValueError(f"{source}: split= needs a canonical dataset folder (no meta.csv here)")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
            if not files:
                raise ValueError(f"{source}: folder has no image files")
            return _by_stem(files)
        return _by_stem([_existing_image(path)])
    if isinstance(source, Iterable):
        if split is not None:
            raise ValueError("split= applies to a canonical dataset source only")
        files = [_existing_image(p) for p in source]
        if not files:
            raise ValueError("no images given")
        return _by_stem(files)
    raise TypeError(f"unsupported source type {type(source).__name__}")


def _dataset_items(root: Path, split: str | None) -> list[tuple[str, Path]]:
    meta = select_split(read_meta(root), split, root)
    items = []
    for image_id, file in meta[["image_id", "file"]].itertuples(index=False):
        path = root / file
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image listed in {root / 'meta.csv'} is missing")
        items.append((str(image_id), path))
    return items


def _existing_image(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    return p


def _by_stem(files: list[Path]) -> list[tuple[str, Path]]:
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise ValueError(f"two images share the name {f.stem!r}: {seen[f.stem]} and {f}; "
                             "give a mapping name -> file instead")
        seen[f.stem] = f
    return list(seen.items())


def _prepare(item: Path | np.ndarray, norm: Normalisation) -> str | np.ndarray:
    """A path ultralytics reads faithfully, else a contiguous 8-bit BGR array."""
    if isinstance(item, Path):
        if item.suffix.lower() in _CV2_SAFE_SUFFIXES:
            try:
                with Image.open(item) as im:
                    mode, frames = im.mode, getattr(im, "n_frames", 1)
            except Exception:
                mode, frames = "", 1  # let read_image report the problem with the file name
            if mode in _CV2_SAFE_MODES and frames == 1:
                return str(item)
        arr, _ = read_image(item)
    else:
        arr = item
    arr8, _ = to_uint8(arr, norm)
    if arr8.ndim == 2:
        arr8 = np.repeat(arr8[..., None], 3, axis=2)
    if arr8.ndim != 3 or arr8.shape[2] != 3:
        raise ValueError(f"image array of shape {arr.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
    return np.ascontiguousarray(arr8[..., ::-1])  # RGB -> BGR for ultralytics


def _rows(name: str, result, names: Mapping[int, str]) -> pd.DataFrame:
    boxes = result.boxes
    xyxy = boxes.xyxy.cpu().numpy().reshape(-1, 4).astype(float)
    cls = boxes.cls.cpu().numpy().astype(int)
    return pd.DataFrame({"image": [name] * len(xyxy), "x1": xyxy[:, 0], "y1": xyxy[:, 1],
                         "x2": xyxy[:, 2], "y2": xyxy[:, 3],
                         "class": [str(names[int(c)]) for c in cls],
                         "score": boxes.conf.cpu().numpy().astype(float)})


@dataclass(frozen=True)
class LoadedDetector:
    """A detector with the settings its run recorded: what every inference path needs."""

    yolo: Any  # ultralytics.YOLO
    record: dict[str, Any] | None  # run.json, when the weights came from a run folder
    imgsz: int  # the run's training size unless given (else 640)
    max_det: int  # the run's max_det unless given (else 300)
    normalisation: Normalisation  # the 8-bit mapping of the training data


def load_detector(model: Any, *, imgsz: int | None = None, max_det: int | None = None) -> LoadedDetector:
    """Load a run folder, weights file or ``YOLO`` with its recorded size, max_det and normalisation."""
    yolo, record = _load(model)
    config = (record or {}).get("config", {})
    return LoadedDetector(yolo, record, int(imgsz or config.get("imgsz") or 640),
                          int(max_det or config.get("max_det") or 300), _normalisation(record))


def _load(model: Any) -> tuple[Any, dict[str, Any] | None]:
    """(YOLO, run record or None) for a run folder, a weights file or a loaded model."""
    if hasattr(model, "predict") and hasattr(model, "names"):
        return model, None
    from workbench.models.yolo import load_model

    path = Path(model).expanduser()
    record = None
    if path.is_dir():
        record = read_run_record(path)
        weights = run_weights(path)
    elif path.is_file():
        weights = path
        run_dir = path.parent.parent  # <run>/weights/best.pt
        if (run_dir / "run.json").is_file():
            record = read_run_record(run_dir)
    else:
        raise FileNotFoundError(f"{model}: no such run folder or weights file")
    return load_model(weights), record


def _normalisation(record: dict[str, Any] | None) -> Normalisation:
    """The 8-bit mapping the training data used (recorded in its dataset.json), else the default."""
    path = Path((record or {}).get("dataset", {}).get("path", "") or "") / "dataset.json"
    if record and path.is_file():
        norm = json.loads(path.read_text(encoding="utf-8")).get("normalisation", {})
        try:
            return Normalisation(norm.get("method", "percentile"), float(norm.get("low", 0.5)),
                                 float(norm.get("high", 99.5)))
        except (TypeError, ValueError):
            pass
    return Normalisation()
