"""Extra CLI subcommands (train, predict, evaluate, ...), each a function adding a subparser.

Kept apart from :mod:`workbench.cli.main` so the core commands never import torch or ultralytics.
"""
from __future__ import annotations

import argparse
from typing import Callable

from workbench.cli import cascade as cli_cascade
from workbench.cli import dense as cli_dense
from workbench.cli import grid as cli_grid
from workbench.cli import inspect as cli_inspect
from workbench.cli import large as cli_large
from workbench.cli import library as cli_library
from workbench.cli import models as cli_models

REGISTRY: list[Callable[[argparse._SubParsersAction], None]] = [
    cli_models.register,  # train, predict, tile, evaluate
    cli_cascade.register,  # cascade train / predict
    cli_large.register,  # tiled and two-stage inference on large images
    cli_inspect.register,  # napari hard-case queue and label correction
    cli_library.register,  # library levels / compose / add
    cli_grid.register,  # grid / cell: a study's cells as processes (local or Ray)
    cli_dense.register,  # train-dense / predict-dense: the per-pixel micronucleus detector
]
