"""Imports every study module so that each registers its :class:`~workbench.studies.base.Study`
under its notebook's name (see :data:`workbench.studies.base.REGISTRY`)."""
from workbench.studies import model_size  # noqa: F401  04_model_size

from workbench.studies.base import REGISTRY, study_class

__all__ = ["REGISTRY", "study_class"]
