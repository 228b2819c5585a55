"""Corrected labels as versions beside a canonical dataset: save, diff, list, revert, materialise.

:mod:`.diff` is the pure core (the edit actions between two sets of boxes), :mod:`.versions` the
on-disk versions (layout, reading, saving, undo by a new version) and :mod:`.materialise` turns a
version into a full canonical dataset for training and export.
"""
from workbench.inspection.corrections.diff import (
    ACTIONS, CHANGE_COLUMNS, DIFF_COLUMNS, changes_table, diff_boxes, pair_boxes)
from workbench.inspection.corrections.materialise import materialise
from workbench.inspection.corrections.versions import (
    CANONICAL, SavedVersion, label_name, list_versions, read_changes, read_version_boxes, resolve_version, revert,
    save_version, version_dir, versions_root)

__all__ = ["ACTIONS", "CANONICAL", "CHANGE_COLUMNS", "DIFF_COLUMNS", "SavedVersion", "changes_table", "diff_boxes",
           "label_name", "list_versions", "materialise", "pair_boxes", "read_changes", "read_version_boxes",
           "resolve_version", "revert", "save_version", "version_dir", "versions_root"]
