"""Cell statistics: hand-computed answers on tiny tables, then checks on the whole real BCCD."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from workbench.analysis import stats
from workbench.report import stats_plots
from workbench.data.canonical import load_dataset

POS, NOR = ["WBC", "Platelets"], "RBC"


def box(image: str, cls: str, cx: float, cy: float, w: float = 2.0, h: float = 2.0, **extra) -> dict:
    return {"image": image, "class": cls, "x1": cx - w / 2, "y1": cy - h / 2, "x2": cx + w / 2,
            "y2": cy + h / 2, **extra}


# ----------------------------------------------------------------------------- counts and ratios

@pytest.fixture
def small():
    images = pd.DataFrame({"image_id": ["A", "B", "C", "D"], "width": [100, 100, 200, 50],
                           "height": [100, 50, 100, 50], "treatment": ["ctrl", "ctrl", "drug", "drug"]})
    rows = ([box("A", "mn", 10, 10)] * 2 + [box("A", "nuc", 50, 50)] * 4 + [box("A", "debris", 5, 5)]
            + [box("B", "nuc", 20, 20)] * 3 + [box("C", "mn", 30, 30)] * 2)
    return pd.DataFrame(rows), images


def test_counts_one_row_per_image_in_images_order(small):
    boxes, images = small
    c = stats.per_image_counts(boxes, images, classes=["mn", "nuc"], groups="treatment")
    assert list(c.columns) == ["image", "treatment", "mn", "nuc", "total"]
    assert c["image"].tolist() == ["A", "B", "C", "D"]
    assert c["mn"].tolist() == [2, 0, 2, 0]
    assert c["nuc"].tolist() == [4, 3, 0, 0]
    assert c["total"].tolist() == [7, 3, 2, 0]  # total includes the unlisted 'debris'
    assert c["treatment"].tolist() == ["ctrl", "ctrl", "drug", "drug"]


def test_counts_without_images_table_use_the_images_of_the_boxes(small):
    boxes, _ = small
    c = stats.per_image_counts(boxes)
    assert c["image"].tolist() == ["A", "B", "C"]
    assert list(c.columns) == ["image", "debris", "mn", "nuc", "total"]


def test_ratio_with_zero_normals(small):
    boxes, images = small
    r = stats.positive_ratio(boxes, images, positive="mn", normal="nuc", groups=["treatment"])
    assert r["n_positive"].tolist() == [2, 0, 2, 0]
    assert r["n_normal"].tolist() == [4, 3, 0, 0]
    assert r["ratio"].iloc[0] == 0.5 and r["ratio"].iloc[1] == 0.0
    assert math.isinf(r["ratio"].iloc[2])  # positives, no normals: inf
    assert math.isnan(r["ratio"].iloc[3])  # nothing at all: 0/0 = NaN
    assert r["positive_fraction"].iloc[:3].tolist() == [2 / 6, 0.0, 1.0]
    assert math.isnan(r["positive_fraction"].iloc[3])


def test_image_and_image_id_columns_both_accepted(small):
    boxes, images = small
    a = stats.per_image_counts(boxes.rename(columns={"image": "image_id"}),
                               images.rename(columns={"image_id": "image"}))
    b = stats.per_image_counts(boxes.assign(image_id=boxes["image"]), images)
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="both 'image' and 'image_id' and they differ in 1"):
        stats.per_image_counts(boxes.assign(image_id=boxes["image"].tolist()[:-1] + ["Z"]))


def test_final_class_is_used_when_present(small):
    boxes, images = small
    cascade = boxes.rename(columns={"class": "det_class"}).assign(final_class=boxes["class"])
    cascade.loc[0, "final_class"] = "nuc"  # the classifier relabelled one micronucleus
    c = stats.per_image_counts(cascade, images, classes=["mn", "nuc"])
    assert c.loc[0, ["mn", "nuc"]].tolist() == [1, 5]
    c = stats.per_image_counts(cascade, images, classes=["mn", "nuc"], class_col="det_class")
    assert c.loc[0, ["mn", "nuc"]].tolist() == [2, 4]


def test_bad_tables_report_every_problem_at_once(small):
    boxes, images = small
    bad = boxes.copy()
    bad.loc[1, "x1"] = np.nan
    bad.loc[2, "x2"] = -5.0  # inverted
    bad["x2"] = bad["x2"].astype(object)
    bad.loc[3, "x2"] = "abc"
    bad.loc[4, "class"] = None
    with pytest.raises(ValueError) as err:
        stats.per_image_counts(bad, images)
    msg = str(err.value)
    assert "2 row(s) with missing or non-numeric coordinates: rows 1, 3" in msg
    assert "x2 < x1" in msg and "rows 2" in msg
    assert "empty 'class': rows 4" in msg
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['y2'\]"):
        stats.per_image_counts(boxes.drop(columns="y2"), images)
    with pytest.raises(ValueError, match=r"2 image\(s\) of the boxes table are not in the images table: \['A', 'B'\]") as err:
        stats.per_image_counts(boxes, images[images["image_id"] != "A"].assign(
            image_id=lambda t: t["image_id"].replace("B", "C")))
    assert "repeated image ids: ['C']" in str(err.value)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['donor'\]"):
        stats.per_image_counts(boxes, images, groups="donor")
    with pytest.raises(ValueError, match="both positive and normal"):
        stats.positive_ratio(boxes, images, positive=["mn", "nuc"], normal="nuc")
    with pytest.warns(UserWarning, match=r"\['mnn'\] do not occur"):
        stats.positive_ratio(boxes, images, positive="mnn", normal="nuc")


# ----------------------------------------------------------------------------- sizes

def test_cell_sizes_fraction_and_normal_relative():
    images = pd.DataFrame({"image_id": ["I", "J"], "width": [100, 10], "height": [200, 10]})
    boxes = pd.DataFrame([
        box("I", "nuc", 20, 20, 10, 10),  # 100 px
        box("I", "nuc", 60, 60, 20, 20),  # 400 px -> mean normal area 250
        box("I", "nuc", 80, 80, 0, 6),  # zero area: not part of the mean
        box("I", "mn", 40, 40, 5, 10),  # 50 px
        box("J", "mn", 5, 5, 2, 2),  # no normal cell in J
    ])
    s = stats.cell_sizes(boxes, images, normal="nuc")
    assert s["cell"].tolist() == [0, 1, 2, 3, 4]
    assert s["area_px"].tolist() == [100, 400, 0, 50, 4]
    assert s["area_fraction"].tolist() == pytest.approx([100 / 20000, 400 / 20000, 0, 50 / 20000, 4 / 100])
    assert s["rel_normal_area"].iloc[:4].tolist() == pytest.approx([0.4, 1.6, 0.0, 0.2])
    assert math.isnan(s["rel_normal_area"].iloc[4])
    with pytest.raises(ValueError, match=r"without a positive width: \['J'\]"):
        stats.cell_sizes(boxes, images.assign(width=[100, 0]), normal="nuc")
    with pytest.raises(ValueError, match="pass images= with 'width' and 'height'"):
        stats.cell_sizes(boxes, None, normal="nuc")


# ----------------------------------------------------------------------------- neighbourhood

def test_neighbourhood_counts_at_each_k_with_cells_on_the_boundary():
    a = 10.0  # positive box 2a x 2a: equal-area radius r = 2a / sqrt(pi); R = r (one positive)
    big_r = 2 * a / math.sqrt(math.pi)
    cx = cy = 500.0
    rows = [box("I", "mn", cx, cy, 2 * a, 2 * a)]
    # normal cells at these multiples of R, in different directions (diagonals need rounding)
    for m, angle in [(2, 0), (3, 45), (4, 90), (5, 135), (6, 200), (8, 300), (8 * (1 + 1e-6), 30)]:
        t = math.radians(angle)
        rows.append(box("I", "nuc", cx + m * big_r * math.cos(t), cy + m * big_r * math.sin(t)))
    rows.append(box("J", "nuc", cx, cy))  # same place, other image: never a neighbour
    n = stats.neighbourhood_counts(pd.DataFrame(rows), positive="mn", normal="nuc")
    assert n["k"].tolist() == [2, 4, 6, 8]
    # inclusive boundary: the cell at exactly k*R counts, the one 1e-6 beyond 8R does not
    assert n["n_neighbours"].tolist() == [1, 3, 5, 6]
    assert n["radius_ref"].iloc[0] == pytest.approx(big_r)
    assert n["reach"].tolist() == pytest.approx([2 * big_r, 4 * big_r, 6 * big_r, 8 * big_r])
    assert set(n["cell"]) == {0} and set(n["image"]) == {"I"}


def test_neighbourhood_mean_radius_per_image_or_dataset():
    # radius="sides": r = (w + h) / 4. Image P: positives r=4 and r=6 -> R=5; image Q: r=8.
    rows = [box("P", "mn", 0, 0, 6, 10), box("P", "mn", 100, 0, 10, 14),
            box("P", "nuc", 10, 0), box("P", "nuc", 0, 11), box("P", "nuc", 100, 20),
            box("Q", "mn", 0, 0, 14, 18), box("Q", "nuc", 0, 16)]
    df = pd.DataFrame(rows)
    n = stats.neighbourhood_counts(df, positive="mn", normal="nuc", ks=[2, 4], radius="sides")
    got = {(r.image, r.cell, r.k): r.n_neighbours for r in n.itertuples()}
    # P, reach 10 (k=2) and 20 (k=4): cell 0 sees the cells at 10 and 11 -> 1, 2;
    # cell 1 sees the one at 20 -> 0, 1 (and from 100 away nothing else); Q: R=8, reach 16
    assert got == {("P", 0, 2): 1, ("P", 0, 4): 2, ("P", 1, 2): 0, ("P", 1, 4): 1,
                   ("Q", 5, 2): 1, ("Q", 5, 4): 1}
    # dataset scope: R = mean(4, 6, 8) = 6, reach 12 at k=2: cell 0 now sees both, Q's
    # neighbour at 16 falls outside
    d = stats.neighbourhood_counts(df, positive="mn", normal="nuc", ks=[2], radius="sides", scope="dataset")
    assert d["radius_ref"].unique().tolist() == [6.0]
    assert d["n_neighbours"].tolist() == [2, 0, 0]


def test_neighbourhood_edge_cases():
    images = pd.DataFrame({"image": ["P", "N", "E"], "g": ["x", "y", "y"]})
    rows = [box("P", "mn", 0, 0), box("N", "nuc", 0, 0)]  # P: positive, no normal; N: no positive
    n = stats.neighbourhood_counts(pd.DataFrame(rows), images, positive="mn", normal="nuc", groups="g")
    assert n["image"].unique().tolist() == ["P"] and n["n_neighbours"].tolist() == [0, 0, 0, 0]
    assert n["g"].unique().tolist() == ["x"]
    s = stats.neighbourhood_summary(n, groups="g")
    assert s["mean_neighbours"].tolist() == [0, 0, 0, 0] and s["n_positive"].tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="ks must be positive"):
        stats.neighbourhood_counts(pd.DataFrame(rows), positive="mn", normal="nuc", ks=[0, 2])
    with pytest.raises(ValueError, match="radius must be 'area' or 'sides'"):
        stats.neighbourhood_counts(pd.DataFrame(rows), positive="mn", normal="nuc", radius="diameter")


# ----------------------------------------------------------------------------- flag rule

def _spread(image: str, n: int, x1: float, y1: float, size: float = 40) -> list[dict]:
    """n small aberration boxes with centres strictly inside the square (x1, y1, x1+size, y1+size)."""
    return [box(image, "aberration", x1 + 2 + (i % 6) * 6, y1 + 2 + (i // 6) * 6) for i in range(n)]


def test_flag_villain_cells_by_centre_containment():
    rows = [box("I", "cell", 20, 20, 40, 40), box("I", "cell", 120, 20, 40, 40),
            box("I", "cell", 220, 20, 40, 40)]
    rows += _spread("I", 11, 0, 0) + _spread("I", 9, 100, 0)
    rows.append(box("I", "aberration", 140, 20))  # centre exactly on cell 1's right edge: inside
    rows.append(box("I", "aberration", 300, 300))  # in no cell
    df = pd.DataFrame(rows)
    rule = stats.FlagRule(count="aberration", parent="cell", threshold=10, name="villain")
    f = stats.flag(df, rule)
    assert f["cell"].tolist() == [0, 1, 2]
    assert f["n_counted"].tolist() == [11, 10, 0]
    assert f["villain"].tolist() == [True, False, False]  # more than 10, not 10
    f = stats.flag(df, stats.FlagRule(count="aberration", parent="cell", threshold=10, inclusive=True))
    assert f["flagged"].tolist() == [True, True, False]
    assert f.attrs["rule"] == "flagged: aberration per cell (centre inside) >= 10"


def test_flag_by_overlap_fraction_and_assignment():
    parents = [box("I", "cell", 10, 10, 20, 20), box("I", "cell", 26, 10, 20, 20)]  # x 0..20 and 16..36
    # child A: x 16..24 -> 4/8 in parent 0 (exactly 0.5), 8/8 in parent 1
    # child B: x -4..4 -> 4/8 in parent 0; centre (0, 10) on parent 0's left edge
    kids = [box("I", "ab", 20, 10, 8, 8), box("I", "ab", 0, 10, 8, 8)]
    df = pd.DataFrame(parents + kids)
    n = lambda **kw: stats.flag(df, stats.FlagRule(count="ab", parent="cell", threshold=0, **kw))["n_counted"].tolist()
    assert n(inside="overlap", min_overlap=0.5) == [2, 1]  # 0.5 counts (inclusive)
    assert n(inside="overlap", min_overlap=0.6) == [0, 1]
    assert n(inside="overlap", min_overlap=0.5, assign="best") == [1, 1]  # A goes to parent 1 only
    assert n(inside="centre") == [2, 1]  # A's centre x=20 is in both (edges inclusive)
    assert n(inside="centre", assign="best") == [1, 1]


def test_flag_per_image_and_self_exclusion():
    images = pd.DataFrame({"image_id": ["I", "J", "K"], "donor": ["d1", "d1", "d2"]})
    rows = _spread("I", 3, 0, 0) + _spread("J", 1, 0, 0)
    f = stats.flag(pd.DataFrame(rows), stats.FlagRule(count=["aberration"], threshold=2), images, groups="donor")
    assert f["image"].tolist() == ["I", "J", "K"]
    assert f["n_counted"].tolist() == [3, 1, 0] and f["flagged"].tolist() == [True, False, False]
    # a box is never inside itself: a cell holding one other cell counts 1
    nested = pd.DataFrame([box("I", "cell", 50, 50, 40, 40), box("I", "cell", 50, 50, 10, 10)])
    f = stats.flag(nested, stats.FlagRule(count="cell", parent="cell", threshold=0))
    assert f["n_counted"].tolist() == [1, 1]  # centres coincide: each holds the other's centre


def test_flag_rule_validation():
    with pytest.raises(ValueError, match="inside must be 'centre' or 'overlap'.*min_overlap"):
        stats.FlagRule(count="a", threshold=1, inside="middle", min_overlap=0)
    with pytest.raises(ValueError, match="count needs at least one class"):
        stats.FlagRule(count=[], threshold=1)


# ----------------------------------------------------------------------------- real data: BCCD

@pytest.fixture(scope="module")
def bccd(bccd_canonical):
    return load_dataset(bccd_canonical)


def test_bccd_counts_and_ratio(bccd):
    c = stats.per_image_counts(bccd.objects, bccd.images, groups="split")
    assert len(c) == 292 and c["image"].is_unique
    assert c[["Platelets", "RBC", "WBC"]].to_numpy().sum() == 3943 == c["total"].sum()
    assert c[["Platelets", "RBC", "WBC"]].sum().to_dict() == {"Platelets": 292, "RBC": 3350, "WBC": 301}
    assert (c["total"].to_numpy() == bccd.images["n_objects"].to_numpy()).all()
    r = stats.positive_ratio(bccd.objects, bccd.images, positive=POS, normal=NOR, groups="split")
    assert len(r) == 292 and r["n_positive"].sum() == 593 and r["n_normal"].sum() == 3350
    no_rbc = c["RBC"] == 0
    assert np.isinf(r.loc[no_rbc, "ratio"]).all() and int(no_rbc.sum()) == 12  # each has a WBC
    assert np.allclose(r.loc[~no_rbc, "ratio"], (c["WBC"] + c["Platelets"])[~no_rbc] / c["RBC"][~no_rbc])


def test_bccd_sizes(bccd):
    s = stats.cell_sizes(bccd.objects, bccd.images, normal=NOR)
    assert len(s) == 3943
    assert np.allclose(s["area_fraction"], s["area_px"] / (640 * 480))
    med = s.groupby("class")["rel_normal_area"].median()
    assert 0.9 < med["RBC"] < 1.1 and med["WBC"] > 2 and med["Platelets"] < 0.5
    # per image, the normal cells' relative areas average 1 (zero-area boxes aside)
    rbc = s[(s["class"] == "RBC") & (s["area_px"] > 0)]
    assert np.allclose(rbc.groupby("image")["rel_normal_area"].mean(), 1.0)


@pytest.mark.slow
def test_bccd_neighbourhood_matches_brute_force(bccd):
    n = stats.neighbourhood_counts(bccd.objects, bccd.images, positive=POS, normal=NOR, groups="split")
    assert len(n) == 593 * 4
    o = bccd.objects.reset_index(drop=True)
    cx, cy = (o["x1"] + o["x2"]) / 2, (o["y1"] + o["y2"]) / 2
    r = np.sqrt((o["x2"] - o["x1"]) * (o["y2"] - o["y1"]) / np.pi)
    pos = o["class"].isin(POS)
    ref = r[pos & (r > 0)].groupby(o["image_id"]).mean()
    expected = {}
    for img, rows in o.groupby("image_id").groups.items():
        p = [i for i in rows if pos[i]]
        q = [i for i in rows if o.at[i, "class"] == NOR]
        # every positive against every normal of the image, by broadcasting
        d = np.hypot(cx[p].to_numpy()[:, None] - cx[q].to_numpy(), cy[p].to_numpy()[:, None] - cy[q].to_numpy())
        for k in (2, 4, 6, 8):
            for i, hits in zip(p, (d <= k * ref.get(img, np.nan) * (1 + 1e-9)).sum(axis=1)):
                expected[(i, k)] = int(hits)
    expected = [expected[(c, k)] for c, k in zip(n["cell"], n["k"])]
    assert n["n_neighbours"].tolist() == expected
    wide = n.pivot_table(index="cell", columns="k", values="n_neighbours")
    assert (wide.diff(axis=1).iloc[:, 1:] >= 0).all().all()  # more k, never fewer neighbours


def test_bccd_flag_per_image_agrees_with_counts(bccd):
    c = stats.per_image_counts(bccd.objects, bccd.images)
    f = stats.flag(bccd.objects, stats.FlagRule(count="RBC", threshold=15), bccd.images)
    assert (f["n_counted"].to_numpy() == c["RBC"].to_numpy()).all()
    assert f["flagged"].sum() == int((c["RBC"] > 15).sum()) > 0


@pytest.mark.slow
def test_bccd_figures(bccd):
    c = stats.per_image_counts(bccd.objects, bccd.images, groups="split")
    r = stats.positive_ratio(bccd.objects, bccd.images, positive=POS, normal=NOR, groups="split")
    n = stats.neighbourhood_counts(bccd.objects, bccd.images, positive=POS, normal=NOR, groups="split")
    s = stats.cell_sizes(bccd.objects, bccd.images, normal=NOR, groups="split")

    fig = stats_plots.per_image_boxplot(r, "ratio", group="split")
    points = sum(len(col.get_offsets()) for col in fig.axes[0].collections)
    assert points == 280  # one point per image with a finite ratio (292 - 12)
    assert "12 image(s) without a finite value" in fig.axes[0].get_title()

    fig = stats_plots.class_share_pie(c, ["RBC", "WBC", "Platelets"])
    wedges = fig.axes[0].patches
    assert len(wedges) == 3
    assert (wedges[0].theta2 - wedges[0].theta1) / 360 == pytest.approx(3350 / 3943)

    fig = stats_plots.class_share_pie(c, ["RBC", "WBC", "Platelets"], group="split", order=["val", "train"])
    assert [ax.get_title().split(" (")[0] for ax in fig.axes[:2]] == ["val", "train"]
    with pytest.raises(ValueError, match="must list the groups found"):
        stats_plots.class_share_pie(c, ["RBC"], group="split", order=["val"])

    # counting against itself is perfect; 292 RBC too many in one of the 292 images is MAE 1, bias +1
    more = c.copy()
    more.loc[0, "RBC"] += 292
    fig = stats_plots.count_agreement(c, more, ["RBC", "WBC"], label="model")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["RBC: MAE 1.00, bias +1.00", "WBC: MAE 0.00, bias +0.00"]
    assert len(fig.axes[0].collections[0].get_offsets()) == len(c) == 292
    assert fig.axes[0].get_ylabel() == "model cells per image"
    with pytest.raises(ValueError, match="same images"):
        stats_plots.count_agreement(c, more.iloc[1:], ["RBC"])

    fig = stats_plots.neighbourhood_curves(n, group="split")
    lines = {ln.get_label().split(" (")[0]: ln for ln in fig.axes[0].get_lines()}
    train = n[n["split"] == "train"].groupby(["image", "k"])["n_neighbours"].mean().groupby("k").mean()
    assert np.allclose(lines["train"].get_ydata(), train.to_numpy())

    for fig in (stats_plots.class_count_boxplot(c, ["RBC", "WBC", "Platelets"], group="split"),
                stats_plots.cell_size_violins(s, group="split"),
                stats_plots.flag_bars(stats.flag(bccd.objects, stats.FlagRule(count="RBC", threshold=15),
                                                 bccd.images, groups="split"), group="split")):
        assert isinstance(fig, Figure) and fig.axes[0].has_data()
