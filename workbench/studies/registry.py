"""Imports every study module so that each registers its :class:`~workbench.studies.base.Study`
under its notebook's name (see :data:`workbench.studies.base.REGISTRY`)."""
from workbench.studies import style_levels  # noqa: F401  02_style_levels
from workbench.studies import pretrain_vs_scratch  # noqa: F401  03_pretrain_vs_scratch
from workbench.studies import model_size  # noqa: F401  04_model_size
from workbench.studies import independent_test  # noqa: F401  05_independent_test
from workbench.studies import large_images  # noqa: F401  07_large_images (both parts)
from workbench.studies import micronuclei  # noqa: F401  08_micronuclei

from workbench.studies.base import REGISTRY, study_class

__all__ = ["REGISTRY", "study_class"]
