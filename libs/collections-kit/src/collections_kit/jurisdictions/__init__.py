"""Jurisdictions as policy data: one TOML file per jurisdiction, named by its code.

Which jurisdictions the system acts for is the set of files in one directory (``CN.toml``,
``US.toml``, ``UK.toml`` ship beside this module): adding one is a file and its tests, no
code and no contract version. The workflow and the notifier read the same directory, so
they cannot disagree on which jurisdictions exist: the workflow refuses an overdue report
for any other ("jurisdiction XX has no policy"), the notifier applies the file's contact
rules (its window, caps, quiet periods and validation notice; what a file may hold is the
notifier's ``jurisdiction_from_mapping``, which refuses anything it does not understand).

This module checks what is common to every reader: a file's name is a jurisdiction code of
the contract's shape and its content is a TOML table. Stdlib only, so a pure domain may use
the shipped data as its default.
"""

from __future__ import annotations

import re
import tomllib
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

# The shape of an ISO 3166-1 alpha-2 code (UK, not GB, by the lenders' usage); the
# contract's Jurisdiction takes the same pattern.
JURISDICTION_PATTERN = r"^[A-Z]{2}$"
SUFFIX = ".toml"


class JurisdictionFileError(ValueError):
    """A jurisdiction file is unusable; a service refuses to start with it."""


def load_jurisdictions(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """Each jurisdiction's data by code (sorted), from ``directory`` or, with None, the
    shipped files. Any file other than ``XX.toml`` is an error rather than ignored: a
    misnamed file (``de.toml``, ``DE.tml``) would otherwise drop a jurisdiction silently."""
    root: Traversable = files(__name__) if directory is None else directory
    if not root.is_dir():
        raise JurisdictionFileError(f"{directory}: not a directory of jurisdiction files")
    found: dict[str, dict[str, Any]] = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.startswith(".") or (directory is None and not entry.name.endswith(SUFFIX)):
            # Hidden entries are a mount's own (a Kubernetes ConfigMap's ..data); this
            # module and its caches sit beside the shipped files.
            continue
        code = entry.name.removesuffix(SUFFIX)
        if not entry.name.endswith(SUFFIX) or not re.fullmatch(JURISDICTION_PATTERN, code):
            raise JurisdictionFileError(
                f"{entry}: a jurisdiction file is named by its ISO 3166-1 alpha-2 code, "
                f"e.g. DE{SUFFIX}"
            )
        try:
            data = tomllib.loads(entry.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise JurisdictionFileError(f"{entry}: not valid TOML: {exc}") from exc
        if not data:
            raise JurisdictionFileError(f"{entry}: empty; a jurisdiction needs its rules")
        found[code] = data
    if not found:
        raise JurisdictionFileError(f"{directory}: no jurisdiction files ({SUFFIX})")
    return found


def known_jurisdictions(directory: Path | None = None) -> frozenset[str]:
    """The codes a service acts for: those with a file."""
    return frozenset(load_jurisdictions(directory))
