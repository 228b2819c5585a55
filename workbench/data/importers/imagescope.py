"""Aperio ImageScope XML polygons (MoNuSeg H&E nuclei): format names ``monuseg``, ``imagescope``.

One ``<name>.xml`` per image: ``<Annotations MicronsPerPixel=..><Annotation Name=..>
<Regions><Region Id=..><Vertices><Vertex X=.. Y=../>`` with X the column and Y the row in
pixels (floats). Each Region becomes one object: its box is the min/max of its vertices, its
polygon is kept as given (not clipped: :func:`~workbench.data.canonical.write_canonical` clips the
box and reports ``box_out_of_bounds``), ``ref`` is ``"Region Id N"``.

Layouts: any folder tree; every ``.xml`` below ``src`` is paired with the image of the same
stem: first in the XML's own folder (official test archive: tiles and XML side by side),
then in a sibling folder (official training archive: ``Annotations/`` beside ``Tissue Images/``
or ``Tissue_Images/``), then anywhere below ``src``. Images without an XML are imported
unlabelled; an XML without an image, a malformed XML or one whose root is not
``<Annotations>`` is an error and that image is skipped.

Classes: one, ``class_name`` (default "nucleus"). With ``use_annotation_names`` a non-empty
``Annotation Name`` (ImageScope's layer name) becomes the class of that layer's regions;
MoNuSeg leaves it empty. Per image, ``MicronsPerPixel`` is kept as the meta column
``microns_per_pixel`` (empty where the file has none). An official split is read from folder
names when they name two or more (``MoNuSegTrainingData`` + ``MoNuSegTestData``; rule in
:mod:`.foldersplit`). Image ids are stems (path below ``src`` where stems repeat).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from workbench.data.canonical import RawDataset, RawImage, RawObject
from workbench.core.problems import ProblemLog
from workbench.data.importers.common import image_files, pick_by_stem
from workbench.data.importers.foldersplit import official_splits, split_from_folders

FORMAT = "monuseg"


@dataclass
class Region:
    """One ``<Region>`` as parsed: id, layer, vertices (X column, Y row) and any fault."""

    ref: str
    layer: str  # Annotation Name ('' when unnamed)
    layer_id: str  # Annotation Id
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)
    fault: str = ""  # non-empty: the region cannot be used (e.g. a non-numeric vertex)


@dataclass
class ImageScopeFile:
    microns_per_pixel: str  # as written ('' when absent)
    regions: list[Region]


class ImageScopeError(ValueError):
    """Not a well-formed ImageScope annotation file; the message says where and why."""


def parse_imagescope(data: bytes) -> ImageScopeFile:
    """Parse ImageScope XML bytes (expat start-element handlers, no tree built: the files are big).

    Raises :class:`ImageScopeError` for malformed XML or a root other than ``<Annotations>``.
    """
    regions: list[Region] = []
    state = {"root": None, "mpp": "", "layer": "", "layer_id": "", "layers": 0, "region": None}

    def start(tag: str, attrs: dict[str, str]) -> None:
        if state["root"] is None:
            state["root"] = tag
            if tag != "Annotations":
                raise ImageScopeError(f"root element is <{tag}>, not <Annotations> (not an ImageScope file)")
            state["mpp"] = attrs.get("MicronsPerPixel", "").strip()
        elif tag == "Vertex":
            region = state["region"]
            if region is None or region.fault:
                return
            try:
                region.xs.append(float(attrs["X"]))
                region.ys.append(float(attrs["Y"]))
            except (KeyError, ValueError):
                bad = {k: attrs[k] for k in ("X", "Y") if k in attrs}
                region.fault = f"vertex {len(region.xs) + 1} has no numeric X/Y: {bad}"
        elif tag == "Region":
            rid = attrs.get("Id", "").strip() or f"#{len(regions) + 1}"
            state["region"] = Region(f"Region Id {rid}", state["layer"], state["layer_id"])
            regions.append(state["region"])
        elif tag == "Annotation":
            state["layers"] += 1
            state["layer"] = attrs.get("Name", "").strip()
            state["layer_id"] = attrs.get("Id", str(state["layers"]))

    def end(tag: str) -> None:
        if tag == "Region":
            state["region"] = None

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise ImageScopeError(f"XML parse error: {exc}") from None
    if state["layers"] > 1:  # Region Ids restart per layer: name the layer too
        for r in regions:
            r.ref = f"{r.ref} (Annotation {r.layer_id})"
    return ImageScopeFile(state["mpp"], regions)


def regions_to_objects(regions: list[Region], where: Path, log: ProblemLog, *,
                       class_name: str, use_annotation_names: bool) -> list[RawObject]:
    """Boxes from vertex min/max; faulty or empty regions are skipped, degenerate ones kept."""
    objects = []
    for r in regions:
        if r.fault:
            log.add(where, "invalid_polygon", r.fault, action="skipped object", severity="error", object=r.ref)
            continue
        n = len(r.xs)
        if n == 0:
            log.add(where, "invalid_polygon", "region has no vertices", action="skipped object",
                    severity="error", object=r.ref)
            continue
        if n < 3:
            log.add(where, "degenerate_polygon", f"region has {n} {'vertex' if n == 1 else 'vertices'}, "
                    "a polygon needs 3",
                    action="kept its box", severity="warning", object=r.ref)
        cls = r.layer if (use_annotation_names and r.layer) else class_name
        objects.append(RawObject(cls, min(r.xs), min(r.ys), max(r.xs), max(r.ys), ref=r.ref,
                                 polygon=list(zip(r.xs, r.ys))))
    return objects


def read(src: Path, *, class_name: str = "nucleus", use_annotation_names: bool = False) -> RawDataset:
    """Import every ImageScope ``.xml`` below ``src`` with its image (see the module docstring)."""
    src = Path(src)
    if not class_name.strip():
        raise ValueError("class_name must not be empty")
    log = ProblemLog()
    if not src.is_dir():
        raise ValueError(f"{src}: expected a folder holding ImageScope .xml files and images")
    xmls = sorted(p for p in src.rglob("*.xml") if p.is_file() and not p.name.startswith("."))
    if not xmls:
        raise ValueError(f"{src}: no ImageScope .xml files found (searched all folders below it)")
    images = _images_by_folder(src, log)

    items: list[RawImage] = []
    paired: set[Path] = set()
    for xml_path in xmls:
        image_path = _find_image(xml_path, images, src, log)
        try:
            parsed = parse_imagescope(xml_path.read_bytes())
        except ImageScopeError as exc:
            log.add(xml_path, "malformed_label_file", str(exc), action="skipped image", severity="error")
            if image_path is not None:
                paired.add(image_path)
            continue
        except OSError as exc:
            log.add(xml_path, "unreadable_label_file", str(exc), action="skipped image", severity="error")
            continue
        if image_path is None:
            log.add(xml_path, "missing_image", f"no image named {xml_path.stem}.* below {src}",
                    action="skipped", severity="error")
            continue
        paired.add(image_path)
        objects = regions_to_objects(parsed.regions, xml_path, log, class_name=class_name.strip(),
                                     use_annotation_names=use_annotation_names)
        items.append(RawImage(xml_path.stem, image_path, objects, xml_path,
                              meta={"microns_per_pixel": _mpp(parsed.microns_per_pixel, xml_path, log)},
                              rejected=len(parsed.regions) - len(objects)))
    for folder_images in images.values():  # images that no XML describes: unlabelled
        for image_path in folder_images.values():
            if image_path not in paired:
                items.append(RawImage(image_path.stem, image_path, None, None,
                                      meta={"microns_per_pixel": ""}))
    note = _assign_ids_and_splits(items, src)
    classes = None if use_annotation_names else [class_name.strip()]
    return RawDataset(FORMAT, src, items, classes=classes, problems=log,
                      notes={"split": note, "boxes": "min/max of each Region's vertices (X column, Y row)"})


def _images_by_folder(src: Path, log: ProblemLog) -> dict[Path, dict[str, Path]]:
    """folder -> stem -> image (one per stem, original format preferred)."""
    folders: dict[Path, list[Path]] = {}
    for p in image_files(src, recursive=True):
        folders.setdefault(p.parent, []).append(p)
    return {folder: pick_by_stem(files, log) for folder, files in sorted(folders.items())}


def _find_image(xml_path: Path, images: dict[Path, dict[str, Path]], src: Path,
                log: ProblemLog) -> Path | None:
    """The image for an XML: same folder, then a sibling folder, then anywhere below ``src``."""
    stem = xml_path.stem
    same = images.get(xml_path.parent, {}).get(stem)
    if same is not None:
        return same
    for tier in (lambda f: f.parent == xml_path.parent.parent, lambda f: True):
        hits = [imgs[stem] for folder, imgs in images.items() if tier(folder) and stem in imgs]
        if hits:
            if len(hits) > 1:
                log.add(xml_path, "ambiguous_image", f"{len(hits)} images named {stem!r}: "
                        + ", ".join(str(h.relative_to(src)) for h in hits),
                        action=f"used {hits[0].relative_to(src)}", severity="warning")
            return hits[0]
    return None


def _mpp(value: str, where: Path, log: ProblemLog) -> float | str:
    if not value:
        return ""
    try:
        return float(value)
    except ValueError:
        log.add(where, "invalid_attribute", f"MicronsPerPixel={value!r} is not a number",
                action="left empty", severity="warning")
        return ""


def _assign_ids_and_splits(items: list[RawImage], src: Path) -> str:
    """Ids are stems; stems repeated in several folders get their path relative to ``src``."""
    counts: dict[str, int] = {}
    for it in items:
        counts[it.image_id] = counts.get(it.image_id, 0) + 1
    splits = []
    for it in items:
        rel = it.image_path.relative_to(src)
        if counts[it.image_id] > 1:
            it.image_id = rel.with_suffix("").as_posix()
        splits.append(split_from_folders(rel.parent.parts, source_name=src.name))
    splits, note = official_splits(splits)
    for it, split in zip(items, splits):
        it.meta["split"] = split
    return note
