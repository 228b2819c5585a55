"""Extra CLI subcommands (train, predict, evaluate, ...), each a function adding a subparser.

Kept apart from :mod:`workbench.cli` so the core commands never import torch or ultralytics.
"""
from __future__ import annotations

import argparse
from typing import Callable

from . import cli_cascade, cli_inspect, cli_large, cli_library, cli_models

REGISTRY: list[Callable[[argparse._SubParsersAction], None]] = [
    cli_models.register,  # train, predict, tile, evaluate
    cli_cascade.register,  # cascade train / predict
    cli_large.register,  # tiled and two-stage inference on large images
    cli_inspect.register,  # napari hard-case queue and label correction
    cli_library.register,  # library levels / compose / add
]
