"""What the notifier keeps of a loan's balance checks and their answers, in PostgreSQL:
the freshest confirmation whatever order the two topics deliver in, and whether one is on
its way (asked for by the workflow, or by a permit refusal)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit.db import make_engine
from notifier.adapters.permits import PermitRepository
from notifier.domain.permits import NO_CONFIRMATIONS, ConfirmationView, LedgerConfirmation
from notifier.entrypoints import bootstrap
from tests.support import migrate

T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def confirmed(at: datetime, confirmation_id: str) -> LedgerConfirmation:
    return LedgerConfirmation(
        confirmation_id, 5, Decimal("990.000000"), at, at + timedelta(minutes=30)
    )


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await migrate(bootstrap.MIGRATIONS, database_url, "notifier")
    engine = make_engine(database_url, schema="notifier")
    try:
        yield engine
    finally:
        await engine.dispose()


async def view(engine: AsyncEngine) -> ConfirmationView:
    async with engine.connect() as conn:
        return await PermitRepository(conn).confirmations("L1")


async def test_a_check_is_on_its_way_until_answered_and_the_freshest_confirmation_stays(
    engine: AsyncEngine,
) -> None:
    assert await view(engine) == NO_CONFIRMATIONS
    async with engine.begin() as conn:
        await PermitRepository(conn).check_requested("L1", "k1", T0, now=T0)
    assert await view(engine) == ConfirmationView(None, T0)
    fresh = confirmed(T0 + timedelta(seconds=1), "conf-1")
    async with engine.begin() as conn:
        await PermitRepository(conn).check_answered("L1", "k1", fresh, now=T0)
    assert await view(engine) == ConfirmationView(fresh, None)

    # An older confirmation (a republished answer) and a refusal keep the freshest.
    async with engine.begin() as conn:
        repo = PermitRepository(conn)
        await repo.check_answered("L1", "k0", confirmed(T0 - timedelta(minutes=5), "c0"), now=T0)
        await repo.check_answered("L1", "k1", None, now=T0)
    assert (await view(engine)).latest == fresh


async def test_an_answer_read_before_its_request_leaves_nothing_waiting(
    engine: AsyncEngine,
) -> None:
    """The checks and the answers are two topics: either may be read first."""
    async with engine.begin() as conn:
        repo = PermitRepository(conn)
        await repo.check_answered("L1", "k1", confirmed(T0, "conf-1"), now=T0)
        await repo.check_requested("L1", "k1", T0 - timedelta(seconds=1), now=T0)
    assert (await view(engine)).pending_since is None


async def test_a_refusals_request_waits_until_a_later_check_takes_it_over(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await PermitRepository(conn).confirmation_asked("L1", now=T0)
    assert (await view(engine)).pending_since == T0
    # An older check arriving late does not take it over; the workflow's check does.
    async with engine.begin() as conn:
        await PermitRepository(conn).check_requested(
            "L1", "k-old", T0 - timedelta(seconds=5), now=T0
        )
    assert (await view(engine)).pending_since == T0
    async with engine.begin() as conn:
        repo = PermitRepository(conn)
        await repo.check_requested("L1", "k2", T0 + timedelta(seconds=1), now=T0)
        await repo.check_answered("L1", "k2", None, now=T0)  # refused (projection stale)
    assert (await view(engine)).pending_since is None
