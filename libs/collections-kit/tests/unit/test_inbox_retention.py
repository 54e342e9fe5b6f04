"""The inbox's retention must outlive every copy of an event that can still come back
(the pruning itself runs against PostgreSQL: tests/integration/test_inbox_claims.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from collections_kit.settings import ServiceSettings
from collections_kit.topics import DLQ_RETENTION_DAYS, DLQ_RETENTION_MS, topic_specs


def test_the_default_outlives_the_dead_letter_topic() -> None:
    assert ServiceSettings().inbox_retention_days > DLQ_RETENTION_DAYS
    longest = max(spec.retention_ms for spec in topic_specs())
    assert longest == DLQ_RETENTION_MS == DLQ_RETENTION_DAYS * 24 * 3600 * 1000


@pytest.mark.parametrize("days", [1, 7, DLQ_RETENTION_DAYS])
def test_a_retention_a_replayed_letter_could_outlive_is_refused(days: int) -> None:
    # A letter replayed from the DLQ after its claim was pruned would take effect twice.
    with pytest.raises(ValidationError, match="inbox_retention_days"):
        ServiceSettings(inbox_retention_days=days)
