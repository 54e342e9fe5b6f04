"""``derived_id`` is uuid5 under the kit's namespace, spelled out for speed: ids stored and
published before the change must come out the same after it."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from collections_kit.clock import _DERIVED_NS, derived_id


@given(st.text(), st.text())
def test_derived_id_is_uuid5_of_the_cause_and_label(cause_id: str, label: str) -> None:
    assert derived_id(cause_id, label) == str(uuid.uuid5(_DERIVED_NS, f"{cause_id}/{label}"))


def test_a_known_id_is_unchanged() -> None:
    # Pinned: a changed namespace or layout would re-key every derived id in flight.
    assert derived_id("evt-1", "case") == "6713c2da-c6ba-5175-988d-7a306144e32c"
