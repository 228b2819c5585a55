"""Small helpers shared by importers: finding images, reading XML/JSON with clear errors."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from workbench.core.images import IMAGE_SUFFIXES, is_image_file
from workbench.core.problems import ProblemLog

# When one stem exists in several formats, the original (lossless, raw) is preferred.
SUFFIX_PREFERENCE = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg", ".webp")


def image_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in it if p.is_file() and is_image_file(p))


def pick_by_stem(files: list[Path], log: ProblemLog) -> dict[str, Path]:
    """Map stem -> file, choosing by :data:`SUFFIX_PREFERENCE` when a stem has several formats.

    The choice is recorded (severity info) so a user can see which copy was imported.
    """
    by_stem: dict[str, list[Path]] = {}
    for f in files:
        by_stem.setdefault(f.stem, []).append(f)
    return {stem: preferred_format(group, log) for stem, group in by_stem.items()}


def preferred_format(group: list[Path], log: ProblemLog) -> Path:
    """The original (lossless first, :data:`SUFFIX_PREFERENCE`) of one stem's files; a choice
    among several is recorded (info)."""
    group = sorted(group, key=lambda p: SUFFIX_PREFERENCE.index(p.suffix.lower())
                   if p.suffix.lower() in SUFFIX_PREFERENCE else len(SUFFIX_PREFERENCE))
    if len(group) > 1:
        others = ", ".join(p.name for p in group[1:])
        log.add(group[0], "several_image_formats", f"{group[0].stem!r} exists as {group[0].name} and {others}",
                action=f"imported {group[0].name} (original preferred)", severity="info")
    return group[0]


def parse_xml(path: Path, log: ProblemLog) -> ET.Element | None:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        log.add(path, "malformed_label_file", f"XML parse error: {exc}", action="skipped image",
                severity="error")
    except OSError as exc:
        log.add(path, "unreadable_label_file", str(exc), action="skipped image", severity="error")
    return None


def parse_json(path: Path, log: ProblemLog) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        log.add(path, "malformed_label_file", f"JSON parse error: {exc}", action="skipped",
                severity="error")
    except (OSError, UnicodeDecodeError) as exc:
        log.add(path, "unreadable_label_file", str(exc), action="skipped", severity="error")
    return None


__all__ = ["IMAGE_SUFFIXES", "image_files", "pick_by_stem", "preferred_format", "parse_xml", "parse_json"]
