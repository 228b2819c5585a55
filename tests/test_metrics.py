"""Tests for workbench.evaluation.metrics: hand-built cases and agreement with pycocotools on real annotations."""

from __future__ import annotations

import contextlib
import copy
import io
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.evaluation import metrics as M

ROOT = Path(__file__).resolve().parents[1]


def _annotation_dir(vendored: str, shared: str) -> Path | None:
    """The vendored copy first, then ../shared; None if neither has XML files."""
    for d in (ROOT / vendored, ROOT.parent / "shared" / shared):
        if d.is_dir() and any(d.glob("*.xml")):
            return d
    return None


BCCD_DIR = _annotation_dir("data/raw/bccd/BCCD/Annotations", "data/bccd/BCCD/Annotations")
MONUSEG_DIR = _annotation_dir(
    "data/raw/monuseg/MoNuSegTrainingData/Annotations",
    "data/monuseg/MoNuSegTrainingData/Annotations",
)
needs_bccd = pytest.mark.skipif(
    BCCD_DIR is None,
    reason="BCCD annotations not found in data/raw/bccd/BCCD/Annotations or ../shared/data/bccd/BCCD/Annotations",
)
needs_monuseg = pytest.mark.skipif(
    MONUSEG_DIR is None,
    reason="MoNuSeg annotations not found in data/raw/monuseg/... or ../shared/data/monuseg/MoNuSegTrainingData/Annotations",
)


# --------------------------------------------------------------------------
# Real annotations
# --------------------------------------------------------------------------


def read_voc(paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        root = ET.parse(path).getroot()
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            rows.append(
                (path.stem, obj.findtext("name").strip(),
                 *(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
            )  # fmt: skip
    return pd.DataFrame(rows, columns=list(M.GT_COLUMNS))


def read_imagescope(paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        for region in ET.parse(path).getroot().iter("Region"):
            xy = np.array([(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")])
            if len(xy):
                rows.append((path.stem, "nucleus", *xy.min(axis=0), *xy.max(axis=0)))
    df = pd.DataFrame(rows, columns=["image", "class", "x1", "y1", "x2", "y2"])
    return df


@pytest.fixture(scope="module")
def bccd() -> pd.DataFrame:
    if BCCD_DIR is None:
        pytest.skip("BCCD annotations missing")
    return read_voc(sorted(BCCD_DIR.glob("*.xml"))[:40])


@pytest.fixture(scope="module")
def monuseg() -> pd.DataFrame:
    if MONUSEG_DIR is None:
        pytest.skip("MoNuSeg annotations missing")
    # One tile (~300-450 nuclei) keeps pycocotools' pure-Python loop to seconds.
    files = sorted(MONUSEG_DIR.glob("*.xml"))[:1]
    return read_imagescope(files)


def perturb(gt: pd.DataFrame, seed: int, *, quantize: bool = False) -> pd.DataFrame:
    """Detector-like predictions: jitter, drops, class swaps, duplicates, random boxes."""
    rng = np.random.default_rng(seed)
    classes = sorted(gt["class"].unique())
    p = gt.loc[rng.random(len(gt)) > 0.15, ["image", "class", "x1", "y1", "x2", "y2"]].copy()
    w = (p.x2 - p.x1).to_numpy() + 1
    h = (p.y2 - p.y1).to_numpy() + 1
    jit = rng.uniform(0.02, 0.25)
    for c, s in (("x1", w), ("x2", w), ("y1", h), ("y2", h)):
        p[c] = p[c].to_numpy() + rng.normal(0, jit * s)
    p["x1"], p["x2"] = np.minimum(p.x1, p.x2), np.maximum(p.x1, p.x2)
    p["y1"], p["y2"] = np.minimum(p.y1, p.y2), np.maximum(p.y1, p.y2)
    swap = rng.random(len(p)) < 0.1
    p.loc[swap, "class"] = rng.choice(classes, swap.sum())
    p["score"] = rng.beta(4, 2, len(p))
    dup = p.sample(frac=0.15, random_state=seed).copy()
    for c in ("x1", "y1", "x2", "y2"):
        dup[c] = dup[c] + rng.normal(0, 2, len(dup))
    dup["x2"] = np.maximum(dup.x1, dup.x2)
    dup["y2"] = np.maximum(dup.y1, dup.y2)
    dup["score"] = rng.beta(2, 3, len(dup))
    extents = gt.groupby("image")[["x2", "y2"]].max()
    n_extra = int(0.2 * len(gt)) + 1
    img = rng.choice(extents.index.to_numpy(), n_extra)
    bw = rng.choice((gt.x2 - gt.x1).to_numpy(), n_extra) + 1
    bh = rng.choice((gt.y2 - gt.y1).to_numpy(), n_extra) + 1
    x1 = rng.uniform(0, 1, n_extra) * extents.loc[img, "x2"].to_numpy()
    y1 = rng.uniform(0, 1, n_extra) * extents.loc[img, "y2"].to_numpy()
    extra = pd.DataFrame({"image": img, "class": rng.choice(classes, n_extra), "x1": x1, "y1": y1,
                          "x2": x1 + bw, "y2": y1 + bh, "score": rng.beta(2, 4, n_extra)})  # fmt: skip
    out = pd.concat([p, dup, extra], ignore_index=True).sample(frac=1, random_state=seed)
    if quantize:  # many exact score ties, inside and across images
        out["score"] = out["score"].round(1)
    return out.reset_index(drop=True)


def random_preds(gt: pd.DataFrame, seed: int, n_per_image: int = 25) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    classes = sorted(gt["class"].unique())
    rows = []
    for image, g in gt.groupby("image"):
        W, H = g.x2.max(), g.y2.max()
        x1, y1 = rng.uniform(0, W, n_per_image), rng.uniform(0, H, n_per_image)
        bw, bh = rng.uniform(5, W / 3, n_per_image), rng.uniform(5, H / 3, n_per_image)
        rows.append(pd.DataFrame({"image": image, "class": rng.choice(classes, n_per_image), "x1": x1,
                                  "y1": y1, "x2": x1 + bw, "y2": y1 + bh, "score": rng.random(n_per_image)}))  # fmt: skip
    return pd.concat(rows, ignore_index=True)


def run_pycocotools(gt: pd.DataFrame, pred: pd.DataFrame, max_dets: int | None = None, use_cats: bool = True):
    """pycocotools COCOeval on the same tables; maxDets ends with ``max_dets`` if given."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt = M.gt_to_coco(gt, images=pred["image"].astype(str).unique())
    results = M.preds_to_coco(pred, coco_gt)
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = copy.deepcopy(coco_gt)
        cg.createIndex()
        cd = cg.loadRes(copy.deepcopy(results))
        ev = COCOeval(cg, cd, "bbox")
        ev.params.useCats = int(use_cats)
        if max_dets is not None:  # summarize() reads maxDets[2]; pycocotools sorts the list
            ev.params.maxDets = [1, 10, max_dets] if max_dets > 10 else [1, 2, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def assert_agrees(ours: M.EvalResult, ev, tol: float = 1e-4) -> None:
    coco_prec = ev.eval["precision"][:, :, :, 0, -1]  # area 'all', largest maxDets
    # summarize() reads mAP50-95 at maxDets=100 whatever params.maxDets says
    # (-1 when 100 is absent), so take the means from the precision array.
    assert ours.map50_95 == pytest.approx(coco_prec[coco_prec > -1].mean(), abs=tol)
    assert ours.map50 == pytest.approx(coco_prec[0][coco_prec[0] > -1].mean(), abs=tol)
    assert ours.map50 == pytest.approx(ev.stats[1], abs=tol)
    if ev.params.maxDets[-1] == 100:
        assert ours.map50_95 == pytest.approx(ev.stats[0], abs=tol)
    cat_names = [c["name"] for c in ev.cocoGt.loadCats(ev.params.catIds)]
    for k, name in enumerate(cat_names):
        s = coco_prec[:, :, k]
        if (s > -1).any():
            assert ours.per_class[name]["ap50_95"] == pytest.approx(s.mean(), abs=tol), name
            assert ours.per_class[name]["ap50"] == pytest.approx(s[0].mean(), abs=tol), name
        else:
            assert np.isnan(ours.per_class[name]["ap50_95"]), name
    # The whole interpolated-precision array, not just its means.
    ours_prec = np.where(np.isnan(ours.precision), -1, ours.precision)
    ours_k = [ours.classes.index(n) for n in cat_names]
    np.testing.assert_allclose(ours_prec[:, :, ours_k], coco_prec, atol=1e-12)


def assert_matches_agree(gt: pd.DataFrame, pred: pd.DataFrame, ev, t_index: int) -> None:
    """Our match table vs pycocotools' per-image dtMatches at one threshold."""
    thr = float(ev.params.iouThrs[t_index])
    m = M.match(gt, pred, iou_thr=thr, max_dets=ev.params.maxDets[-1], class_agnostic=not ev.params.useCats)
    preds = m[m.kind == "pred"].set_index("pred_id")
    seen = set()
    all_rng = ev.params.areaRng[0]
    for e in ev.evalImgs:
        if e is None or e["aRng"] != all_rng:
            continue
        for did, gid in zip(e["dtIds"], e["dtMatches"][t_index]):
            row = preds.loc[did - 1]  # ann ids are table positions + 1
            seen.add(did - 1)
            if gid == 0:
                assert row.outcome == "fp", (did, row.outcome)
            else:
                assert row.gt_id == gid - 1, (did, row.gt_id, gid)
                assert row.outcome in ("tp", "ignored")
    assert set(preds.index[preds.outcome != "capped"]) == seen


# --------------------------------------------------------------------------
# Agreement with pycocotools
# --------------------------------------------------------------------------


@pytest.mark.slow
@needs_bccd
@pytest.mark.parametrize("seed", range(6))
def test_bccd_perturbed_agrees_with_pycocotools(bccd, seed):
    gt = bccd.copy()
    if seed in (2, 5):  # crowd GT follows COCO's crowd rules
        gt["iscrowd"] = np.random.default_rng(100 + seed).random(len(gt)) < 0.08
    pred = perturb(gt, seed, quantize=seed in (1, 5))
    ours = M.evaluate(gt, pred)
    assert ours.max_dets == 100  # sparse data: exactly COCO's default
    ev = run_pycocotools(gt, pred)
    assert_agrees(ours, ev)
    assert_matches_agree(gt, pred, ev, 0)
    assert_matches_agree(gt, pred, ev, 5)


@pytest.mark.slow
@needs_bccd
@pytest.mark.parametrize("seed", range(2))
def test_bccd_random_predictions_agree_with_pycocotools(bccd, seed):
    pred = random_preds(bccd, seed)
    ours = M.evaluate(bccd, pred)
    assert_agrees(ours, run_pycocotools(bccd, pred))
    assert ours.map50 < 0.2


@needs_bccd
def test_bccd_small_max_dets_agrees(bccd):
    # A binding cap on a sparse set: truncation follows pycocotools.
    pred = perturb(bccd, 7)
    ours = M.evaluate(bccd, pred, max_dets=5)
    assert ours.n_capped > 0
    assert_agrees(ours, run_pycocotools(bccd, pred, max_dets=5))


@pytest.mark.slow
@needs_bccd
def test_class_agnostic_matching_agrees_with_pycocotools_usecats0(bccd):
    # The confusion matrix's matching is pycocotools' useCats=0 matching.
    gt = bccd.assign(iscrowd=np.random.default_rng(9).random(len(bccd)) < 0.05)
    pred = perturb(gt, 8, quantize=True)
    ev = run_pycocotools(gt, pred, use_cats=False)
    for t in (0, 3, 9):
        assert_matches_agree(gt, pred, ev, t)


@pytest.mark.slow
@needs_monuseg
def test_monuseg_dense_agrees_and_coco_default_truncates(monuseg):
    counts = monuseg.groupby("image").size()
    assert counts.min() > 300
    pred = perturb(monuseg, 3)
    ours = M.evaluate(monuseg, pred)
    assert ours.max_dets >= 2 * counts.max()  # default cap: well above the densest tile
    assert ours.n_capped == 0
    assert_agrees(ours, run_pycocotools(monuseg, pred, max_dets=ours.max_dets))

    # COCO's default maxDets=100 keeps only 100 of the ~400 detections per
    # tile: recall, and with it AP, is cut. We reproduce it when asked.
    coco100 = run_pycocotools(monuseg, pred)
    capped = M.evaluate(monuseg, pred, max_dets=100)
    assert_agrees(capped, coco100)
    assert coco100.stats[1] < ours.map50 - 0.3
    assert coco100.stats[0] < ours.map50_95


# --------------------------------------------------------------------------
# Hand-built cases
# --------------------------------------------------------------------------


def boxes(rows, columns=("image", "class", "x1", "y1", "x2", "y2")) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


def preds(rows) -> pd.DataFrame:
    return boxes(rows, ("image", "class", "x1", "y1", "x2", "y2", "score"))


def test_box_iou_values():
    a = [[0, 0, 10, 10]]
    b = [[5, 0, 15, 10], [10, 0, 20, 10], [0, 0, 10, 10], [30, 30, 40, 40]]
    np.testing.assert_allclose(M.box_iou(a, b), [[1 / 3, 0.0, 1.0, 0.0]])
    # Crowd: intersection over the detection's area.
    np.testing.assert_allclose(
        M.box_iou([[10, 10, 20, 20]], [[0, 0, 100, 100]], crowd=[True]), [[1.0]]
    )
    assert M.box_iou(np.zeros((0, 4)), b).shape == (0, 4)
    with pytest.raises(ValueError, match="negative width"):
        M.box_iou([[10, 0, 0, 10]], b)


@pytest.fixture
def tiny():
    gt = boxes([
        ("a", "A", 0, 0, 10, 10),    # g0: found by p0
        ("a", "A", 20, 0, 30, 10),   # g1: missed
        ("a", "B", 40, 0, 50, 10),   # g2: found by p3
    ])  # fmt: skip
    pred = preds([
        ("a", "A", 0, 0, 10, 10, 0.9),   # tp g0
        ("a", "A", 1, 0, 11, 10, 0.8),   # duplicate of g0: fp
        ("a", "B", 20, 0, 30, 10, 0.7),  # right place, wrong class: fp
        ("a", "B", 40, 0, 50, 10, 0.6),  # tp g2
    ])  # fmt: skip
    return gt, pred


def test_match_tiny(tiny):
    gt, pred = tiny
    pred["tile"] = ["t1", "t1", "t2", "t2"]  # extra columns are carried along
    m = M.match(gt, pred)
    g = m[m.kind == "gt"].set_index("gt_id")
    p = m[m.kind == "pred"].set_index("pred_id")
    assert g.outcome.tolist() == ["tp", "fn", "tp"]
    assert g.pred_id.tolist()[0] == 0 and pd.isna(g.pred_id.iloc[1]) and g.pred_id.iloc[2] == 3
    assert g.score.iloc[0] == 0.9
    assert p.outcome.tolist() == ["tp", "fp", "fp", "tp"]
    assert p.gt_id.iloc[0] == 0 and p.gt_id.iloc[3] == 2
    assert p.iou.iloc[0] == 1.0 and np.isnan(p.iou.iloc[1])
    assert p.tile.tolist() == ["t1", "t1", "t2", "t2"]
    assert m.attrs["iou_thr"] == 0.5


def test_match_order_and_ties():
    gt = boxes([
        ("a", "A", 0, 0, 10, 10),
        ("a", "A", 0, 0, 10, 10),     # identical twin: on equal IoU the later GT wins
        ("b", "A", 0, 0, 10, 10),
        ("b", "A", 0, 2, 10, 12),
    ])  # fmt: skip
    pred = preds([
        ("a", "A", 0, 0, 10, 10, 0.5),
        ("a", "A", 0, 0, 10, 10, 0.5),   # same score: table order decides
        ("b", "A", 0, 0, 10, 10, 0.3),   # IoU 1 with b/0 but lower score
        ("b", "A", 0, 1, 10, 11, 0.9),   # IoU 0.82 with both: equal, takes the later (b/1)
    ])  # fmt: skip
    p = M.match(gt, pred).query("kind == 'pred'").set_index("pred_id")
    assert p.gt_id.tolist() == [1, 0, 2, 3]
    # At a stricter threshold the 0.9 detection can no longer match.
    p = M.match(gt, pred, iou_thr=0.9).query("kind == 'pred'").set_index("pred_id")
    assert p.outcome.tolist() == ["tp", "tp", "tp", "fp"]
    # A detection takes its best-IoU GT, not the first.
    gt2 = boxes([("a", "A", 0, 0, 10, 10), ("a", "A", 3, 0, 13, 10)])
    p2 = M.match(gt2, preds([("a", "A", 2, 0, 12, 10, 0.9)])).query("kind == 'pred'")
    assert p2.gt_id.tolist() == [1]


def test_crowd_and_ignore():
    gt = boxes(
        [
            ("a", "A", 0, 0, 10, 10, False, False),     # regular
            ("a", "A", 0, 0, 100, 100, True, False),    # crowd region
            ("a", "A", 200, 200, 210, 210, False, True),  # ignore (non-crowd)
        ],
        ("image", "class", "x1", "y1", "x2", "y2", "iscrowd", "ignore"),
    )
    pred = preds([
        ("a", "A", 0, 0, 10, 10, 0.9),      # regular preferred over the crowd
        ("a", "A", 50, 50, 60, 60, 0.8),    # inside crowd: ignored
        ("a", "A", 60, 60, 70, 70, 0.7),    # crowd absorbs any number
        ("a", "A", 0, 0, 10, 10, 0.6),      # regular taken, falls back on the crowd: ignored
        ("a", "A", 200, 200, 210, 210, 0.5),  # on the ignore box: ignored
        ("a", "A", 200, 200, 210, 210, 0.4),  # ignore box used up (not crowd): fp
    ])  # fmt: skip
    m = M.match(gt, pred)
    p = m[m.kind == "pred"].set_index("pred_id")
    assert p.outcome.tolist() == ["tp", "ignored", "ignored", "ignored", "ignored", "fp"]
    assert p.gt_id.tolist()[:5] == [0, 1, 1, 1, 2]
    assert m[m.kind == "gt"].outcome.tolist() == ["tp", "ignored", "ignored"]
    res = M.evaluate(gt, pred)
    assert res.per_class["A"]["n_gt"] == 1
    # One TP first, the only FP comes after it at a lower score: AP is 1.
    assert res.map50 == pytest.approx(1.0)
    prf = M.precision_recall_f1(gt, pred, score_thr=0.0).set_index("class")
    assert (prf.loc["A", "tp"], prf.loc["A", "fp"], prf.loc["A", "fn"]) == (1, 1, 0)


def test_prf_tiny(tiny):
    gt, pred = tiny
    r = M.precision_recall_f1(gt, pred, score_thr=0.5).set_index("class")
    assert r.loc["A", ["n_gt", "tp", "fp", "fn"]].tolist() == [2, 1, 1, 1]
    assert r.loc["A", ["precision", "recall", "f1"]].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert r.loc["B", ["precision", "recall", "f1"]].tolist() == pytest.approx([0.5, 1.0, 2 / 3])
    assert r.loc["all", ["n_gt", "tp", "fp", "fn"]].tolist() == [3, 2, 2, 1]
    assert r.loc["all", ["precision", "recall", "f1"]].tolist() == pytest.approx([0.5, 2 / 3, 4 / 7])
    # Raising the threshold drops the 0.6 TP of class B.
    r = M.precision_recall_f1(gt, pred, score_thr=0.65).set_index("class")
    assert r.loc["B", ["tp", "fp", "fn"]].tolist() == [0, 1, 1]
    assert r.loc["B", ["precision", "recall", "f1"]].tolist() == [0.0, 0.0, 0.0]


def test_prf_from_one_match_equals_refiltered_matching(bccd):
    # The cut after matching equals matching only the predictions above the cut.
    pred = perturb(bccd, 11)
    m = M.match(bccd, pred)
    for thr in (0.3, 0.6, 0.8):
        a = M.prf_from_matches(m, score_thr=thr)
        b = M.precision_recall_f1(bccd, pred[pred.score >= thr], score_thr=thr)
        pd.testing.assert_frame_equal(a, b)


def test_match_table_kind_is_checked(tiny):
    gt, pred = tiny
    with pytest.raises(ValueError, match="class-aware"):
        M.prf_from_matches(M.match(gt, pred, class_agnostic=True))
    with pytest.raises(ValueError, match="class-agnostic"):
        M.confusion_from_matches(M.match(gt, pred))


def test_confusion_matrix_missed_and_spurious():
    gt = boxes([
        ("a", "A", 0, 0, 10, 10),
        ("a", "B", 20, 0, 30, 10),
        ("a", "A", 40, 0, 50, 10),   # nothing there: missed
        ("b", "B", 0, 0, 10, 10),    # only a low-score prediction: missed
    ])  # fmt: skip
    pred = preds([
        ("a", "B", 0, 0, 10, 10, 0.9),    # A called B
        ("a", "B", 20, 0, 30, 10, 0.8),   # B called B
        ("a", "A", 60, 0, 70, 10, 0.7),   # no GT: spurious
        ("b", "B", 0, 0, 10, 10, 0.1),    # below threshold
    ])  # fmt: skip
    cm = M.confusion_matrix(gt, pred, score_thr=0.5)
    assert cm.index.tolist() == ["A", "B", "spurious"]
    assert cm.columns.tolist() == ["A", "B", "missed"]
    expected = [[0, 1, 1], [0, 1, 1], [1, 0, 0]]
    assert cm.to_numpy().tolist() == expected
    # Total GT = row sums of the class rows; total predictions = column sums.
    assert cm.loc[["A", "B"]].to_numpy().sum() == 4
    assert cm[["A", "B"]].to_numpy().sum() == 3
    with pytest.raises(ValueError, match="reserved"):
        M.confusion_matrix(gt.assign(**{"class": "missed"}), pred)


def test_counting_metrics():
    gt = boxes([("a", "A", 0, 0, 1, 1)] * 3 + [("c", "A", 0, 0, 1, 1)] * 2)
    pred = preds(
        [("a", "A", 0, 0, 1, 1, 0.9)] * 2 + [("a", "A", 0, 0, 1, 1, 0.1)]
        + [("b", "A", 0, 0, 1, 1, 0.9)] + [("c", "A", 0, 0, 1, 1, 0.7)] * 2
    )
    r = M.count_metrics(gt, pred, score_thr=0.5, images=["d"])
    t = r.table.set_index("image")
    assert t.index.tolist() == ["a", "b", "c", "d"]
    assert t.n_gt.tolist() == [3, 0, 2, 0]
    assert t.n_pred.tolist() == [2, 1, 2, 0]
    assert t.error.tolist() == [-1, 1, 0, 0]
    assert r.mae == pytest.approx(0.5)
    assert r.mean_error == pytest.approx(0.0)
    assert r.mean_rel_error == pytest.approx((1 / 3 + 0) / 2)
    assert r.pearson_r == pytest.approx(np.corrcoef([3, 0, 2, 0], [2, 1, 2, 0])[0, 1])
    assert r.n_images == 4


def test_empty_predictions_and_empty_gt(tiny):
    gt, pred = tiny
    none = pred.iloc[:0]
    res = M.evaluate(gt, none)
    assert res.map50 == 0.0 and res.map50_95 == 0.0
    assert res.per_class["A"]["n_gt"] == 2
    m = M.match(gt, none)
    assert m.outcome.tolist() == ["fn", "fn", "fn"]
    r = M.precision_recall_f1(gt, none).set_index("class")
    assert np.isnan(r.loc["all", "precision"]) and r.loc["all", "recall"] == 0 and r.loc["all", "f1"] == 0

    res = M.evaluate(gt.iloc[:0], pred)
    assert np.isnan(res.map50) and np.isnan(res.map50_95)
    assert all(np.isnan(v["ap50"]) for v in res.per_class.values())
    assert M.match(gt.iloc[:0], pred).outcome.tolist() == ["fp"] * 4

    res = M.evaluate(gt.iloc[:0], none)
    assert np.isnan(res.map50) and res.per_class == {} and res.pr_curves.empty
    assert M.match(gt.iloc[:0], none).empty
    cm = M.confusion_matrix(gt, none)
    assert cm.loc["A", "missed"] == 2 and cm.loc["B", "missed"] == 1


def test_class_without_gt_is_left_out_of_the_mean(tiny):
    gt, pred = tiny
    pred = pd.concat([pred, preds([("a", "C", 0, 0, 5, 5, 0.95)])], ignore_index=True)
    res = M.evaluate(gt, pred)
    assert np.isnan(res.per_class["C"]["ap50"]) and res.per_class["C"]["n_gt"] == 0
    known = [res.per_class[c]["ap50_95"] for c in ("A", "B")]
    assert res.map50_95 == pytest.approx(np.mean(known))
    # Declaring the classes drops the others, as params.catIds does.
    only_a = M.evaluate(gt, pred, classes=["A"])
    assert list(only_a.per_class) == ["A"]
    assert only_a.map50_95 == pytest.approx(res.per_class["A"]["ap50_95"])


def test_empty_image_predictions_are_false_positives(tiny):
    gt, pred = tiny
    extra = preds([("empty", "A", 0, 0, 10, 10, 0.99)])
    both = pd.concat([pred, extra], ignore_index=True)
    assert M.evaluate(gt, both).per_class["A"]["ap50"] < M.evaluate(gt, pred).per_class["A"]["ap50"]
    m = M.match(gt, both)
    assert m.loc[m.image == "empty", "outcome"].tolist() == ["fp"]


def test_evaluate_known_ap():
    # One class, 2 GT; detections tp (0.9), fp (0.8), tp (0.7):
    # precision envelope 1 up to recall 0.5, then 2/3 up to recall 1.
    gt = boxes([("a", "A", 0, 0, 10, 10), ("a", "A", 20, 0, 30, 10)])
    pred = preds([("a", "A", 0, 0, 10, 10, 0.9), ("a", "A", 50, 0, 60, 10, 0.8), ("a", "A", 20, 0, 30, 10, 0.7)])
    res = M.evaluate(gt, pred)
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert res.map50 == pytest.approx(expected)
    assert res.map50_95 == pytest.approx(expected)  # perfect boxes: same at every threshold
    curve = res.pr_curves.query("iou_thr == 0.5")
    assert len(res.pr_curves) == 10 * 101
    # pycocotools divides by tp + fp + eps, so "1" is 1 - 2e-16.
    assert curve.precision.iloc[0] == pytest.approx(1.0) and curve.score.iloc[0] == 0.9
    assert curve.precision.iloc[-1] == pytest.approx(2 / 3) and curve.score.iloc[-1] == 0.7
    assert res.per_class_table().columns.tolist() == ["class", "ap50", "ap50_95", "n_gt", "n_pred"]


def test_default_max_dets():
    gt = boxes([("a", "A", 0, 0, 1, 1)] * 60 + [("a", "B", 0, 0, 1, 1)] * 40)
    assert M.default_max_dets(gt) == 200  # 2 x 60 rounded up to hundreds
    assert M.default_max_dets(gt, class_agnostic=True) == 200
    assert M.default_max_dets(gt.iloc[:50]) == 100
    assert M.default_max_dets(gt.iloc[:0]) == 100


def test_validation_errors(tiny):
    gt, pred = tiny
    with pytest.raises(ValueError, match=r"missing column\(s\) \['score'\]"):
        M.evaluate(gt, pred.drop(columns="score"))
    with pytest.raises(ValueError, match="negative width"):
        M.match(gt.assign(x2=gt.x1 - 1), pred)
    bad = pred.copy()
    bad.loc[2, "score"] = np.nan
    with pytest.raises(ValueError, match=r"'score' has NaN.*\[2\]"):
        M.match(gt, bad)
    bad = gt.copy()
    bad.loc[1, "y1"] = np.nan
    with pytest.raises(ValueError, match="'y1' has NaN"):
        M.evaluate(bad, pred)
    with pytest.raises(ValueError, match="numeric"):
        M.evaluate(gt.assign(x1="left"), pred)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        M.evaluate(gt, pred, iou_thresholds=[0.0, 0.5])
    with pytest.raises(ValueError, match="max_dets"):
        M.evaluate(gt, pred, max_dets=0)
    with pytest.raises(TypeError):
        M.match(gt.to_dict(), pred)


def test_coco_round_trip(tiny):
    gt, pred = tiny
    gt = gt.assign(iscrowd=[False, True, False], ignore=[False, False, True])
    coco = M.gt_to_coco(gt, images=np.array(["zzz"]))
    assert [im["file_name"] for im in coco["images"]] == ["a", "zzz"]
    back = M.gt_from_coco(coco)
    pd.testing.assert_frame_equal(back, gt.astype({c: float for c in M.BOX_COLUMNS}), check_dtype=False)
    assert back.attrs["images"] == ["a", "zzz"]
    res = M.preds_to_coco(pred, coco)
    assert res[0] == {"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.9}
    pd.testing.assert_frame_equal(M.preds_from_coco(res, coco), pred, check_dtype=False)
    with pytest.raises(ValueError, match="images not in the COCO"):
        M.preds_to_coco(pred.assign(image="nope"), coco)


@needs_bccd
def test_evaluate_and_match_tables_agree(bccd):
    pred = perturb(bccd, 4)
    res = M.evaluate(bccd, pred)
    m = M.match(bccd, pred)
    for k, name in enumerate(res.classes):
        g = m[(m.kind == "gt") & (m["class"] == name)]
        assert (g.outcome == "tp").sum() / (g.outcome != "ignored").sum() == pytest.approx(res.recall[0, k])


@pytest.mark.slow
@needs_bccd
def test_bootstrap(bccd):
    pred = perturb(bccd, 5)
    ci = M.bootstrap_ci(bccd, pred, n_boot=200, seed=1)
    res = M.evaluate(bccd, pred)
    prf = M.precision_recall_f1(bccd, pred).set_index("class").loc["all"]
    est = ci.set_index("metric").estimate
    assert est["map50"] == res.map50 and est["map50_95"] == res.map50_95
    assert est[["precision", "recall", "f1"]].tolist() == pytest.approx(prf[["precision", "recall", "f1"]].tolist())
    assert est["count_mae"] == pytest.approx(M.count_metrics(bccd, pred).mae)
    assert (ci.lo <= ci.estimate + 0.02).all() and (ci.estimate <= ci.hi + 0.02).all()
    assert (ci.lo < ci.hi).all()
    again = M.bootstrap_ci(bccd, pred, n_boot=200, seed=1)
    pd.testing.assert_frame_equal(ci, again)


@needs_bccd
def test_bootstrap_weights_equal_materialised_resample(bccd):
    # Weighted replay == evaluating a data set with images really duplicated.
    pred = perturb(bccd, 6)
    images = sorted(set(bccd.image) | set(pred.image))
    w = np.random.default_rng(0).multinomial(len(images), np.ones(len(images)) / len(images))
    parts_g, parts_p = [], []
    for image, n in zip(images, w):
        for copy_no in range(n):
            name = f"{image}#{copy_no}"
            parts_g.append(bccd[bccd.image == image].assign(image=name))
            parts_p.append(pred[pred.image == image].assign(image=name))
    direct = M.evaluate(pd.concat(parts_g), pd.concat(parts_p))

    from workbench.evaluation.metrics.ap import ap_inputs, mean_ap, precision_curves
    from workbench.evaluation.metrics.matching import run_core

    g, p = M.parse_gt(bccd), M.parse_pred(pred)
    core = run_core(g, p, np.array(M.COCO_IOU_THRESHOLDS), max_dets=None, class_agnostic=False)
    prec, _, _ = precision_curves(ap_inputs(core, list(range(10))), w.astype(float))
    assert mean_ap(prec) == pytest.approx(direct.map50_95, abs=1e-12)
