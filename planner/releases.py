"""Library releases as the planner reads them: MAJOR.MINOR[.PATCH] text, and registries of release ranges that
say whether a release has some behaviour (planner/bnb_versions.py, planner/transformers_versions.py)."""

from __future__ import annotations

import re

from planner.errors import PlanError

Release = tuple[int, int, int]
# (first release, last release, whether releases in that range have the behaviour)
ReleaseRanges = tuple[tuple[Release, Release, bool], ...]


def release(text: str) -> Release:
    """'4.46' -> (4, 46, 0); the text has been checked by parse_release."""
    parts = [int(p) for p in text.split(".")] + [0]
    return parts[0], parts[1], parts[2]


def parse_release(text: str, *, option: str, example: str, oldest: Release, too_old: str) -> str:
    """'' (a current release) or the stripped MAJOR.MINOR[.PATCH] text; PlanError naming `option` when it is not
    one, and `too_old` when it is older than `oldest`."""
    text = text.strip()
    if not text:
        return ""
    if not re.fullmatch(r"\d{1,4}\.\d{1,4}(\.\d{1,4})?", text):
        raise PlanError(f"{option} must look like {example}, got {text!r}")
    if release(text) < oldest:
        raise PlanError(too_old)
    return text


def has_behaviour(version: str, ranges: ReleaseRanges) -> bool:
    """Whether `version` falls in a range marked True ('' = a current release: False)."""
    if not version:
        return False
    at = release(version)
    return any(first <= at <= last and flag for first, last, flag in ranges)
