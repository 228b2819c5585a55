"""Pascal VOC XML: one ``.xml`` per image with ``<object><name>`` and ``<bndbox>``.

Accepted layouts: the VOC tree (``Annotations/``, ``JPEGImages/``, optional
``ImageSets/Main/{train,val,test}.txt`` kept as the official split), or one folder holding
images and XML side by side. Coordinates are taken as pixel edges, width = xmax - xmin
(as ultralytics' own VOC converter does), so exports write back the very same numbers.
"""
from __future__ import annotations

from pathlib import Path

from workbench.data.canonical import RawDataset, RawImage, RawObject
from workbench.core.problems import ProblemLog
from workbench.data.importers.common import image_files, parse_xml, pick_by_stem


def read(src: Path, **_: object) -> RawDataset:
    log = ProblemLog()
    ann_dir = src / "Annotations" if (src / "Annotations").is_dir() else src
    img_dir = src / "JPEGImages" if (src / "JPEGImages").is_dir() else src
    xmls = sorted(p for p in ann_dir.glob("*.xml") if not p.name.startswith("."))
    if not xmls:
        raise ValueError(f"{src}: no Pascal VOC .xml files found (looked in {ann_dir})")
    images = pick_by_stem(image_files(img_dir), log)
    split_of = _official_split(src / "ImageSets" / "Main")

    out = []
    for xml_path in xmls:
        root = parse_xml(xml_path, log)
        if root is None:
            continue
        if root.tag != "annotation":
            log.add(xml_path, "malformed_label_file", f"root element is <{root.tag}>, not <annotation>",
                    action="skipped image", severity="error")
            continue
        stem = xml_path.stem
        image_path = images.pop(stem, None)
        if image_path is None:
            fname = (root.findtext("filename") or "").strip()
            cand = img_dir / fname if fname else None
            image_path = cand if cand is not None and cand.is_file() else None
        objects = []
        for k, obj in enumerate(root.iter("object"), 1):
            name = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            try:
                coords = [float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr,arg-type]
            except (AttributeError, TypeError, ValueError):
                log.add(xml_path, "invalid_box", "missing or non-numeric <bndbox> coordinates",
                        action="skipped object", severity="error", object=f"object {k} ({name})")
                continue
            objects.append(RawObject(name, *coords, ref=f"object {k}"))
        declared = None
        size = root.find("size")
        if size is not None:
            try:
                declared = (int(float(size.findtext("width"))), int(float(size.findtext("height"))))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                declared = None
        if image_path is None:
            log.add(xml_path, "missing_image", f"no image for {stem!r} in {img_dir}",
                    action="skipped", severity="error")
            continue
        meta = {"split": split_of.get(stem, "")}
        out.append(RawImage(stem, image_path, objects, xml_path, declared, meta))
    for stem, image_path in sorted(images.items()):  # images that no XML describes
        out.append(RawImage(stem, image_path, None, None, None, {"split": split_of.get(stem, "")}))
    return RawDataset("voc", src, out, classes=None, problems=log)


def _official_split(folder: Path) -> dict[str, str]:
    """stem -> split from ImageSets/Main/{train,val,test}.txt (trainval is their union)."""
    split: dict[str, str] = {}
    for name in ("train", "val", "test"):
        f = folder / f"{name}.txt"
        if f.is_file():
            for line in f.read_text(encoding="utf-8").split():
                split.setdefault(line.strip(), name)
    return split
