"""What the notifier keeps of a loan's balance checks and their answers, in PostgreSQL:
the freshest confirmation whatever order the two topics deliver in, and whether one is on
its way (asked for by the workflow, or by a permit refusal)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit.db import make_engine
from notifier.adapters.permits import PermitRepository
from notifier.domain.permits import (
    NO_CONFIRMATIONS,
    CheckAnswered,
    CheckRequested,
    ConfirmationView,
    LedgerConfirmation,
)
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


# A batch's checks and answers are stored a statement per kind (handlers.batch): whatever
# the order and the ties, that leaves each loan's row as the records one at a time would.
_AT = st.integers(min_value=0, max_value=3).map(lambda s: T0 + timedelta(seconds=s))
_FACT = st.one_of(
    st.tuples(st.just("requested"), st.sampled_from("AB"), st.sampled_from(["k1", "k2"]), _AT),
    st.tuples(st.just("confirmed"), st.sampled_from("AB"), st.sampled_from(["k1", "k2"]), _AT),
    st.tuples(st.just("refused"), st.sampled_from("AB"), st.sampled_from(["k1", "k2"]), _AT),
)
Fact = tuple[str, str, str, datetime]


def _request(prefix: str, fact: Fact) -> CheckRequested:
    _, loan, check, at = fact
    return CheckRequested(prefix + loan, check, at)


def _answer(prefix: str, fact: Fact) -> CheckAnswered:
    kind, loan, check, at = fact
    confirmation = confirmed(at, f"conf-{check}-{at.second}") if kind == "confirmed" else None
    return CheckAnswered(prefix + loan, check, confirmation)


async def _one_at_a_time(repo: PermitRepository, prefix: str, facts: list[Fact]) -> None:
    for fact in facts:
        if fact[0] == "requested":
            r = _request(prefix, fact)
            await repo.check_requested(r.loan_id, r.check_id, r.requested_at, now=T0)
        else:
            a = _answer(prefix, fact)
            await repo.check_answered(a.loan_id, a.check_id, a.confirmation, now=T0)


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    before=st.lists(_FACT, max_size=3),
    asked=st.lists(st.tuples(st.sampled_from("AB"), _AT), max_size=2),
    batch=st.lists(_FACT, min_size=1, max_size=8),
)
async def test_a_batch_of_checks_and_answers_leaves_what_one_at_a_time_leaves(
    engine: AsyncEngine, before: list[Fact], asked: list[tuple[str, datetime]], batch: list[Fact]
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE loan_confirmations"))
        repo = PermitRepository(conn)
        for prefix in ("one:", "run:"):  # the same earlier state under both prefixes
            await _one_at_a_time(repo, prefix, before)
            for loan, at in asked:
                await repo.confirmation_asked(prefix + loan, now=at)
    async with engine.begin() as conn:
        repo = PermitRepository(conn)
        await _one_at_a_time(repo, "one:", batch)
        await repo.checks_requested(
            [_request("run:", f) for f in batch if f[0] == "requested"], now=T0
        )
        await repo.checks_answered(
            [_answer("run:", f) for f in batch if f[0] != "requested"], now=T0
        )
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT * FROM loan_confirmations ORDER BY loan_id"))
        ).mappings()
        by_loan = {row["loan_id"]: dict(row) for row in rows}
    for loan in "AB":
        one, run = by_loan.get("one:" + loan), by_loan.get("run:" + loan)
        assert (one is None) == (run is None)
        if one is not None and run is not None:
            for row in (one, run):
                del row["loan_id"], row["updated_at"]
            assert run == one
