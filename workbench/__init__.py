"""Cell Workbench: detect, classify and count cells in microscopy images.

Importing the package makes the process offline by construction (see :mod:`workbench.core.offline`)
before ultralytics or timm can be imported by anything else.
"""
__version__ = "0.1.0"

from workbench.core.offline import configure_offline as _configure_offline

_configure_offline()
