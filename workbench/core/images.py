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
    orientation: int = 1  # EXIF orientation applied (1: none); width/height are the upright size
    stored_size: tuple[int, int] | None = None  # (width, height) of the pixels as stored in the file
    pages: int = 1  # frames in the file (multi-page TIFF); only the first is read


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_image(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """Decode an image fully into an array (H, W) or (H, W, C), RGB(A) order, native dtype.

    The EXIF orientation is applied (the array is upright, as viewers, annotation tools and
    ultralytics show it; ``ImageInfo.orientation`` says what was done). 16-bit colour PNGs are
    decoded at 16 bits (PIL would cut them to 8). Multi-page files give their first page
    (``ImageInfo.pages`` counts them). Raises :class:`ImageReadError` for missing, truncated or
    undecodable files.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                orientation, pages, stored = exif_orientation(im), getattr(im, "n_frames", 1), im.size
                mode = im.mode
                arr = to_array(im)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except ImageReadError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from None
    if png_bit_depth(path) == 16 and arr.ndim == 3 and arr.dtype == np.uint8:
        arr = _read_png16(path)  # PIL decodes 48/64-bit PNG as 8-bit RGB(A): keep all 16 bits
    if arr.size == 0:
        raise ImageReadError(path, "image has zero pixels")
    arr = orient_array(arr, orientation)
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    bits = 8 * arr.dtype.itemsize if arr.dtype != bool else 1
    return arr, ImageInfo(int(w), int(h), int(channels), int(bits), mode, orientation,
                          (int(stored[0]), int(stored[1])), int(pages))


# ----------------------------------------------------------------------------- EXIF orientation

# EXIF tag 274: how the stored pixels must be turned to be shown upright (what viewers, phone
# galleries, annotation tools in a browser and ultralytics' loader do).
ORIENTATIONS = {
    1: "none", 2: "mirrored left-right", 3: "rotated 180 degrees", 4: "mirrored top-bottom",
    5: "transposed (mirrored along the main diagonal)", 6: "rotated 90 degrees clockwise",
    7: "transversed (mirrored along the anti-diagonal)", 8: "rotated 90 degrees counter-clockwise",
}


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8) of an open image; 1 when absent or invalid."""
    try:
        value = int(im.getexif().get(274, 1))
    except Exception:  # a broken EXIF block must not make the image unreadable
        return 1
    return value if value in ORIENTATIONS else 1


def image_header(path: str | Path) -> tuple[tuple[int, int], int] | None:
    """(stored (width, height), EXIF orientation) from the file header, without decoding the
    pixels; None when the file cannot be opened (the writer, which decodes it, reports why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return (int(im.width), int(im.height)), exif_orientation(im)
    except Exception:  # PIL raises many types for corrupt files
        return None


def upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) once ``orientation`` is applied to a stored ``size``."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else (size[0], size[1])


def orient_array(arr: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels turned upright (EXIF ``orientation``); rows are y, columns x."""
    if orientation == 1:
        return arr
    turned = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
              5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
              7: lambda a: np.rot90(a, -1)[::-1], 8: lambda a: np.rot90(a, 1)}[orientation](arr)
    return np.ascontiguousarray(turned)


def orient_points(xy: np.ndarray, orientation: int, stored_size: tuple[int, int]) -> np.ndarray:
    """Points (n, 2) in the stored pixel frame (pixel edges) mapped into the upright frame.

    The same turn as :func:`orient_array`: a box drawn on the stored pixels covers the same
    pixels after both are turned.
    """
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    w, h = stored_size
    x, y = xy[:, 0], xy[:, 1]
    new = {1: (x, y), 2: (w - x, y), 3: (w - x, h - y), 4: (x, h - y), 5: (y, x),
           6: (h - y, x), 7: (h - y, w - x), 8: (y, w - x)}[orientation]
    return np.stack(new, axis=1)


def png_bit_depth(path: Path) -> int | None:
    """Bits per sample from a PNG header (IHDR), None for other files."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return None
    return head[24] if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" else None


def _read_png16(path: Path) -> np.ndarray:
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # native 16 bits, BGR(A), no EXIF turn
    if arr is None:
        raise ImageReadError(path, "16-bit PNG cannot be decoded")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return arr


def to_array(im: Image.Image) -> np.ndarray:
    """A loaded PIL image as an array in its native depth: 16-bit stays ``uint16``, 32-bit float
    ``float32``, 1-bit becomes 0/255, palette images RGB (RGBA with transparency) and CMYK/YCbCr/
    LAB/HSV RGB. Used for files (:func:`read_image`) and for embedded image data alike."""
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
