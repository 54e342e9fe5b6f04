"""The documented limits are the code's: a publisher learns them from the docs (the README's
contract line points to docs/security.md, "Hostile input"), not from a refusal (issue 21:
the broker's ~1 MB default is above the consumers' 256 KiB)."""

from __future__ import annotations

import re

from collections_kit.settings import ServiceSettings
from scripts.deploy_check import ROOT


def test_the_readme_tells_publishers_the_consumers_record_limit() -> None:
    readme = " ".join((ROOT / "docs" / "security.md").read_text().split())
    limit = ServiceSettings.model_fields["max_record_bytes"].default
    kib = f"{limit // 1024} KiB"
    assert f"`*_MAX_RECORD_BYTES` ({kib}" in readme
    assert re.search(
        r"broker's own default limit \(`message\.max\.bytes`, about 1 MB\) is "
        r"above it",
        readme,
    )
    assert f"publishers must keep each record under {kib}" in readme
    front = " ".join((ROOT / "README.md").read_text().split())
    assert f"publishers keep each record under {kib}" in front
