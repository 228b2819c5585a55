"""Libraries (base + named batches) written as canonical datasets from real BCCD images."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _tiny import tiny_bccd
from conftest import checksums
from workbench.data.canonical import load_dataset, read_meta
from workbench.data.library.builder import Batch, library_meta, partition, read_library, write_library


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return tiny_bccd(tmp_path_factory.mktemp("lib") / "bccd", n_train=8, n_val=4)


def _ids(source, split):
    m = read_meta(source)
    return m.loc[m["split"] == split, "image_id"].tolist()


def test_partition_is_seeded_disjoint_and_checked():
    ids = [f"im{k}" for k in range(20)]
    a = partition(ids, [5, 5, 3], seed=0)
    assert [len(c) for c in a] == [5, 5, 3] and len(set().union(*a)) == 13
    assert a == partition(ids, [5, 5, 3], seed=0) and a != partition(ids, [5, 5, 3], seed=1)
    assert partition(ids, [5], seed=0)[0] == a[0]  # a longer cut starts the same way
    with pytest.raises(ValueError, match="need 21"):
        partition(ids, [20, 1])


def test_base_plus_batches_with_metadata_weights_and_fixed_held_out(source, tmp_path):
    before = checksums(source)
    train, val = _ids(source, "train"), _ids(source, "val")
    base = Batch("base", source, tuple(train[:4]), meta={"centre": "A", "colour": "colour", "style_level": 0})
    b1 = Batch("b1", source, tuple(train[4:6]), meta={"date": "2026-01-10", "dose_group": "2Gy"})
    b2 = Batch("b2", source, tuple(train[6:8]), meta={"date": "2026-02-01", "magnification": "40x"}, weight=3)
    test = Batch("fixed_test", source, tuple(val), split="test")
    per_image = pd.DataFrame({"image_id": [train[0]], "style_level": [2]})
    out = write_library(base, [b1, b2], tmp_path / "lib", held_out=[test], image_meta=per_image)
    ds = load_dataset(out)
    m = ds.images.set_index("image_id")
    assert m["batch"].value_counts().to_dict() == {"base": 4, "b1": 2, "b2": 2, "fixed_test": 4}
    assert m.loc[train[4], "dose_group"] == "2Gy" and m.loc[train[7], "magnification"] == "40x"
    assert str(m.loc[train[1], "style_level"]) == "0"  # batch value
    assert str(m.loc[train[0], "style_level"]) == "2"  # the per-image value wins
    assert m.loc[val, "split"].eq("test").all()
    # weights: b2's training images are listed three times
    lines = (out / "train.txt").read_text().splitlines()
    assert len(lines) == 4 + 2 + 3 * 2 and lines.count(f"./{m.loc[train[6], 'file']}") == 3
    rec = read_library(out)
    assert [b["name"] for b in rec["batches"]] == ["b1", "b2"] and rec["batches"][1]["weight"] == 3
    assert rec["train_images"] == 8 and rec["train_list_entries"] == 12 and rec["held_out"][0]["images"] == 4
    src = load_dataset(source).objects
    assert len(ds.objects) == len(src)  # every image of the source joined once, with all its boxes
    assert checksums(source) == before  # the source is never modified


def test_repeated_images_bad_metadata_and_weights_are_refused(source, tmp_path):
    train = _ids(source, "train")
    with pytest.raises(ValueError, match="in several batches"):
        library_meta(Batch("base", source, tuple(train[:3])), [Batch("b1", source, tuple(train[2:4]))])
    with pytest.raises(ValueError, match="unknown metadata"):
        Batch("b", source, meta={"stain": "HE"})
    with pytest.raises(ValueError, match="integer repeat factor"):
        Batch("b", source, weight=1.5)
    with pytest.raises(ValueError, match="not in"):
        library_meta(Batch("base", source, ("nope",)), [])
    with pytest.raises(ValueError, match="names repeat"):
        library_meta(Batch("x", source, tuple(train[:1])), [Batch("x", source, tuple(train[1:2]))])
    assert not (tmp_path / "lib").exists()


def test_downscale_halves_images_keeps_labels_and_scales_boxes(source, tmp_path):
    train = _ids(source, "train")[:3]
    out = write_library(Batch("base", source, tuple(train)), [], tmp_path / "half", downscale=2)
    full, half = load_dataset(source), load_dataset(out)
    fm, hm = full.images.set_index("image_id"), half.images.set_index("image_id")
    for i in train:
        with Image.open(out / hm.loc[i, "file"]) as im:
            assert im.size == (fm.loc[i, "width"] // 2, fm.loc[i, "height"] // 2) == (hm.loc[i, "width"], hm.loc[i, "height"])
        assert (out / hm.loc[i, "label_file"]).read_text() == (source / fm.loc[i, "label_file"]).read_text()
    objs_full = pd.read_csv(source / "objects.csv", dtype={"image_id": str})
    objs_half = pd.read_csv(out / "objects.csv", dtype={"image_id": str})
    a = objs_full[objs_full.image_id.isin(train)][["x1", "y1", "x2", "y2"]].to_numpy()
    assert np.allclose(objs_half[["x1", "y1", "x2", "y2"]].to_numpy(), a / 2, atol=1.0)
    assert json.loads((out / "dataset.json").read_text())["library"]["downscale"] == 2
    with pytest.raises(ValueError, match="downscale"):
        write_library(Batch("base", source, tuple(train)), [], tmp_path / "third", downscale=3)


def test_a_library_grows_one_batch_at_a_time_into_a_new_folder(source, tmp_path):
    from workbench.data.library.builder import add_batch

    train, val = _ids(source, "train"), _ids(source, "val")
    old = write_library(Batch("base", source, tuple(train[:4]), meta={"centre": "A"}), [], tmp_path / "v1",
                        held_out=[Batch("fixed_test", source, tuple(val), split="test")],
                        image_meta=pd.DataFrame({"image_id": train[:4], "style_level": [0, 1, 2, 3]}))
    before = checksums(old)
    new = add_batch(old, Batch("b1", source, tuple(train[4:7]), meta={"style_level": 1, "date": "2026-03"}, weight=2),
                    tmp_path / "v2")
    assert checksums(old) == before  # the earlier library is kept as it was
    m = read_meta(new).set_index("image_id")
    assert m["batch"].value_counts().to_dict() == {"base": 4, "b1": 3, "fixed_test": 4}
    assert m.loc[train[:4], "style_level"].astype(str).tolist() == ["0", "1", "2", "3"]  # per-image levels kept
    assert m.loc[train[4:7], "style_level"].astype(str).eq("1").all() and m.loc[val, "split"].eq("test").all()
    assert read_library(new)["train_list_entries"] == 4 + 2 * 3
    with pytest.raises(ValueError, match="new folder"):
        add_batch(new, Batch("b2", source, tuple(train[7:])), new)


def _cli(argv: list[str]) -> int:
    import argparse

    from workbench.cli import library as cli_library

    parser = argparse.ArgumentParser(prog="workbench")
    cli_library.register(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.slow
def test_cli_levels_compose_and_add(source, tmp_path, capsys):
    assert _cli(["library", "levels", str(source), "--out", str(tmp_path / "levels.csv"), "--k", "2"]) == 0
    levels = pd.read_csv(tmp_path / "levels.csv")
    assert len(levels) == 12 and set(levels["style_level"]) == {0, 1}
    assert json.loads((tmp_path / "levels.rule.json").read_text())["derived"] is True
    # 8 training images: a 6:2:2 library of 10 cannot be met -> warnings, and the report says so
    assert _cli(["library", "compose", str(source), "--out", str(tmp_path / "lib"), "--n", "10",
                 "--positive-class", "Platelets", "--min-positive", "0.2", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: group" in out and "rule of thumb" in out and "DERIVED" in out
    rec = read_library(tmp_path / "lib")
    assert rec["base"]["images"] <= 8 and rec["held_out"][0]["images"] == 4 and rec["note"]["warnings"]
    (tmp_path / "ids.txt").write_text("\n".join(_ids(source, "val")[:2]) + "\n")
    with pytest.raises(ValueError, match="in several batches"):  # held-out images cannot join again
        _cli(["library", "add", str(tmp_path / "lib"), "--name", "b1", "--dataset", str(source),
              "--ids", str(tmp_path / "ids.txt"), "--out", str(tmp_path / "lib2")])
    unused = sorted(set(_ids(source, "train")) - set(read_meta(tmp_path / "lib")["image_id"].astype(str)))
    (tmp_path / "new.txt").write_text("\n".join(unused) + "\n")
    capsys.readouterr()
    assert _cli(["library", "add", str(tmp_path / "lib"), "--name", "b1", "--dataset", str(source),
                 "--ids", str(tmp_path / "new.txt"), "--out", str(tmp_path / "lib3")]) == 0
    out = capsys.readouterr().out
    assert f"'b1': {len(unused)}" in out and "np." not in out  # plain numbers a user can read
    (tmp_path / "none.txt").write_text("\n")
    with pytest.raises(ValueError, match="'b2'.*no images"):  # an empty batch is an error, not a silent no-op
        _cli(["library", "add", str(tmp_path / "lib"), "--name", "b2", "--dataset", str(source),
              "--ids", str(tmp_path / "none.txt"), "--out", str(tmp_path / "lib4")])
