"""Dataset audit: counts, box and image statistics, density, quality proxies, problems.

:func:`audit_dataset` reads a canonical dataset (never writes to it) and returns tidy
DataFrames in an :class:`AuditResult`; :func:`write_audit` writes them with ``audit.json``
and figures to a separate folder. The parts, lowest first:

* :mod:`.checks`   the measurements: label files, image files and quality proxies (process pool),
  duplicate boxes, Clark-Evans ratio, density class; :class:`AuditSettings` holds the thresholds
  (what each one means is documented there)
* :mod:`.problems` the findings as one row per problem (import's ``problems.csv`` carried over,
  plus every kind in :data:`AUDIT_KINDS`)
* :mod:`.report`   the run (:func:`audit_dataset`), :func:`summary_tables`, :func:`write_audit`
  and :func:`example_images`

Use the package (``from workbench.data import audit; audit.audit_dataset(root)``).
"""
from workbench.data.audit.checks import (DENSITY_CLASSES, GREY_COLOURFULNESS, AuditSettings, check_image,
                                         check_images, clark_evans, density_class, duplicate_boxes, read_labels)
from workbench.data.audit.problems import AUDIT_KINDS, BOUNDS_TOL, PROBLEM_COLUMNS, absent_class_problems, box_problems
from workbench.data.audit.report import AuditResult, audit_dataset, example_images, summary_tables, write_audit

__all__ = [
    "AUDIT_KINDS", "BOUNDS_TOL", "DENSITY_CLASSES", "GREY_COLOURFULNESS", "PROBLEM_COLUMNS", "AuditResult",
    "AuditSettings", "absent_class_problems", "audit_dataset", "box_problems", "check_image", "check_images", "clark_evans",
    "density_class", "duplicate_boxes", "example_images", "read_labels", "summary_tables", "write_audit",
]
