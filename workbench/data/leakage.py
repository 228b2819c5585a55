"""Duplicate and near-duplicate images, within and across splits (train/test leakage).

Uses the hashes that the import recorded in ``meta.csv``:

* ``pixel_sha256`` (hash of the decoded pixels): equal means the same image, even when one
  copy was re-encoded or renamed -> ``kind="exact"``;
* ``phash`` (64-bit DCT perceptual hash, hex): a Hamming distance <= ``threshold`` means the
  same scene re-encoded, slightly re-focused or re-exposed -> ``kind="near"``.

Default ``threshold=6`` (of 64 bits) was chosen on real data: unrelated images were never
closer than 14 bits (BCCD, all 42,486 pairs of 292 images; MoNuSeg + MNFinder, 46 images),
a JPEG re-encoded copy is 0-2 bits away, and BCCD's ``BloodImage_00037``/``00038`` (the same
field at a different focus, in official val and train) are 4 bits apart.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

DEFAULT_THRESHOLD = 6
COLUMNS = ["image_a", "image_b", "split_a", "split_b", "kind", "distance", "cross_split"]


def phash_array(hashes: pd.Series | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse 16-digit hex perceptual hashes into uint64; returns (values, valid mask)."""
    vals = np.zeros(len(hashes), dtype=np.uint64)
    valid = np.zeros(len(hashes), dtype=bool)
    for i, h in enumerate(hashes):
        try:
            s = str(h).strip()
            if 0 < len(s) <= 16:
                vals[i] = np.uint64(int(s, 16))
                valid[i] = True
        except ValueError:  # empty or non-hex: that image takes no part in near-duplicate search
            pass
    return vals, valid


def hamming_pairs(hashes: np.ndarray, threshold: int, *, block_elems: int = 1 << 22
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of uint64 hashes with popcount(h_i ^ h_j) <= ``threshold``.

    Vectorised XOR + popcount over row blocks of the upper triangle (``block_elems`` pairs
    per block, ~32 MB), so 10k hashes (50M pairs) take well under a second.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    rows = max(1, block_elems // max(n, 1))
    out_i, out_j, out_d = [], [], []
    for s in range(0, n, rows):
        e = min(n, s + rows)
        d = np.bitwise_count(h[s:e, None] ^ h[None, s:])  # (e-s, n-s): columns start at s
        r, c = np.nonzero(d <= threshold)
        keep = c > r  # strictly upper triangle: j = s + c > i = s + r
        out_i.append(s + r[keep])
        out_j.append(s + c[keep])
        out_d.append(d[r[keep], c[keep]].astype(np.int64))
    if not out_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def find_duplicates(meta: pd.DataFrame, *, threshold: int = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Exact and near-duplicate image pairs of a canonical ``meta`` table.

    Returns a tidy DataFrame with :data:`COLUMNS`: one row per pair (``image_a`` sorts
    first in meta order), ``distance`` = phash Hamming distance (0 for exact pairs),
    ``cross_split`` = both images have a split and the splits differ (that is leakage).
    ``threshold < 0`` turns the near-duplicate search off.
    """
    for col in ("image_id",):
        if col not in meta:
            raise ValueError(f"meta has no {col!r} column")
    ids = meta["image_id"].astype(str).to_numpy()
    split = (meta["split"].fillna("").astype(str).to_numpy() if "split" in meta
             else np.full(len(meta), "", dtype=object))
    n = len(meta)

    # exact: equal decoded pixels (fall back to the file hash where no pixel hash exists)
    key = np.full(n, "", dtype=object)
    for col in ("sha256", "pixel_sha256"):  # later columns win
        if col in meta:
            v = meta[col].fillna("").astype(str).to_numpy()
            key = np.where(v != "", v, key)
    ei, ej = [], []
    order = pd.Series(key)
    for _, idx in order[order.ne("")].groupby(order[order.ne("")]).groups.items():
        if len(idx) > 1:
            for a, b in combinations(sorted(idx), 2):
                ei.append(a)
                ej.append(b)
    exact_i = np.asarray(ei, dtype=np.int64)
    exact_j = np.asarray(ej, dtype=np.int64)

    near_i = near_j = near_d = np.zeros(0, dtype=np.int64)
    if threshold >= 0 and "phash" in meta and n > 1:
        vals, valid = phash_array(meta["phash"].tolist())
        where = np.flatnonzero(valid)
        i, j, d = hamming_pairs(vals[where], threshold)
        i, j = where[i], where[j]
        not_exact = ~((key[i] == key[j]) & (key[i] != ""))
        near_i, near_j, near_d = i[not_exact], j[not_exact], d[not_exact]

    a = np.concatenate([exact_i, near_i])
    b = np.concatenate([exact_j, near_j])
    df = pd.DataFrame({
        "image_a": ids[a] if len(a) else np.array([], dtype=str),
        "image_b": ids[b] if len(b) else np.array([], dtype=str),
        "split_a": split[a] if len(a) else np.array([], dtype=str),
        "split_b": split[b] if len(b) else np.array([], dtype=str),
        "kind": ["exact"] * len(exact_i) + ["near"] * len(near_i),
        "distance": np.concatenate([np.zeros(len(exact_i), dtype=np.int64), near_d]),
    })
    df["image_a"] = df["image_a"].astype(str)
    df["image_b"] = df["image_b"].astype(str)
    df["split_a"] = df["split_a"].astype(str)
    df["split_b"] = df["split_b"].astype(str)
    df["cross_split"] = df["split_a"].ne("") & df["split_b"].ne("") & df["split_a"].ne(df["split_b"])
    df = df.sort_values(["cross_split", "kind", "distance", "image_a", "image_b"],
                        ascending=[False, True, True, True, True], kind="stable")
    return df.reset_index(drop=True)[COLUMNS]


def leakage_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Counts of duplicate pairs by kind and split pair (e.g. near / train-val: 3)."""
    if pairs.empty:
        return pd.DataFrame(columns=["kind", "splits", "cross_split", "pairs"])
    splits = np.where(pairs["split_a"] <= pairs["split_b"],
                      pairs["split_a"] + "-" + pairs["split_b"], pairs["split_b"] + "-" + pairs["split_a"])
    return (pairs.assign(splits=splits).groupby(["kind", "splits", "cross_split"]).size()
            .reset_index(name="pairs").sort_values(["cross_split", "pairs"], ascending=[False, False])
            .reset_index(drop=True))
