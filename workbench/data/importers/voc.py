"""Pascal VOC XML: one ``.xml`` per image with ``<object><name>`` and ``<bndbox>``.

Accepted layouts: the VOC tree (``Annotations/``, ``JPEGImages/``, optional
``ImageSets/Main/{train,val,test}.txt`` kept as the official split), or one folder holding
images and XML side by side. Only the top level of those folders is read; files in subfolders
are reported (``subfolder_not_imported``), not silently left out. Coordinates are taken as
pixel edges, width = xmax - xmin (as ultralytics' own VOC converter does), so exports write
back the very same numbers.

The image of an XML is a file with the XML's stem (VOC's key, as ``ImageSets`` and ultralytics'
converter use it); of several formats of that stem the one ``<filename>`` names (not silently
the lossless namesake); a ``<filename>`` naming another file is reported (``filename_mismatch``);
without a file of the stem, the file ``<filename>`` names is used (``image_by_filename``). ``<difficult>`` and
``<truncated>`` are kept per object (``objects.csv``; difficult objects are to be ignored in
evaluation, as COCO-style evaluation does).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from workbench.data.canonical import RawDataset, RawImage, RawObject
from workbench.core.images import is_image_file
from workbench.core.problems import ProblemLog
from workbench.data.importers.common import image_files, parse_xml, preferred_format


def read(src: Path, **_: object) -> RawDataset:
    log = ProblemLog()
    ann_dir = src / "Annotations" if (src / "Annotations").is_dir() else src
    img_dir = src / "JPEGImages" if (src / "JPEGImages").is_dir() else src
    xmls = sorted(p for p in ann_dir.glob("*.xml") if not p.name.startswith("."))
    if not xmls:
        raise ValueError(f"{src}: no Pascal VOC .xml files found (looked in {ann_dir})")
    _report_subfolders(src, ann_dir, img_dir, log)
    files = image_files(img_dir)
    by_stem: dict[str, list[Path]] = {}
    for f in files:
        by_stem.setdefault(f.stem, []).append(f)
    by_name = {f.name.lower(): f for f in files}
    split_of = _official_split(src / "ImageSets" / "Main")

    out: list[RawImage] = []
    used: set[Path] = set()  # images an XML imports, or whose other format it imports (noted)
    for xml_path in xmls:
        root = parse_xml(xml_path, log)
        if root is None:
            continue
        if root.tag != "annotation":
            log.add(xml_path, "malformed_label_file", f"root element is <{root.tag}>, not <annotation>",
                    action="skipped image", severity="error")
            continue
        stem = xml_path.stem
        image_path = _image_of(xml_path, (root.findtext("filename") or "").strip(), by_stem, by_name, log)
        if image_path is None:
            log.add(xml_path, "missing_image", f"no image for {stem!r} in {img_dir}",
                    action="skipped", severity="error")
            continue
        used.add(image_path)
        if image_path.stem == stem:
            used.update(by_stem.get(stem, []))  # its other formats were noted by _image_of
        objects, rejected = _objects(root, xml_path, log)
        meta = {"split": split_of.get(stem, "")}
        out.append(RawImage(stem, image_path, objects, xml_path, _declared(root), meta, rejected=rejected))
    ids = {im.image_id for im in out}
    for stem, group in sorted(by_stem.items()):  # images that no XML describes
        left = [p for p in group if p not in used]
        if not left:
            continue
        if stem in ids:  # the XML of this stem names another file
            log.add(left[0], "image_not_imported", f"no XML names it, and {stem}.xml names another image",
                    action="not imported", severity="warning")
            continue
        out.append(RawImage(stem, preferred_format(left, log), None, None, None, {"split": split_of.get(stem, "")}))
    return RawDataset("voc", src, out, classes=None, problems=log)


def _image_of(xml_path: Path, filename: str, by_stem: dict[str, list[Path]], by_name: dict[str, Path],
              log: ProblemLog) -> Path | None:
    """The image of an XML: a file with its stem (VOC's key), of several the one ``<filename>``
    names; a ``<filename>`` that disagrees is reported. Without a file of its stem, the file
    ``<filename>`` names."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    named = by_name.get(name.lower()) if name else None
    same_stem = by_stem.get(xml_path.stem, [])
    if named is not None and named in same_stem:
        others = [p.name for p in same_stem if p != named]
        if others:
            log.add(xml_path, "several_image_formats", f"<filename> names {named.name}; {', '.join(others)} "
                    "share the XML's stem", action=f"imported {named.name} (the file the XML names)",
                    severity="info")
        return named
    if same_stem:
        chosen = preferred_format(same_stem, log)
        if name and PurePosixPath(name).suffix and name.lower() != chosen.name.lower():
            what = "another image" if named is not None else f"a file that is not in {chosen.parent}"
            log.add(xml_path, "filename_mismatch", f"<filename> names {name!r}, {what}; {chosen.name} has the "
                    "XML's stem", action=f"used {chosen.name}", severity="warning")
        return chosen
    if named is not None:
        log.add(xml_path, "image_by_filename", f"no image has the XML's stem; <filename> names {named.name}",
                action=f"used {named.name}", severity="info")
    return named


def _objects(root, xml_path: Path, log: ProblemLog) -> tuple[list[RawObject], int]:
    """The XML's objects and how many were rejected (problems logged)."""
    objects, rejected = [], 0
    for k, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        try:
            coords = [float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr,arg-type]
        except (AttributeError, TypeError, ValueError):
            log.add(xml_path, "invalid_box", "missing or non-numeric <bndbox> coordinates",
                    action="skipped object", severity="error", object=f"object {k} ({name})")
            rejected += 1
            continue
        difficult, truncated = _flag(obj, "difficult"), _flag(obj, "truncated")
        if difficult:
            log.add(xml_path, "difficult_object", "object is marked <difficult>1</difficult>",
                    action="kept with difficult=1 in objects.csv (ignore it in evaluation)",
                    severity="info", object=f"object {k} ({name})")
        objects.append(RawObject(name, *coords, ref=f"object {k}", difficult=difficult, truncated=truncated))
    return objects, rejected


def _flag(obj, tag: str) -> bool:
    try:
        return float((obj.findtext(tag) or "0").strip()) >= 1
    except ValueError:
        return (obj.findtext(tag) or "").strip().lower() == "true"


def _declared(root) -> tuple[int, int] | None:
    size = root.find("size")
    if size is None:
        return None
    try:
        return int(float(size.findtext("width"))), int(float(size.findtext("height")))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _report_subfolders(src: Path, ann_dir: Path, img_dir: Path, log: ProblemLog) -> None:
    """Subfolders of the annotation / image folders holding files this layout does not read."""
    for folder, what, test in ((ann_dir, ".xml", lambda p: p.suffix.lower() == ".xml"),
                               (img_dir, "image", is_image_file)):
        for sub in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
            if folder == src and sub.name in ("Annotations", "JPEGImages", "ImageSets"):
                continue
            n = sum(1 for p in sub.rglob("*") if p.is_file() and test(p))
            if n:
                log.add(sub, "subfolder_not_imported", f"{n} {what} file(s) in a subfolder of {folder.name}/; "
                        "VOC is read from the top level of the folder only",
                        action="not imported (move them up, or convert the subfolder as its own source)",
                        severity="warning")


def _official_split(folder: Path) -> dict[str, str]:
    """stem -> split from ImageSets/Main/{train,val,test}.txt (trainval is their union)."""
    split: dict[str, str] = {}
    for name in ("train", "val", "test"):
        f = folder / f"{name}.txt"
        if f.is_file():
            for line in f.read_text(encoding="utf-8-sig").split():
                split.setdefault(line.strip(), name)
    return split
