"""Training libraries: a base set plus named extension batches, written as a new canonical dataset.

The source lab grows its libraries in batches (1000-3000 chromosome-aberration or
3000-10000 micronucleus images at a time) added to a base library; later batches may
count more. Here a library is::

    base batch + batches[0] + batches[1] + ...  (+ held-out images for val/test, never grown)

Each :class:`Batch` names images of a canonical dataset and carries metadata (date,
centre, dose group, style level, colour/grey, magnification, round/irregular, density
class) that becomes columns of the library's ``meta.csv`` (``batch``, ``batch_weight`` and
:data:`BATCH_FIELDS`); per-image columns (e.g. a derived ``style_level``) can be attached
too and win over the batch value. ``weight`` is an integer repeat factor: the batch's
training images are listed that many times in ``train.txt``, so ultralytics sees them
that much more often. ``downscale`` halves (2) or quarters (4) every image, e.g. 1600x1200
images for level/marker training; YOLO labels are normalised and stay valid, pixel boxes
are scaled. Images and labels are hard-linked (copied where linking is impossible); the
source datasets, and therefore raw data, are never modified. The folder appears atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from workbench.core.atomic import new_folder
from workbench.data.canonical import read_classes, read_meta, save_meta

BATCH_FIELDS = ("date", "centre", "dose_group", "style_level", "colour", "magnification", "shape",
                "density_class")


@dataclass(frozen=True)
class Batch:
    """Images of one canonical dataset added to a library together, with their metadata."""

    name: str
    dataset: Path
    image_ids: tuple[str, ...] | None = None  # None: every image of the dataset
    meta: Mapping[str, Any] = field(default_factory=dict)  # keys from BATCH_FIELDS
    weight: int = 1  # repeat factor of its training images in train.txt
    split: str | None = None  # force every image into this split (None: keep the dataset's)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\,\n"):
            raise ValueError(f"batch name must be a non-empty word without / \\ , (got {self.name!r})")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or self.weight < 1:
            raise ValueError(f"batch {self.name!r}: weight is an integer repeat factor >= 1, got {self.weight!r}")
        unknown = sorted(set(self.meta) - set(BATCH_FIELDS))
        if unknown:
            raise ValueError(f"batch {self.name!r}: unknown metadata {unknown}; known: {list(BATCH_FIELDS)}")
        if self.split not in (None, "train", "val", "test"):
            raise ValueError(f"batch {self.name!r}: split must be train, val or test, got {self.split!r}")


def partition(image_ids: Sequence[str], sizes: Sequence[int], *, seed: int = 0) -> list[tuple[str, ...]]:
    """Cut ``image_ids`` into consecutive chunks of ``sizes`` in a seeded hash order."""
    ids = [str(i) for i in image_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("image ids repeat")
    if any(s < 0 for s in sizes):
        raise ValueError(f"sizes must be >= 0, got {list(sizes)}")
    if sum(sizes) > len(ids):
        raise ValueError(f"sizes {list(sizes)} need {sum(sizes)} images, only {len(ids)} given")
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    out, k = [], 0
    for s in sizes:
        out.append(tuple(order[k:k + s]))
        k += s
    return out


def _rows(batch: Batch, role: str) -> pd.DataFrame:
    meta = read_meta(batch.dataset)
    if batch.image_ids is not None:
        want = [str(i) for i in batch.image_ids]
        missing = sorted(set(want) - set(meta["image_id"]))
        if missing:
            raise ValueError(f"batch {batch.name!r}: {len(missing)} image(s) not in {batch.dataset}, e.g. {missing[:3]}")
        meta = meta.set_index("image_id").loc[want].reset_index()
    if meta.empty:
        raise ValueError(f"batch {batch.name!r}: no images (from {batch.dataset}"
                         f"{', an empty id list' if batch.image_ids is not None else ''})")
    meta = meta.copy()
    meta["batch"] = batch.name
    meta["batch_role"] = role
    meta["batch_weight"] = batch.weight
    for f in BATCH_FIELDS:
        meta[f] = batch.meta.get(f, "")
    if batch.split is not None:
        meta["split"] = batch.split
    meta["_source"] = str(Path(batch.dataset).resolve())
    return meta


def library_meta(base: Batch, batches: Sequence[Batch], held_out: Sequence[Batch] = (),
                 image_meta: pd.DataFrame | None = None) -> pd.DataFrame:
    """The library's ``meta.csv`` rows (without writing anything); errors on repeated images."""
    names = [b.name for b in (base, *batches, *held_out)]
    if len(set(names)) != len(names):
        raise ValueError(f"batch names repeat: {names}")
    classes = {str(b.dataset): read_classes(b.dataset) for b in (base, *batches, *held_out)}
    first = read_classes(base.dataset)
    for src, cl in classes.items():
        if cl != first:
            raise ValueError(f"{src}: classes {cl} differ from the base's {first}; a library has one class list")
    parts = [_rows(base, "base")] + [_rows(b, "extension") for b in batches] + [_rows(b, "held_out") for b in held_out]
    meta = pd.concat(parts, ignore_index=True)
    dup = meta[meta["image_id"].duplicated(keep=False)]
    if len(dup):
        first_dup = dup["image_id"].iloc[0]
        where = dup.loc[dup["image_id"] == first_dup, "batch"].tolist()
        raise ValueError(f"image {first_dup!r} is in several batches {where}; each image joins a library once "
                         f"({dup['image_id'].nunique()} repeated)")
    if image_meta is not None:
        if "image_id" not in image_meta:
            raise ValueError("image_meta needs an 'image_id' column")
        extra = image_meta.drop_duplicates("image_id").set_index("image_id")
        for col in extra.columns:
            per_image = meta["image_id"].map(extra[col].astype(object))  # ints stay ints beside blanks
            merged = per_image.where(per_image.notna(), meta[col]) if col in meta else per_image
            meta[col] = merged.map(_plain).astype(object)
    return meta


def _plain(v: Any) -> Any:
    """2.0 -> 2 (pandas turns integer columns with blanks into floats); NaN -> ''."""
    if isinstance(v, float):
        return "" if v != v else int(v) if v.is_integer() else v
    return v


def write_library(base: Batch, batches: Sequence[Batch], out: str | Path, *, held_out: Sequence[Batch] = (),
                  image_meta: pd.DataFrame | None = None, downscale: int = 1, overwrite: bool = False,
                  note: Mapping[str, Any] | None = None) -> Path:
    """Write the library as a canonical dataset at ``out`` (see the module docstring)."""
    if downscale not in (1, 2, 4):
        raise ValueError(f"downscale must be 1, 2 or 4, got {downscale}")
    out = Path(out)
    meta = library_meta(base, batches, held_out, image_meta)
    classes = read_classes(base.dataset)
    objects = []
    size0 = meta.set_index("image_id")[["width", "height"]].astype(float)  # before any downscale
    with new_folder(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for k, row in meta.iterrows():
            src = Path(row["_source"])
            if downscale == 1:
                _link(src / row["file"], tmp / row["file"])
            else:
                meta.loc[k, ["file", "sha256", "width", "height", "pixel_sha256", "phash"]] = \
                    _downscaled(src / row["file"], tmp, downscale)
            if row["label_file"]:
                _link(src / row["label_file"], tmp / row["label_file"])
        for src, ids in meta.groupby("_source")["image_id"]:
            obj = pd.read_csv(Path(src) / "objects.csv", dtype={"image_id": str}, keep_default_na=False)
            objects.append(obj[obj["image_id"].isin(set(ids))])
        obj = pd.concat(objects, ignore_index=True)
        if downscale != 1 and len(obj):
            size1 = meta.set_index("image_id")[["width", "height"]].astype(float)
            sx = obj["image_id"].map(size1["width"] / size0["width"])
            sy = obj["image_id"].map(size1["height"] / size0["height"])
            obj[["x1", "x2"]] = obj[["x1", "x2"]].mul(sx, axis=0)
            obj[["y1", "y2"]] = obj[["y1", "y2"]].mul(sy, axis=0)
            obj["polygon"] = ""  # polygons are not rescaled; boxes are
        obj.to_csv(tmp / "objects.csv", index=False)
        final = meta.drop(columns=["_source"])
        save_meta(tmp, final, classes)
        _write_weighted_train_list(tmp, final)
        info = {"format": "library", "classes": classes, "images": int(len(final)),
                "library": library_record(base, batches, held_out, final, downscale=downscale, note=note)}
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def _downscaled(path: Path, tmp: Path, factor: int) -> list[Any]:
    import cv2

    from workbench.core.images import file_sha256, perceptual_hash, pixel_sha256, read_image, save_png

    arr, info = read_image(path)
    w, h = max(1, info.width // factor), max(1, info.height // factor)
    small = cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA)
    dest = tmp / "images" / f"{path.stem}.png"
    save_png(small, dest)
    return [f"images/{dest.name}", file_sha256(dest), w, h, pixel_sha256(small), perceptual_hash(small)]


def _write_weighted_train_list(root: Path, meta: pd.DataFrame) -> None:
    """train.txt with each training image repeated ``batch_weight`` times (after save_meta)."""
    from workbench.core.atomic import write_text

    train = meta[meta["split"] == "train"]
    if not len(train) or (train["batch_weight"] == 1).all():
        return
    lines = "".join(f"./{f}\n" * int(w) for f, w in zip(train["file"], train["batch_weight"]))
    write_text(root / "train.txt", lines)


def library_record(base: Batch, batches: Sequence[Batch], held_out: Sequence[Batch], meta: pd.DataFrame, *,
                   downscale: int, note: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What ``dataset.json`` records about a library: batches, metadata, weights, counts."""
    def one(b: Batch, role: str) -> dict[str, Any]:
        rows = meta[meta["batch"] == b.name]
        return {"name": b.name, "role": role, "dataset": str(Path(b.dataset).resolve()), "meta": dict(b.meta),
                "weight": b.weight, "split": b.split, "images": int(len(rows)),
                "splits": {str(s): int(n) for s, n in rows["split"].value_counts().items()}}

    train = meta[meta["split"] == "train"]
    return {"base": one(base, "base"), "batches": [one(b, "extension") for b in batches],
            "held_out": [one(b, "held_out") for b in held_out], "downscale": downscale,
            "train_images": int(len(train)),
            "train_list_entries": int(train["batch_weight"].astype(int).sum()) if len(train) else 0,
            "note": dict(note or {})}


def read_library(root: str | Path) -> dict[str, Any]:
    """The ``library`` record of a library folder (error if the folder is not a library)."""
    info = json.loads((Path(root) / "dataset.json").read_text(encoding="utf-8"))
    if "library" not in info:
        raise ValueError(f"{root}: not a library (dataset.json has no 'library' record)")
    return info["library"]


def add_batch(library: str | Path, batch: Batch, out: str | Path, *, overwrite: bool = False) -> Path:
    """A new library at ``out``: the library at ``library`` plus ``batch`` (the old one is untouched).

    Batches, their images, metadata, weights, held-out images and downscale are taken from
    the old library's record, so a library can be grown one batch at a time.
    """
    library = Path(library)
    if Path(out).resolve() == library.resolve():
        raise ValueError(f"{out}: write the grown library to a new folder (the old one is kept as it is)")
    rec = read_library(library)
    meta = read_meta(library)

    def again(b: dict[str, Any]) -> Batch:
        ids = tuple(meta.loc[meta["batch"] == b["name"], "image_id"].astype(str))
        return Batch(b["name"], Path(b["dataset"]), ids, b["meta"], int(b["weight"]), b.get("split"))

    # per-image values (levels, groups ...) of the images already in; the new batch brings its own
    per_image = [c for c in meta.columns if c not in set(read_meta(Path(rec["base"]["dataset"])).columns)
                 | {"batch", "batch_role", "batch_weight"}]
    image_meta = meta[["image_id", *per_image]] if per_image else None
    return write_library(again(rec["base"]), [again(b) for b in rec["batches"]] + [batch], out,
                         held_out=[again(b) for b in rec["held_out"]], image_meta=image_meta,
                         downscale=int(rec["downscale"]), overwrite=overwrite, note=rec.get("note"))


def _link(a: Path, b: Path) -> None:
    b.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(a, b)
    except OSError:
        shutil.copyfile(a, b)
