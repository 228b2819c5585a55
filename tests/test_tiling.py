"""Training patches: tile offsets, box clipping by visibility, a tiled canonical dataset."""
from __future__ import annotations

import math

import numpy as np
import pytest

from workbench.data.canonical import load_dataset
from workbench.core.images import read_image
from workbench.data.tiling import clip_boxes, read_tile_notes, tile_dataset, tile_starts
from workbench.models.yolo import max_det_for

from _tiny import tiny_bccd


@pytest.mark.parametrize("length,tile,overlap,expected", [
    (1000, 640, 0.2, [0, 360]),
    (1000, 256, 0.0, [0, 256, 512, 744]),
    (1000, 500, 0.5, [0, 250, 500]),
    (640, 640, 0.2, [0]),
    (480, 640, 0.2, [0]),  # smaller than a tile: the image stays whole
])
def test_tile_starts(length, tile, overlap, expected):
    assert tile_starts(length, tile, overlap) == expected


def test_clip_boxes_by_visible_fraction():
    boxes = np.array([
        [10, 10, 30, 30],    # inside
        [90, 10, 110, 30],   # half inside (window ends at 100)
        [95, 10, 115, 30],   # a quarter inside
        [200, 200, 220, 220],  # outside
    ], dtype=float)
    out, idx = clip_boxes(boxes, (0, 0, 100, 100), 0.5)
    assert idx.tolist() == [0, 1]
    np.testing.assert_allclose(out, [[10, 10, 30, 30], [90, 10, 100, 30]])
    out, idx = clip_boxes(boxes, (0, 0, 100, 100), 0.6)
    assert idx.tolist() == [0]
    out, idx = clip_boxes(boxes, (80, 0, 180, 100), 0.2)  # window coordinates are shifted
    assert idx.tolist() == [1, 2]
    np.testing.assert_allclose(out, [[10, 10, 30, 30], [15, 10, 35, 30]])


@pytest.mark.parametrize("kwargs,match", [({"tile": 16}, "tile must be"),
                                          ({"overlap": 1.0}, "overlap must be"),
                                          ({"min_visibility": 0}, "min_visibility")])
def test_bad_settings_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tile_dataset(tmp_path, tmp_path / "out", **kwargs)


@pytest.fixture(scope="module")
def bccd(tmp_path_factory):
    return tiny_bccd(tmp_path_factory.mktemp("tiling") / "bccd", n_train=3, n_val=1)


@pytest.mark.slow
def test_tiled_bccd_is_a_canonical_dataset_of_patches(bccd, tmp_path):
    out = tile_dataset(bccd, tmp_path / "tiles", tile=320, overlap=0.25, min_visibility=0.5)
    src, tiles = load_dataset(bccd), load_dataset(out)
    # 640x480 with 320 px tiles and 80 px overlap: x at 0, 240, 320; y at 0, 160
    assert len(tiles.images) == len(src.images) * 3 * 2
    assert tiles.classes == src.classes
    assert (tiles.images[["width", "height"]] == 320).all().all()
    merged = tiles.images.merge(src.images[["image_id", "split"]], left_on="tile_of",
                                right_on="image_id", suffixes=("", "_src"))
    assert (merged["split"] == merged["split_src"]).all()  # tiles inherit the split: no leakage

    # pixels are the source crop, byte for byte
    row = tiles.images.iloc[4]
    src_row = src.images.set_index("image_id").loc[row["tile_of"]]
    tile_px, _ = read_image(out / row["file"])
    src_px, _ = read_image(bccd / src_row["file"])
    x, y = int(row["tile_x"]), int(row["tile_y"])
    np.testing.assert_array_equal(tile_px, src_px[y:y + 320, x:x + 320])

    # every box wholly inside a tile is there unchanged; every tile box is a clipped source box
    for r in tiles.images.itertuples():
        x, y = int(r.tile_x), int(r.tile_y)
        s = src.objects[src.objects["image_id"] == r.tile_of]
        t = tiles.objects[tiles.objects["image_id"] == r.image_id]
        inside = s[(s.x1 >= x) & (s.y1 >= y) & (s.x2 <= x + 320) & (s.y2 <= y + 320)]
        shifted = t[["x1", "y1", "x2", "y2"]].to_numpy() + [x, y, x, y]
        for b in inside[["x1", "y1", "x2", "y2"]].to_numpy():
            assert np.abs(shifted - b).max(axis=1).min() < 0.01
        for b, cls in zip(shifted, t["class"]):
            same = s[s["class"] == cls][["x1", "y1", "x2", "y2"]].to_numpy()
            contains = ((same[:, 0] <= b[0] + 0.01) & (same[:, 1] <= b[1] + 0.01)
                        & (same[:, 2] >= b[2] - 0.01) & (same[:, 3] >= b[3] - 0.01))
            assert contains.any()
    notes = read_tile_notes(out)
    assert notes["tile"] == 320 and notes["min_visibility"] == 0.5
    assert notes["source_max_objects"] == int(src.images["n_objects"].max())
    assert tiles.info["format"] == "tiles"


@pytest.mark.slow
def test_visibility_threshold_and_empty_tiles(bccd, tmp_path):
    loose = load_dataset(tile_dataset(bccd, tmp_path / "loose", tile=256, min_visibility=0.1))
    strict = load_dataset(tile_dataset(bccd, tmp_path / "strict", tile=256, min_visibility=0.9))
    assert len(strict.objects) < len(loose.objects)
    sparse = load_dataset(tile_dataset(bccd, tmp_path / "sparse", tile=256, min_visibility=0.9,
                                       keep_empty=False))
    assert (sparse.images["n_objects"] > 0).all()
    assert len(sparse.images) == int((strict.images["n_objects"] > 0).sum())


@pytest.mark.slow
def test_refuses_to_overwrite(bccd, tmp_path):
    out = tile_dataset(bccd, tmp_path / "t", tile=320)
    with pytest.raises(FileExistsError, match="not empty"):
        tile_dataset(bccd, out, tile=320)


@pytest.mark.slow
def test_monuseg_tiles_keep_dense_nuclei_and_size_max_det(tmp_path):
    """Real MoNuSeg (1000x1000, hundreds of nuclei): 256 px tiles and max_det for whole images."""
    from workbench.data.importers import FORMATS, convert
    from workbench.core.paths import VENDORED

    try:
        src = convert(VENDORED["monuseg"], "monuseg", tmp_path / "monuseg")
    except (ImportError, ModuleNotFoundError) as exc:
        pytest.skip(f"MoNuSeg importer not available yet ({exc})")
    assert "monuseg" in FORMATS
    ds = load_dataset(src)
    most = int(ds.images["n_objects"].max())
    assert most >= 300  # dense: the reason for tiling and for max_det
    tiles = load_dataset(tile_dataset(src, tmp_path / "tiles", tile=256, overlap=0.2, min_visibility=0.5))
    assert len(tiles.images) == len(ds.images) * 5 * 5  # starts 0, 205, 410, 615, 744
    assert tiles.images["n_objects"].max() < most
    # nuclei are small: nearly all survive in at least one tile
    assert len(tiles.problems) <= 0.02 * len(ds.objects) + len(ds.problems)
    assert max_det_for(tiles.root) == max(300, math.ceil(1.5 * most))
