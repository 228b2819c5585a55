"""The official split as folder names give it (``training-data`` -> train, ``val`` -> val, ...).

The rule, in one place for every importer that uses it:

* A folder name is cut into words at non-letters and at camelCase steps
  (``MoNuSegTrainingData`` -> mo, nu, seg, training, data; ``validation-data`` -> validation, data).
* A word starting with ``train`` means **train**; ``val``, ``valid``, ``validation`` mean **val**;
  a word starting with ``test`` means **test**. Other folders say nothing.
* The outermost folder below the source that says something wins (``train/test_batch_3`` is
  train); the source folder's own name counts only when no folder below it says anything.
* A split only counts as official when the folders name at least two different splits: a
  source that holds only ``training-data`` is not split (every image would be train and
  validation would have nothing), so ``split`` can divide it later.
"""
from __future__ import annotations

import re
from typing import Iterable

_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_VAL_WORDS = ("val", "valid", "validation")


def split_of_folder(name: str) -> str:
    """'train', 'val', 'test' or '' for one folder name (see the module docstring)."""
    for word in (w.lower() for w in _WORDS.findall(name)):
        if word.startswith("train"):
            return "train"
        if word in _VAL_WORDS:
            return "val"
        if word.startswith("test"):
            return "test"
    return ""


def split_from_folders(folders: Iterable[str], *, source_name: str = "") -> str:
    """The split named by the outermost of ``folders`` (below the source) that names one.

    ``source_name`` (the source folder's own name, e.g. ``validation-data``) counts only when
    no folder below it names a split: a source called ``test_run`` holding ``train/`` and
    ``val/`` must not make everything test.
    """
    for name in folders:
        split = split_of_folder(name)
        if split:
            return split
    return split_of_folder(source_name) if source_name else ""


def official_splits(splits: list[str]) -> tuple[list[str], str]:
    """Keep folder-derived ``splits`` only if they name two or more splits; say why in a note."""
    named = sorted({s for s in splits if s})
    if len(named) >= 2:
        return splits, f"official split from folder names: {', '.join(named)}"
    if named:
        return ([""] * len(splits),
                f"all images lie under {named[0]!r} folders; not recorded as an official split")
    return [""] * len(splits), "no split named by the folders"
