"""Label versions: the pure diff, saving (new files, change log, previous version untouched),
revert, materialise + export, and the fine-tune loop on real BCCD."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from _tiny import tiny_bccd
from conftest import checksums
from workbench.inspection import corrections as C
from workbench.data.canonical import load_dataset

BOX = ["x1", "y1", "x2", "y2"]


def _boxes(rows):
    return pd.DataFrame(rows, columns=["class", *BOX]).astype({c: float for c in BOX})


# ----------------------------------------------------------------------------- diff (pure)

def test_diff_classifies_every_action():
    old = _boxes([("RBC", 0, 0, 10, 10), ("RBC", 20, 20, 30, 30), ("RBC", 40, 40, 50, 50),
                  ("WBC", 60, 60, 80, 80), ("RBC", 100, 100, 110, 110), ("RBC", 200, 200, 210, 210)])
    new = _boxes([("RBC", 0, 0, 10, 10),          # unchanged
                  ("RBC", 21, 21, 31, 31),         # moved (same size)
                  ("RBC", 40, 40, 52, 50),         # resized
                  ("RBC", 60, 60, 80, 80),         # relabelled
                  ("WBC", 101, 100, 111, 110),     # relabelled and moved
                  ("Platelets", 300, 300, 305, 305)])  # added; old 200.. deleted
    d = C.diff_boxes(old, new)
    got = sorted(zip(d["action"], d["old_index"].astype("float").fillna(-1).astype(int),
                     d["new_index"].astype("float").fillna(-1).astype(int)))
    assert got == sorted([("move", 1, 1), ("resize", 2, 2), ("relabel", 3, 3), ("relabel", 4, 4),
                          ("move", 4, 4), ("add", -1, 5), ("delete", 5, -1)])
    rel = d[(d["action"] == "relabel") & (d["old_index"] == 3)].iloc[0]
    assert (rel["class_before"], rel["class_after"]) == ("WBC", "RBC")
    assert C.diff_boxes(old, old).empty


def test_diff_far_move_is_delete_plus_add_and_zero_area_boxes_pair():
    old = _boxes([("RBC", 0, 0, 10, 10), ("RBC", 5, 5, 5, 5)])
    new = _boxes([("RBC", 100, 100, 110, 110), ("RBC", 5, 5, 5, 5)])
    d = C.diff_boxes(old, new)
    assert sorted(d["action"]) == ["add", "delete"]
    assert C.pair_boxes(old, new).tolist() == [-1, 1]


def test_pairing_prefers_the_same_class_on_equal_iou():
    old = _boxes([("RBC", 0, 0, 10, 10), ("WBC", 0, 0, 10, 10)])
    new = _boxes([("WBC", 0, 0, 10, 10), ("RBC", 0, 0, 10, 10)])
    assert C.pair_boxes(old, new).tolist() == [1, 0]
    assert C.diff_boxes(old, new).empty


# ----------------------------------------------------------------------------- versions on real data

@pytest.fixture
def tiny(tmp_path):
    return tiny_bccd(tmp_path / "bccd")


def _label(root, image_id):
    meta = load_dataset(root).images.set_index("image_id")
    return f"labels/{os.path.splitext(os.path.basename(meta.loc[image_id, 'file']))[0]}.txt"


def test_save_writes_a_new_version_and_leaves_everything_before_untouched(tiny):
    canonical_before = checksums(tiny / "labels")
    boxes = C.read_version_boxes(tiny)
    image = boxes["image"].iloc[0]
    old = boxes[boxes["image"] == image][["class", *BOX]].reset_index(drop=True)
    edit = old.copy()
    edit.loc[0, "class"] = "Platelets" if edit.loc[0, "class"] != "Platelets" else "RBC"
    edit.loc[1, ["x1", "x2"]] += 4.0  # move
    edit = edit.drop(index=2).reset_index(drop=True)
    edit = pd.concat([edit, _boxes([("WBC", 10, 10, 60, 70)])], ignore_index=True)

    v1 = C.save_version(tiny, {image: edit}, note="first")
    assert v1.name == "v0001" and v1.parent == "v0000" and v1.path == tiny / "versions" / "v0001"
    assert checksums(tiny / "labels") == canonical_before  # canonical labels never written
    assert sorted(v1.changes["action"]) == ["add", "delete", "move", "relabel"]
    log = C.read_changes(tiny, "v0001")
    assert list(log.columns) == C.CHANGE_COLUMNS and (log["image"] == image).all()
    moved = log[log["action"] == "move"].iloc[0]
    before, after = json.loads(moved["before"]), json.loads(moved["after"])
    assert after["box"][0] == pytest.approx(before["box"][0] + 4, abs=1e-3)
    summary = json.loads((v1.path / "summary.json").read_text())
    assert summary["actions"] == {"add": 1, "delete": 1, "move": 1, "resize": 0, "relabel": 1}
    assert summary["images_changed"] == [image] and summary["note"] == "first"
    assert summary["n_boxes"] == len(boxes)  # one deleted, one added

    # the edited image's label file: untouched boxes keep their exact lines
    label = _label(tiny, image)
    old_lines = (tiny / label).read_text().splitlines()
    new_lines = (v1.path / label).read_text().splitlines()
    assert new_lines[2:-1] == old_lines[3:]  # boxes 3.. unchanged, byte for byte
    assert new_lines[0].split()[1:] == old_lines[0].split()[1:]  # relabel keeps the coordinates
    assert len(new_lines) == len(old_lines)
    # every other label file is a byte copy of the canonical one (a copy: not the same file)
    for p in (tiny / "labels").iterdir():
        q = v1.path / "labels" / p.name
        if f"labels/{p.name}" != label:
            assert q.read_bytes() == p.read_bytes() and not os.path.samefile(p, q)
    # what the next load sees
    again = C.read_version_boxes(tiny, "latest")
    got = again[again["image"] == image][["class", *BOX]].reset_index(drop=True)
    assert got["class"].tolist() == edit["class"].tolist()
    np.testing.assert_allclose(got[BOX].to_numpy(), edit[BOX].to_numpy(), atol=1e-3)

    # a second save leaves v0001 byte-identical
    v1_sums = checksums(v1.path)
    v2 = C.save_version(tiny, {image: edit.iloc[:-1]}, note="second")
    assert v2.name == "v0002" and v2.parent == "v0001"
    assert v2.changes["action"].tolist() == ["delete"]
    assert checksums(v1.path) == v1_sums
    assert C.list_versions(tiny)["version"].tolist() == ["v0001", "v0002"]
    # nothing changed: no version
    assert C.save_version(tiny, {image: C.read_version_boxes(tiny).query("image == @image")}) is None


def test_revert_writes_a_new_version_equal_to_the_old_one(tiny):
    boxes = C.read_version_boxes(tiny)
    image = boxes["image"].iloc[0]
    edit = boxes[boxes["image"] == image][["class", *BOX]].iloc[1:]
    C.save_version(tiny, {image: edit})
    back = C.revert(tiny, "v0000")
    assert back.name == "v0002" and back.changes["action"].tolist() == ["add"]
    assert checksums(back.path / "labels") == checksums(tiny / "labels")
    assert json.loads((back.path / "summary.json").read_text())["reverted_to"] == "v0000"
    assert C.revert(tiny, "v0000") is None  # already equal
    with pytest.raises(ValueError, match="no label version 'v0009'"):
        C.revert(tiny, "v0009")


def test_bad_edits_are_all_reported_and_nothing_is_written(tiny):
    image = C.read_version_boxes(tiny)["image"].iloc[0]
    bad = _boxes([("Neutrophil", 0, 0, 10, 10), ("RBC", np.nan, 0, 10, 10)])
    with pytest.raises(ValueError) as err:
        C.save_version(tiny, {image: bad, "no_such_image": bad})
    text = str(err.value)
    assert "unknown_class" in text and "Neutrophil" in text and "invalid_box" in text
    assert "no_such_image" in text and "3 problem(s)" in text  # every problem, one error
    assert not (tiny / "versions").exists() or not C.list_versions(tiny).shape[0]


def test_boxes_outside_the_image_are_clipped_or_dropped(tiny):
    boxes = C.read_version_boxes(tiny)
    image = boxes["image"].iloc[0]
    keep = boxes[boxes["image"] == image][["class", *BOX]]
    edit = pd.concat([keep, _boxes([("RBC", 600, 400, 700, 500), ("RBC", 700, 10, 800, 20)])], ignore_index=True)
    v = C.save_version(tiny, {image: edit})
    added = v.changes[v.changes["action"] == "add"]
    assert len(added) == 1 and json.loads(added.iloc[0]["after"])["box"] == [600, 400, 640, 480]
    summary = json.loads((v.path / "summary.json").read_text())
    assert any("zero_area_box" in p for p in summary["problems"])


@pytest.mark.slow
def test_materialise_gives_a_canonical_dataset_that_exports(tiny, tmp_path):
    from workbench.data.exporters import export
    from workbench.data.importers import read_raw

    boxes = C.read_version_boxes(tiny)
    image = boxes["image"].iloc[0]
    edit = boxes[boxes["image"] == image][["class", *BOX]].iloc[1:]
    C.save_version(tiny, {image: edit})
    out = C.materialise(tiny, "latest", tmp_path / "v1")
    ds = load_dataset(out)
    assert len(ds.objects) == len(boxes) - 1
    assert ds.info["labels_version"]["version"] == "v0001"
    meta = ds.images.set_index("image_id")
    assert meta.loc[image, "n_objects"] == len(edit)
    f = meta.loc[image, "file"]
    assert os.path.samefile(out / f, tiny / f)  # images are hard links
    assert (out / "train.txt").read_text() == (tiny / "train.txt").read_text()
    objs = pd.read_csv(out / "objects.csv", keep_default_na=False)
    assert (objs.loc[objs["image_id"] == image, "source_object"] == "label version v0001").all()

    res = export(out, "coco", tmp_path / "coco" / "v1.json")
    assert res.objects == len(boxes) - 1
    raw = read_raw(tmp_path / "coco" / "v1.json", "coco")
    assert sum(len(im.objects or []) for im in raw.images) == len(boxes) - 1
    for fmt, dest in (("yolo", tmp_path / "yolo"), ("labelme", tmp_path / "labelme")):
        assert export(out, fmt, dest).objects == len(boxes) - 1
    with pytest.raises(ValueError, match="outside the source dataset"):
        C.materialise(tiny, "latest", tiny / "inside")


@pytest.mark.slow
def test_finetune_loop_on_real_bccd(tmp_path):
    """predict -> correct -> fine-tune -> compare, tiny (8+4 real images, imgsz 160, 1 epoch)."""
    from workbench.inspection.feedback import finetune_on_version
    from workbench.inference.predict import predict
    from workbench.models.runs import read_run_record
    from workbench.models.yolo import train

    ds = tiny_bccd(tmp_path / "bccd")
    runs = tmp_path / "runs"
    base = train(ds, epochs=1, imgsz=160, batch=4, workers=0, runs_root=runs, run_name="base", plots=False)
    pred = predict(base, ds, split="train", conf=0.01)
    assert set(pred.columns) >= {"image", "class", "score"}
    # a user's correction on a training image: relabel one box, add a missed one
    boxes = C.read_version_boxes(ds)
    image = boxes["image"].iloc[0]
    edit = boxes[boxes["image"] == image][["class", *BOX]].reset_index(drop=True)
    edit.loc[0, "class"] = "WBC"
    edit = pd.concat([edit, _boxes([("Platelets", 5, 5, 30, 30)])], ignore_index=True)
    C.save_version(ds, {image: edit})

    res = finetune_on_version(base, ds, tmp_path / "loop", epochs=1, batch=4, workers=0, runs_root=runs,
                              run_name="after", plots=False)
    t = res.table
    assert t[["model", "labels"]].values.tolist() == [["before", "corrected"], ["before", "original"],
                                                      ["after", "corrected"], ["after", "original"]]
    assert (t["n_images"] == 4).all()  # the same 4 val images for both models
    assert t["map50"].between(0, 1).all()
    rec = read_run_record(res.run_after)
    assert rec["model"]["pretrained"] == str((base / "weights" / "best.pt").resolve())
    assert rec["dataset"]["path"] == str(res.dataset.resolve())
    assert (tmp_path / "loop" / "compare.csv").is_file() and (tmp_path / "loop" / "predictions_after.csv").is_file()
    assert json.loads((tmp_path / "loop" / "feedback.json").read_text())["version"] == "v0001"
