"""Argument types shared by the CLI parsers: comma lists and ``NAME=VALUE`` pairs.

Each is an ``argparse`` ``type=``: a malformed value is reported by argparse (usage line, exit 2)
before any command runs.
"""
from __future__ import annotations

import argparse
import json

__all__ = ["csv_list", "mapping", "pair", "param"]


def csv_list(text: str) -> list[str]:
    """``a,b, c`` -> ``["a", "b", "c"]`` (blanks dropped)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def pair(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> ``(NAME, VALUE)``, both strings (the value may contain ``=``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key.strip(), value


def param(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` with the value read as JSON where it is JSON (``5``, ``0.1``, ``true``,
    ``[1, 2]``, ``"text"``), else kept as the string."""
    key, value = pair(text)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def mapping(text: str) -> dict[str, str]:
    """``NAME=VALUE[,NAME=VALUE...]`` -> a dict of strings."""
    return dict(pair(t) for t in csv_list(text))
