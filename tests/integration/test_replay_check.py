"""The replay check (every case equals the fold of ``decide`` over its journal, and its
placements the fold of ``place`` after it) against a real PostgreSQL, while the workflow
keeps writing: it must compare a case with the journal of the same moment, and say how a
case differs when it does."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from collections_kit.db import make_engine
from collections_kit.outbox import Tx
from scripts.chaos import PLACEMENT_POLICY
from tests.support import migrate, mismatched_replays
from workflow.adapters.placement_file import load_placement_policy
from workflow.app.handlers import Item, Workflow
from workflow.domain import messages as m
from workflow.domain import placement as pl
from workflow.domain.policy import PolicyBook, Stage
from workflow.entrypoints import bootstrap


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await migrate(bootstrap.MIGRATIONS, database_url, "workflow")
    engine = make_engine(database_url, schema="workflow")
    yield engine
    await engine.dispose()


async def apply(
    engine: AsyncEngine, event: m.OverdueReported | m.RepaymentReceived, at: datetime
) -> None:
    """One input through the workflow's one write path, committed."""
    async with engine.begin() as conn:
        tx = Tx(conn=conn, now=at, source="workflow", topic_prefix="")
        await Workflow(PolicyBook()).run_batch(tx, [Item("L-1", event, event.event_id)])


def overdue(at: datetime) -> m.OverdueReported:
    return m.OverdueReported(
        "e-overdue",
        "L-1",
        "B-1",
        "consumer-loan",
        "CNY",
        Decimal("900.00"),
        Decimal("900.00"),
        5,
        at - timedelta(hours=1),
        "Asia/Shanghai",
        "CN",
    )


def repayment(at: datetime) -> m.RepaymentReceived:
    return m.RepaymentReceived("e-repaid", "R-1", Decimal("300.00"), Decimal("600.00"), at)


async def test_a_case_written_between_the_reads_of_cases_and_journals_is_no_mismatch(
    engine: AsyncEngine, database_url: str
) -> None:
    # The chaos run checks while timers still fire (a re-check five minutes after a refused
    # balance check, then its confirmation): a case read before such a write and its journal
    # read after it differed by that write.
    opened_at = datetime.now(UTC)
    await apply(engine, overdue(opened_at), opened_at)
    writer = make_engine(database_url, schema="workflow")
    wrote: list[bool] = []

    def write_once_the_cases_are_read(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "case_inputs" in statement and not wrote:
            wrote.append(True)
            # Inside the checker's own statement (SQLAlchemy runs it in a greenlet): the
            # workflow commits a repayment on another connection right now.
            await_only(
                apply(
                    writer,
                    repayment(opened_at + timedelta(seconds=1)),
                    opened_at + timedelta(seconds=1),
                )
            )

    event.listen(engine.sync_engine, "before_cursor_execute", write_once_the_cases_are_read)
    try:
        assert await mismatched_replays(engine) == []
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", write_once_the_cases_are_read)
        await writer.dispose()
    assert wrote
    assert await mismatched_replays(engine) == []  # and after it, with the repayment


async def test_a_mismatch_names_the_fields_that_differ_with_the_journal_and_stored_row(
    engine: AsyncEngine,
) -> None:
    opened_at = datetime.now(UTC)
    await apply(engine, overdue(opened_at), opened_at)
    async with engine.begin() as conn:  # a write outside the journal
        await conn.execute(text("UPDATE cases SET outstanding = 1, unanswered_contacts = 2"))

    (mismatch,) = await mismatched_replays(engine)
    assert mismatch["loan_id"] == "L-1"
    assert mismatch["fields"] == {
        "outstanding": {"stored": "1.000000", "replayed": "900.00"},
        "unanswered_contacts": {"stored": 2, "replayed": 0},
    }
    assert [row["input_type"] for row in mismatch["journal"]] == ["OverdueReported"]
    assert mismatch["journal"][0]["payload"]["outstanding"] == "900.00"
    assert mismatch["stored"]["outstanding"] == "1.000000"
    assert mismatch["stored"]["case_id"] == mismatch["case_id"]


# One tier, one agency: every warning case of 100.00 or more is placed, at 25%.
PLACEMENTS = pl.PlacementPolicy(
    "placements/replay-check",
    (
        pl.PlacementTier(
            "primary",
            (Stage.WARNING,),
            1,
            Decimal("100.00"),
            None,
            timedelta(days=90),
            (pl.AgencyShare("agency-a", 1, Decimal("0.25")),),
        ),
    ),
)


async def apply_placing(
    engine: AsyncEngine,
    events: list[m.OverdueReported | m.RepaymentReceived | m.RepaymentReversed],
    at: datetime,
) -> None:
    """Inputs through the workflow with agencies, decided as one batch, committed."""
    async with engine.begin() as conn:
        tx = Tx(conn=conn, now=at, source="workflow", topic_prefix="")
        await Workflow(PolicyBook(), placements=PLACEMENTS).run_batch(
            tx, [Item("L-1", e, e.event_id) for e in events]
        )


def reversal(at: datetime) -> m.RepaymentReversed:
    return m.RepaymentReversed("e-bounced", "R-1", Decimal("300.00"), Decimal("900.00"), at)


async def test_a_placement_that_differs_from_its_replay_is_caught(engine: AsyncEngine) -> None:
    at = datetime.now(UTC)
    await apply_placing(engine, [overdue(at)], at)
    await apply_placing(engine, [repayment(at)], at + timedelta(seconds=1))
    assert await mismatched_replays(engine, PLACEMENTS) == []

    # Checked as if the workflow ran without agencies: the stored placement is unexplained.
    (unexplained,) = await mismatched_replays(engine)
    assert set(unexplained["fields"]) == {"placements", "placement_commissions"}
    assert unexplained["fields"]["placements"]["replayed"] == []

    # A placement decision that is not its inputs' (another agency, another commission).
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE placements SET agency = 'agency-b'"))
        await conn.execute(text("UPDATE placement_commissions SET commission = 0"))
    (mismatch,) = await mismatched_replays(engine, PLACEMENTS)
    assert mismatch["loan_id"] == "L-1"
    assert set(mismatch["fields"]) == {"placements", "placement_commissions"}
    (stored,) = mismatch["fields"]["placements"]["stored"]
    (replayed,) = mismatch["fields"]["placements"]["replayed"]
    assert (stored["agency"], replayed["agency"]) == ("agency-b", "agency-a")
    assert stored["placement_id"] == replayed["placement_id"]
    commissions = mismatch["fields"]["placement_commissions"]
    assert [c["commission"] for c in commissions["replayed"]] == ["75.00"]
    assert [c["commission"] for c in commissions["stored"]] == ["0.000000"]


async def test_a_repayment_and_its_reversal_in_one_batch_replay_as_stored(
    engine: AsyncEngine,
) -> None:
    # A backlog read at once (a replica's restart): the reversal finds the commission its
    # repayment accrued earlier in the same batch, and takes it back as the replay does.
    at = datetime.now(UTC)
    await apply_placing(engine, [overdue(at)], at)
    later = at + timedelta(seconds=1)
    await apply_placing(engine, [repayment(later), reversal(later)], later)
    assert await mismatched_replays(engine, PLACEMENTS) == []
    async with engine.connect() as conn:
        placed = (await conn.execute(text("SELECT collected, commission FROM placements"))).one()
        rows = (
            await conn.execute(
                text("SELECT repayment_id, commission FROM placement_commissions ORDER BY 1")
            )
        ).all()
    assert tuple(placed) == (Decimal(0), Decimal(0))
    assert [(r, c) for r, c in rows] == [("R-1", Decimal("75")), ("R-1/reversed", Decimal("-75"))]


async def test_the_next_batch_continues_from_the_newest_of_placements_made_at_one_instant(
    engine: AsyncEngine,
) -> None:
    # Placed, held and resumed in one batch: two placements with the same times. After the
    # repayment and its bounce the case is placed anew (a new period), not resumed from the
    # held one, which times alone could not tell from the newest (seed 20 of the test below
    # found it).
    at = datetime.now(UTC)
    hold = m.RequestHold("h-1", "hardship", "lost job", "agent")
    resume = m.RequestResume("u-1", "back at work", "agent")
    async with engine.begin() as conn:
        tx = Tx(conn=conn, now=at, source="workflow", topic_prefix="")
        await Workflow(PolicyBook(), placements=PLACEMENTS).run_batch(
            tx,
            [
                Item("L-1", overdue(at), "e-overdue"),
                Item("L-1", hold, "h-1"),
                Item("L-1", resume, "u-1"),
            ],
        )
    paid = m.RepaymentReceived("e-paid", "R-2", Decimal("900.00"), Decimal("0.00"), at)
    bounced = m.RepaymentReversed("e-bounced", "R-2", Decimal("900.00"), Decimal("900.00"), at)
    await apply_placing(engine, [paid], at + timedelta(seconds=1))
    await apply_placing(engine, [bounced], at + timedelta(seconds=2))
    assert await mismatched_replays(engine, PLACEMENTS) == []
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT until, end_reason FROM placements ORDER BY seq"))
        ).all()
    assert [reason for _, reason in rows] == ["hold", "repaid", None]
    assert rows[-1][0] == at + timedelta(seconds=2) + timedelta(days=90)


HOLDS = (m.RequestHold, m.RequestResume)


def chaos_like(loans: int, rng: random.Random, t0: datetime) -> list[list[tuple[str, Any]]]:
    """Each loan's inputs in order, as the chaos run sends them: opened, formal notice
    (placed), a hold and its end, a full or partial repayment, sometimes bounced."""
    out = []
    for i in range(loans):
        loan, owed = f"L-{i:03d}", Decimal(rng.randrange(20_000, 2_000_000)) / 100
        steps: list[tuple[str, Any]] = [
            (loan, _overdue(loan, owed, 5, t0)),
            (loan, _overdue(loan, owed, 35, t0 + timedelta(minutes=30))),
        ]
        if rng.random() < 0.3:
            steps.append((loan, m.RequestHold(f"h-{loan}", "hardship", "lost job", "agent")))
            if rng.random() < 0.7:
                steps.append((loan, m.RequestResume(f"u-{loan}", "back at work", "agent")))
        paid = owed if rng.random() < 0.5 else (owed * Decimal("0.3")).quantize(Decimal("0.01"))
        if rng.random() < 0.8:
            steps.append(
                (loan, m.RepaymentReceived(f"r-{loan}", f"R-{loan}", paid, owed - paid, t0))
            )
            if rng.random() < 0.4:
                steps.append((loan, m.RepaymentReversed(f"v-{loan}", f"R-{loan}", paid, owed, t0)))
        out.append(steps)
    return out


def _overdue(loan: str, owed: Decimal, dpd: int, as_of: datetime) -> m.OverdueReported:
    return m.OverdueReported(
        f"o{dpd}-{loan}",
        loan,
        f"B-{loan}",
        "consumer-loan",
        "CNY",
        (owed / 10).quantize(Decimal("0.01")),
        owed,
        dpd,
        as_of,
        "Asia/Shanghai",
        "CN",
    )


@pytest.fixture
def chaos_placements(tmp_path: Path) -> pl.PlacementPolicy:
    """The placement policy the chaos run gives the workflow."""
    policy = tmp_path / "placements.toml"
    policy.write_text(PLACEMENT_POLICY)
    return load_placement_policy(policy)


@pytest.mark.parametrize("seed", [1, 2, 20])
async def test_placements_replay_as_stored_however_inputs_are_batched(
    engine: AsyncEngine, seed: int, chaos_placements: pl.PlacementPolicy
) -> None:
    """The chaos run's workload through the one write path, its inputs cut into batches at
    random (a loan's inputs in order, several loans per batch, a repayment and its reversal
    sometimes together): every case and its placements equal the replay of its journal,
    which decides one input at a time."""
    rng = random.Random(seed)
    t0 = datetime.now(UTC) - timedelta(hours=2)
    queues = chaos_like(30, rng, t0)
    at = t0
    while any(queues):
        batch: list[Item] = []
        for _ in range(rng.randint(1, 12)):
            live = [q for q in queues if q]
            if not live:
                break
            loan, event = rng.choice(live).pop(0)
            cause = event.request_id if isinstance(event, HOLDS) else event.event_id
            batch.append(Item(loan, event, cause))
        at += timedelta(seconds=1)
        async with engine.begin() as conn:
            tx = Tx(conn=conn, now=at, source="workflow", topic_prefix="")
            await Workflow(PolicyBook(), placements=chaos_placements).run_batch(tx, batch)
    assert await mismatched_replays(engine, chaos_placements) == []
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT coalesce(end_reason, 'running'), count(*) FROM placements GROUP BY 1")
        )
        reasons: dict[str, int] = {reason: n for reason, n in rows}
    # The workload reaches placements, recalls of several kinds and resumptions.
    assert reasons.get("repaid", 0) + reasons.get("stage_changed", 0) > 0, reasons
    assert reasons.get("hold", 0) > 0, reasons
