"""Jurisdictions are a directory of files: what every service reads the same way."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from decimal import Decimal
from importlib.resources import as_file, files
from pathlib import Path

import pytest

from collections_kit import contract as c
from collections_kit.jurisdictions import (
    JurisdictionFileError,
    known_jurisdictions,
    load_jurisdictions,
)


def shipped_copy(to: Path) -> Path:
    with as_file(files("collections_kit.jurisdictions")) as shipped:
        for path in Path(shipped).glob("*.toml"):
            shutil.copy(path, to / path.name)
    return to


def test_the_shipped_jurisdictions_are_the_files_beside_the_module() -> None:
    assert known_jurisdictions() == {"CN", "US", "UK"}
    assert load_jurisdictions()["US"]["window"] == {"start": "08:00", "end": "21:00"}


def test_a_jurisdiction_added_is_a_file(tmp_path: Path) -> None:
    shipped_copy(tmp_path)
    (tmp_path / "DE.toml").write_text('window = { start = "08:00", end = "20:00" }\n')
    # A mount's own hidden entries (a Kubernetes ConfigMap's ..data) are not jurisdictions.
    (tmp_path / "..data").mkdir()
    assert known_jurisdictions(tmp_path) == {"CN", "US", "UK", "DE"}
    assert load_jurisdictions(tmp_path)["DE"] == {"window": {"start": "08:00", "end": "20:00"}}


def test_the_contract_admits_what_has_a_file_and_refuses_the_rest(tmp_path: Path) -> None:
    (tmp_path / "DE.toml").write_text('window = { start = "08:00", end = "20:00" }\n')
    admit = c.without_policy(known_jurisdictions(tmp_path))

    def overdue(code: str) -> c.LoanOverdue:
        return c.LoanOverdue(
            loan_id="L1",
            borrower_id="B1",
            currency="EUR",
            amount_overdue=Decimal(1),
            outstanding_balance=Decimal(2),
            days_past_due=1,
            as_of=datetime(2026, 11, 23, 10, tzinfo=UTC),
            borrower_time_zone="Europe/Berlin",
            jurisdiction=code,
        )

    assert admit(overdue("DE")) is None
    assert admit(overdue("CN")) == "jurisdiction CN has no policy"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("de.toml", 'window = { start = "08:00", end = "20:00" }\n', "ISO 3166-1 alpha-2"),
        ("DEU.toml", 'window = { start = "08:00", end = "20:00" }\n', "ISO 3166-1 alpha-2"),
        ("DE.tml", 'window = { start = "08:00", end = "20:00" }\n', "ISO 3166-1 alpha-2"),
        ("DE.toml", "window = {\n", "not valid TOML"),
        ("DE.toml", "", "empty"),
    ],
)
def test_a_file_that_is_not_a_jurisdiction_stops_the_start(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(JurisdictionFileError, match=message) as refused:
        load_jurisdictions(tmp_path)
    assert name in str(refused.value)


def test_a_directory_without_jurisdictions_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(JurisdictionFileError, match="no jurisdiction files"):
        load_jurisdictions(tmp_path)
    with pytest.raises(JurisdictionFileError, match="not a directory"):
        load_jurisdictions(tmp_path / "missing")
