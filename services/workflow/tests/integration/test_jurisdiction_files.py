"""A jurisdiction added by a file opens cases, with no code changed, against the real broker
and PostgreSQL; one without a file is still dead-lettered (test_rest_inputs)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from decimal import Decimal
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import httpx
import pytest

from collections_kit.auth import dev_headers
from collections_kit.clock import OffsetClock
from collections_kit.runtime import Runtime
from scripts import lending
from tests.support import eventually, migrate, running
from workflow.entrypoints import bootstrap
from workflow.settings import WorkflowSettings

READ = dev_headers(["cases:read"], subject="reader")


@pytest.fixture
def jurisdictions_dir(tmp_path: Path) -> Path:
    """A directory of jurisdictions: the shipped ones and DE."""
    with as_file(files("collections_kit.jurisdictions")) as shipped:
        for path in Path(shipped).glob("*.toml"):
            shutil.copy(path, tmp_path / path.name)
    (tmp_path / "DE.toml").write_text('window = { start = "08:00", end = "20:00" }\n')
    return tmp_path


@pytest.fixture
async def workflow(
    stack: dict[str, str],
    database_url: str,
    topic_prefix: str,
    clock: OffsetClock,
    jurisdictions_dir: Path,
) -> AsyncIterator[Runtime]:
    """The workflow reading ``jurisdictions_dir``."""
    config = WorkflowSettings.model_validate(
        {
            "database_url": database_url,
            "kafka_bootstrap": stack["kafka_bootstrap"],
            "topic_prefix": topic_prefix,
            "environment": "test",
            "jurisdictions_dir": str(jurisdictions_dir),
        }
    )
    await migrate(bootstrap.MIGRATIONS, database_url, config.db_schema)
    async with running(bootstrap.build_runtime(config, clock=clock)) as runtime:
        yield runtime


async def case_of(api: httpx.AsyncClient, loan_id: str) -> dict[str, Any] | None:
    response = await api.get(f"/v1/cases/{loan_id}", headers=READ)
    return response.json() if response.status_code == 200 else None


async def test_a_jurisdiction_with_a_file_opens_its_case(
    api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    await lender.publish(
        lending.overdue(
            "L-germany", Decimal("100.00"), currency="EUR", jurisdiction="DE", tz="Europe/Berlin"
        )
    )
    case = await eventually(lambda: case_of(api, "L-germany"))
    assert case["jurisdiction"] == "DE"
