"""The committed contract must be what the code generates: other teams code against it."""

from __future__ import annotations

import json
from pathlib import Path

from scripts import contracts

ROOT = Path(__file__).resolve().parents[2]


def test_committed_contract_files_match_the_code() -> None:
    rendered = contracts.render()
    stale = [
        path
        for path, text in rendered.items()
        if not (ROOT / "contracts" / path).exists()
        or (ROOT / "contracts" / path).read_text() != text
    ]
    assert not stale, f"run `make contracts`; stale: {stale}"


def test_every_topic_and_message_is_in_the_asyncapi_document() -> None:
    doc = json.loads((ROOT / "contracts" / "asyncapi.json").read_text())
    from collections_kit.contract import MESSAGES
    from collections_kit.topics import Topic

    addresses = {ch["address"] for ch in doc["channels"].values()}
    assert addresses == {t.value for t in Topic}
    assert {m["name"] for m in doc["components"]["messages"].values()} == {
        s.ce_type for s in MESSAGES
    }
    assert doc["asyncapi"].startswith("3.")
