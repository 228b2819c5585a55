"""Reading images of any bit depth and channel layout, and the recorded 8-bit normalisation.

Microscopy images come as 8-bit RGB JPEG, 16-bit single-channel TIFF, RGBA PNG, ...
Training needs 8-bit; converting is an explicit, recorded step (:func:`to_uint8`), never
a silent cast.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

# Truncated files must fail loudly, not load with a grey tail.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Whole-slide tiles are large; the limit guards against decompression bombs only.
Image.MAX_IMAGE_PIXELS = 2**31

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
# Formats ultralytics/OpenCV read as-is: such 8-bit files are copied byte for byte.
COPYABLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: cannot read image: {reason}")


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    channels: int  # 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA
    bit_depth: int  # bits per channel of the decoded array
    mode: str  # PIL mode of the file


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_image(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """Decode an image fully into an array (H, W) or (H, W, C), RGB(A) order, native dtype.

    Raises :class:`ImageReadError` for missing, truncated or undecodable files.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                arr = _to_array(im)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except ImageReadError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from None
    if arr.size == 0:
        raise ImageReadError(path, "image has zero pixels")
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    bits = 8 * arr.dtype.itemsize if arr.dtype != bool else 1
    return arr, ImageInfo(int(w), int(h), int(channels), int(bits), mode)


def _to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.uint8) * 255
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
    elif mode == "CMYK" or mode == "YCbCr" or mode == "LAB" or mode == "HSV":
        im = im.convert("RGB")
    elif mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    arr = np.asarray(im)
    if mode == "I":
        # PIL opens 16-bit PNGs as 32-bit "I"; keep them 16-bit when the values fit.
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)
        return arr.astype(np.int32)
    if mode == "F":
        return arr.astype(np.float32)
    return np.ascontiguousarray(arr)


@dataclass(frozen=True)
class Normalisation:
    """How non-8-bit images become 8-bit: a per-dataset setting, recorded with the dataset.

    method: ``"percentile"`` (per-image stretch between the ``low``/``high`` percentiles),
    ``"minmax"`` (per-image min..max), or ``"shift"`` (keep the top 8 bits, no stretch).
    """

    method: str = "percentile"
    low: float = 0.5
    high: float = 99.5

    def __post_init__(self) -> None:
        if self.method not in ("percentile", "minmax", "shift"):
            raise ValueError(f"normalisation method must be percentile, minmax or shift, got {self.method!r}")
        if not 0 <= self.low < self.high <= 100:
            raise ValueError(f"need 0 <= low < high <= 100 percentiles, got {self.low}, {self.high}")

    def describe(self) -> str:
        if self.method == "percentile":
            return f"percentile stretch p{self.low:g}..p{self.high:g} per image"
        return {"minmax": "min..max stretch per image", "shift": "top 8 bits kept (no stretch)"}[self.method]


def to_uint8(arr: np.ndarray, norm: Normalisation = Normalisation()) -> tuple[np.ndarray, str]:
    """Return an 8-bit image with 1 or 3 channels and a note of what was done to it.

    8-bit grey or RGB passes through unchanged (note ``"none"``). Alpha is dropped;
    other depths are mapped with ``norm``; the note records the input range used.
    """
    notes = []
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        arr = arr[..., : arr.shape[2] - 1]
        notes.append("alpha channel dropped")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr), "; ".join(notes) or "none"
    data = arr.astype(np.float64)
    if norm.method == "shift" and arr.dtype == np.uint16:
        out = (arr >> 8).astype(np.uint8)
        notes.append(f"uint16 -> uint8: {norm.describe()}")
        return out, "; ".join(notes)
    if norm.method == "percentile":
        lo, hi = np.percentile(data, [norm.low, norm.high])
    else:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((data - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8)
    notes.append(f"{arr.dtype} -> uint8: {norm.describe()}, range [{lo:g}, {hi:g}] -> [0, 255]")
    return out, "; ".join(notes)


def save_png(arr: np.ndarray, path: str | Path) -> None:
    """Write an 8-bit grey or RGB array as PNG."""
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def pixel_sha256(arr: np.ndarray) -> str:
    """Hash of the decoded pixels (shape, dtype and values): equal for re-encoded copies."""
    h = hashlib.sha256(f"{arr.shape}{arr.dtype}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def perceptual_hash(arr8: np.ndarray) -> str:
    """64-bit perceptual hash (DCT pHash via ``imagehash``) of an 8-bit image, as hex."""
    import imagehash

    return str(imagehash.phash(Image.fromarray(arr8).convert("L")))
