"""Named study profiles (``smoke`` for CI, ``modest`` for a CPU, ``full`` for a GPU): one lookup for every study."""
from __future__ import annotations

from typing import Mapping, TypeVar

P = TypeVar("P")


def pick(profile: str | P, profiles: Mapping[str, P]) -> P:
    """The profile named ``profile`` in ``profiles`` (a profile object is returned as it is);
    an unknown name is a ``ValueError`` that lists the known ones."""
    if not isinstance(profile, str):
        return profile
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}; known: {sorted(profiles)}")
    return profiles[profile]
