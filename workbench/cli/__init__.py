"""Command line: ``python -m workbench COMMAND``; :mod:`.main` holds the data commands and the
parser, one module per further command group registers itself through :mod:`.extensions`."""
from workbench.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
