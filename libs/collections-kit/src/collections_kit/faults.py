"""Fault injection points for the reliability tests.

Off unless ``COLLECTIONS_FAULT_CRASH_AT`` names a point; then the process dies abruptly
(``os._exit``, no cleanup, like SIGKILL) the ``COLLECTIONS_FAULT_CRASH_AFTER``-th time it
passes that point. This is how tests prove that a crash between the database commit and
the Kafka offset commit duplicates nothing.
"""

from __future__ import annotations

import os
import sys

_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    if os.environ.get("COLLECTIONS_FAULT_CRASH_AT") != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(os.environ.get("COLLECTIONS_FAULT_CRASH_AFTER", "1")):
        sys.stderr.write(f"fault injection: crashing at {name}\n")
        sys.stderr.flush()
        os._exit(137)
