"""Ledger-sync's guarantees against the real broker and PostgreSQL.

Ledger-sync's runtime runs in-process (its real consumer loop, relay, resolver of waiting
checks and reconciler); the lender stand-in publishes to Kafka; the ledger's HTTP API is
the double from ``deploy/dev/ledger_double.py`` on a loopback port, driven through its admin
endpoints. Where a test shows an effect on contact, the workflow runs in-process as well.

(One module: a conftest.py here would collide with the root one under mypy, and pytest's
importlib mode cannot import a sibling helper module.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.clock import Clock, OffsetClock
from collections_kit.envelope import Envelope
from collections_kit.outbox import Tx
from collections_kit.runtime import Runtime
from collections_kit.topics import Topic
from deploy.dev.ledger_double import LedgerDoubleServer
from ledger_sync.entrypoints import bootstrap
from ledger_sync.settings import LedgerSyncSettings
from scripts import lending
from scripts.infra import producer
from tests.support import eventually, migrate, poll_of, read_topic, running
from workflow.adapters.tables import cases
from workflow.entrypoints import bootstrap as workflow_boot
from workflow.settings import WorkflowSettings


@pytest.fixture
def ledger() -> Iterator[LedgerDoubleServer]:
    server = LedgerDoubleServer().start()
    try:
        yield server
    finally:
        server.stop()


def posting(
    loan_id: str, sequence: int, amount: str, kind: str = "fee", *, repayment_id: str | None = None
) -> c.LedgerPostingBooked:
    return c.LedgerPostingBooked(
        posting_id=f"{loan_id}-p{sequence}",
        loan_id=loan_id,
        sequence=sequence,
        kind=kind,
        currency="CNY",
        amount=Decimal(amount),
        booked_at=datetime.now(UTC),
        repayment_id=repayment_id,
    )


@dataclass
class Harness:
    stack: dict[str, str]
    database_url: str
    prefix: str
    lender: lending.Lender
    ledger: LedgerDoubleServer

    def settings(self, **overrides: Any) -> LedgerSyncSettings:
        return LedgerSyncSettings.model_validate(
            {
                "database_url": self.database_url,
                "kafka_bootstrap": self.stack["kafka_bootstrap"],
                "topic_prefix": self.prefix,
                "ledger_api_url": self.ledger.base_url,
                # Tests would otherwise wait 15 minutes for a pass.
                "reconciliation_interval_s": 0,
                "ledger_api_backoff_s": 0.02,
                "ledger_api_breaker_reset_s": 0.5,
                **overrides,
            }
        )

    async def runtime(self, clock: Clock | None = None, **overrides: Any) -> Runtime:
        config = self.settings(**overrides)
        await migrate(bootstrap.MIGRATIONS, self.database_url, config.db_schema)
        return bootstrap.build_runtime(config, clock=clock)

    async def book(
        self, p: c.LedgerPostingBooked, *, feed: bool = True, ledger: bool = True
    ) -> None:
        """The ledger books ``p``; ``feed`` says whether its event reaches Kafka."""
        if ledger:
            async with httpx.AsyncClient(base_url=self.ledger.base_url) as http:
                body = p.model_dump(mode="json", exclude={"loan_id"})
                r = await http.post(f"/admin/loans/{p.loan_id}/postings", json=body)
                r.raise_for_status()
        if feed:
            await self.lender.publish(p)

    async def ledger_up(self, up: bool) -> None:
        async with httpx.AsyncClient(base_url=self.ledger.base_url) as http:
            (await http.put("/admin/availability", json={"up": up})).raise_for_status()

    async def check(
        self,
        loan_id: str,
        expected: str,
        *,
        check_id: str | None = None,
        event_id: str | None = None,
    ) -> str:
        """A balance check, published the way the workflow publishes one."""
        check_id = check_id or f"chk-{uuid.uuid4().hex[:10]}"
        await self.lender.publish(
            c.BalanceCheckRequested(
                check_id=check_id,
                loan_id=loan_id,
                currency="CNY",
                expected_outstanding=Decimal(expected),
                requested_at=datetime.now(UTC),
            ),
            event_id=event_id,
        )
        return check_id

    async def confirmations_topic(self) -> list[Envelope]:
        return [
            e
            for e in await read_topic(
                self.stack["kafka_bootstrap"], self.prefix + Topic.BALANCE_CONFIRMATIONS.value
            )
            if isinstance(e, Envelope)
        ]

    async def answers(self, *check_ids: str) -> dict[str, list[Envelope]]:
        """Every answer on the wire per check id, once each has at least one."""
        found: dict[str, list[Envelope]] = {k: [] for k in check_ids}
        for e in await self.confirmations_topic():
            if (
                isinstance(e.data, c.BalanceConfirmed | c.BalanceRefused)
                and e.data.check_id in found
            ):
                found[e.data.check_id].append(e)
        return found if all(found.values()) else {}

    async def answer(self, check_id: str) -> c.BalanceConfirmed | c.BalanceRefused:
        found = await eventually(lambda: self.answers(check_id))
        data = found[check_id][0].data
        assert isinstance(data, c.BalanceConfirmed | c.BalanceRefused)
        return data

    async def corrections(self, loan_id: str) -> list[c.BalanceCorrected]:
        return [
            e.data
            for e in await self.confirmations_topic()
            if isinstance(e.data, c.BalanceCorrected) and e.data.loan_id == loan_id
        ]


@pytest.fixture
async def harness(
    stack: dict[str, str], database_url: str, topic_prefix: str, ledger: LedgerDoubleServer
) -> AsyncIterator[Harness]:
    kafka = await producer(stack["kafka_bootstrap"])
    try:
        yield Harness(
            stack, database_url, topic_prefix, lending.Lender(kafka, topic_prefix), ledger
        )
    finally:
        await kafka.stop()


async def rest(runtime: Runtime, path: str) -> httpx.Response:
    """Ask the service's own REST API, in-process."""
    app = bootstrap.create_app(runtime, manage_runtime=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://ledger-sync",
        headers=dev_headers(["cases:read", "admin"]),
    ) as http:
        return await http.get(path)


async def scalar(runtime: Runtime, sql: str, **params: Any) -> Any:
    async with runtime.engine.connect() as conn:
        return await conn.scalar(text(sql), params)


async def projected(runtime: Runtime, loan_id: str, watermark: int) -> bool:
    return bool(
        await scalar(
            runtime,
            "SELECT count(*) FROM loan_balances WHERE loan_id = :l AND watermark >= :w",
            l=loan_id,
            w=watermark,
        )
    )


def workflow_settings(h: Harness) -> WorkflowSettings:
    return WorkflowSettings.model_validate(
        {
            "database_url": h.database_url,
            "kafka_bootstrap": h.stack["kafka_bootstrap"],
            "topic_prefix": h.prefix,
        }
    )


async def with_workflow(h: Harness) -> Runtime:
    config = workflow_settings(h)
    await migrate(workflow_boot.MIGRATIONS, h.database_url, config.db_schema)
    return workflow_boot.build_runtime(config)


async def contact_commands(h: Harness, loan_id: str) -> list[c.ContactCommand]:
    return [
        e.data
        for e in await read_topic(
            h.stack["kafka_bootstrap"], h.prefix + Topic.CONTACT_COMMANDS.value
        )
        if isinstance(e, Envelope)
        and isinstance(e.data, c.ContactCommand)
        and e.data.loan_id == loan_id
    ]


async def loan_answers(h: Harness, loan_id: str) -> list[c.BalanceConfirmed | c.BalanceRefused]:
    return [
        e.data
        for e in await h.confirmations_topic()
        if isinstance(e.data, c.BalanceConfirmed | c.BalanceRefused) and e.data.loan_id == loan_id
    ]


# --- Must show: a payment in flight suppresses contact ------------------------------------


async def test_a_payment_in_flight_suppresses_contact(harness: Harness) -> None:
    async with (
        running(await harness.runtime(projection_max_age_s=3600)) as ls,
        running(await with_workflow(harness)),
    ):
        await harness.book(posting("L-fly", 1, "1000.00", "disbursement"))
        await eventually(lambda: projected(ls, "L-fly", 1))
        # The borrower paid; the ledger has not booked it yet.
        await harness.lender.publish(
            lending.repayment("L-fly", Decimal("999.50"), Decimal("0.50"), repayment_id="R-fly")
        )
        await eventually(
            lambda: scalar(ls, "SELECT count(*) FROM repayments WHERE repayment_id = 'R-fly'")
        )
        # The lending system's overdue feed lags behind the payment: it reports the full debt.
        await harness.lender.publish(lending.overdue("L-fly", Decimal("1000.00")))

        answers = await eventually(lambda: loan_answers(harness, "L-fly"))
        await asyncio.sleep(1.5)  # every check has been answered, any wrong command sent
        answers = await loan_answers(harness, "L-fly")
        commands = await contact_commands(harness, "L-fly")
        corrections = await harness.corrections("L-fly")
        view = (await rest(ls, "/v1/balances/L-fly")).json()

    assert commands == []
    assert {(type(a), getattr(a, "reason", None)) for a in answers} == {
        (c.BalanceRefused, "nothing_owed")
    }
    assert {(k.kind, k.ledger_outstanding) for k in corrections} == {
        ("nothing_owed", Decimal("0.50"))
    }
    assert (Decimal(view["money_in_flight"]), Decimal(view["outstanding"])) == (
        Decimal("999.50"),
        Decimal("0.50"),
    )


# --- Must show: repeated checks are answered consistently and idempotently -----------------


async def test_repeated_checks_for_one_loan_are_answered_consistently_and_idempotently(
    harness: Harness,
) -> None:
    async with running(await harness.runtime()) as ls:
        await harness.book(posting("L-rep", 1, "1000.00", "disbursement"))
        await harness.book(posting("L-rep", 2, "12.34"))
        await eventually(lambda: projected(ls, "L-rep", 2))
        k1 = await harness.check("L-rep", "1012.34", event_id="evt-k1")
        await harness.check("L-rep", "1012.34", check_id=k1, event_id="evt-k1")  # redelivered
        await harness.check("L-rep", "1012.34", check_id=k1)  # the same check asked again
        k2 = await harness.check("L-rep", "1012.34")
        k3 = await harness.check("L-rep", "900.00")  # the workflow's view is behind
        # A loan only the ledger's API knows: its checks wait for the API, then are answered
        # in order from the same repaired projection.
        await harness.book(posting("L-api", 1, "500.00", "disbursement"), feed=False)
        await harness.book(posting("L-api", 2, "25.00"), feed=False)
        q1 = await harness.check("L-api", "525.00")
        q2 = await harness.check("L-api", "525.00")
        await harness.check("L-api", "525.00", check_id=q1)

        await eventually(lambda: harness.answers(k1, k2, k3, q1, q2))
        await asyncio.sleep(1.5)  # repeated answers, if any, are on the wire by now
        found = await harness.answers(k1, k2, k3, q1, q2)
        stored = await scalar(ls, "SELECT count(*) FROM balance_answers")
        waiting = await scalar(ls, "SELECT count(*) FROM pending_checks")
        view = (await rest(ls, "/v1/balances/L-api")).json()

    for check_id in (k1, q1):
        copies = found[check_id]
        assert len({e.id for e in copies}) == 1, "one answer per check, however often asked"
        assert len({e.data.model_dump_json() for e in copies}) == 1
    answers = {k: found[k][0].data for k in (k1, k2, k3, q1, q2)}
    assert {k: type(a) for k, a in answers.items()} == dict.fromkeys(answers, c.BalanceConfirmed)
    confirmed = {k: a for k, a in answers.items() if isinstance(a, c.BalanceConfirmed)}
    assert {
        (a.confirmed_outstanding, a.ledger_watermark)
        for k, a in confirmed.items()
        if k in (k1, k2, k3)
    } == {(Decimal("1012.34"), 2)}
    assert {
        (a.confirmed_outstanding, a.ledger_watermark) for k, a in confirmed.items() if k in (q1, q2)
    } == {(Decimal("525.00"), 2)}
    assert len({a.confirmation_id for a in confirmed.values()}) == 5
    # Beyond tolerance: the ledger's amount is confirmed, next to what the workflow expected.
    assert confirmed[k3].expected_outstanding == Decimal("900.00")
    assert stored == 5
    assert waiting == 0
    assert view["fresh"] is True
    assert view["verified_at"] is not None


async def test_redelivered_checks_and_case_events_change_neither_the_case_nor_its_figure(
    harness: Harness,
) -> None:
    """The collections side's figure of a loan is its newest answer's (0008: no row of its
    own per check): a check redelivered or asked again, and a case opening redelivered,
    leave one open case, one stored answer and the same figure."""
    opened = case_opened("L-once")
    async with running(await harness.runtime()) as ls:
        await harness.book(posting("L-once", 1, "700.00", "disbursement"))
        await eventually(lambda: projected(ls, "L-once", 1))
        await harness.lender.publish(opened, event_id="evt-open-once")
        k = await harness.check("L-once", "690.00", event_id="evt-chk-once")
        await harness.answer(k)

        async def state() -> tuple[Any, ...]:
            async with ls.engine.connect() as conn:
                case = (
                    await conn.execute(
                        text("SELECT case_id, opened_at FROM open_cases WHERE loan_id = 'L-once'")
                    )
                ).all()
                figure = (
                    await conn.execute(
                        text(
                            "SELECT currency, outstanding, source, updated_at "
                            "FROM collections_views WHERE loan_id = 'L-once'"
                        )
                    )
                ).all()
                stored = await conn.scalar(
                    text("SELECT count(*) FROM balance_answers WHERE loan_id = 'L-once'")
                )
            return case, figure, stored

        first = await state()  # the answer is on the wire: its transaction committed
        await harness.lender.publish(opened, event_id="evt-open-once")  # redelivered
        await harness.check("L-once", "690.00", check_id=k, event_id="evt-chk-once")
        await harness.check("L-once", "690.00", check_id=k)  # asked again: republished

        async def republished() -> bool:
            return len((await harness.answers(k)).get(k, [])) >= 2

        await eventually(republished)
        await asyncio.sleep(1.5)  # the redelivered opening, if it were applied, is by now
        later = await state()
        copies = (await harness.answers(k))[k]

    case, figure, stored = first
    assert [row.case_id for row in case] == ["case-L-once"]
    assert [(f.currency, f.outstanding, f.source) for f in figure] == [
        ("CNY", Decimal("700.00"), "confirmation")
    ]
    assert stored == 1
    assert later == first
    assert len({e.id for e in copies}) == 1, "one answer, however often asked"


# --- Must show: stale projection + ledger API down -> no confirmation; recovers ------------


async def test_a_stale_projection_with_the_ledger_api_down_is_never_confirmed_and_recovers(
    harness: Harness,
) -> None:
    clock = OffsetClock()
    runtime = await harness.runtime(clock, projection_max_age_s=60, ledger_api_attempts=2)
    async with running(runtime) as ls:
        await harness.book(posting("L-old", 1, "1000.00", "disbursement"))
        await eventually(lambda: projected(ls, "L-old", 1))
        clock.advance(timedelta(minutes=5))  # quiet for longer than the maximum age
        # Meanwhile the ledger booked interest whose event has not reached us.
        await harness.book(posting("L-old", 2, "40.00", "interest"), feed=False)

        await harness.ledger_up(False)  # 503
        s1 = await harness.check("L-old", "1040.00")
        first = await harness.answer(s1)
        stale_view = (await rest(ls, "/v1/balances/L-old")).json()
        harness.ledger.stop()  # a closed port: as down as a 503
        s2 = await harness.check("L-old", "1040.00")
        second = await harness.answer(s2)

        harness.ledger.start()
        await harness.ledger_up(True)
        await asyncio.sleep(0.6)  # the breaker's reset time
        s3 = await harness.check("L-old", "1040.00")  # the workflow asks again later
        third = await harness.answer(s3)
        fresh_view = (await rest(ls, "/v1/balances/L-old")).json()
        await asyncio.sleep(1.0)
        all_answers = await harness.answers(s1, s2, s3)

    for refused in (first, second):
        assert isinstance(refused, c.BalanceRefused)
        assert refused.reason == "projection_stale"
        assert "ledger API unavailable" in refused.detail
        assert refused.ledger_watermark == 1
    assert stale_view["fresh"] is False
    assert stale_view["stale_reason"] == "aged"
    assert not any(
        isinstance(e.data, c.BalanceConfirmed) for e in all_answers[s1] + all_answers[s2]
    ), "never confirmed on stale data"
    assert isinstance(third, c.BalanceConfirmed)
    assert (third.confirmed_outstanding, third.ledger_watermark) == (Decimal("1040.00"), 2)
    assert fresh_view["fresh"] is True
    assert fresh_view["ledger_watermark"] == 2
    assert fresh_view["verified_at"] is not None


# --- Must show: a sequence gap blocks confirmation and is repaired by the API --------------


async def test_a_sequence_gap_blocks_confirmation_until_the_ledger_api_repairs_it(
    harness: Harness,
) -> None:
    async with running(await harness.runtime()) as ls:
        await harness.book(posting("L-gap", 1, "1000.00", "disbursement"))
        # The repayment's posting never reaches the feed; the repayment itself was seen.
        await harness.book(
            posting("L-gap", 2, "-400.00", "repayment", repayment_id="R-gap"), feed=False
        )
        await harness.book(posting("L-gap", 3, "30.00"))
        await harness.lender.publish(
            lending.repayment("L-gap", Decimal("400.00"), Decimal("600.00"), repayment_id="R-gap")
        )
        await eventually(
            lambda: scalar(ls, "SELECT count(*) FROM buffered_postings WHERE loan_id = 'L-gap'")
        )
        await eventually(
            lambda: scalar(ls, "SELECT count(*) FROM repayments WHERE repayment_id = 'R-gap'")
        )

        await harness.ledger_up(False)
        blocked = await harness.answer(await harness.check("L-gap", "630.00"))
        gap_view = (await rest(ls, "/v1/balances/L-gap")).json()

        await harness.ledger_up(True)
        repaired = await harness.answer(await harness.check("L-gap", "630.00"))
        view = (await rest(ls, "/v1/balances/L-gap")).json()

    assert isinstance(blocked, c.BalanceRefused)
    assert blocked.reason == "projection_stale"
    assert "after sequence 1 are missing" in blocked.detail
    assert gap_view["has_gap"] is True
    assert gap_view["stale_reason"] == "gap"
    assert isinstance(repaired, c.BalanceConfirmed)
    # 630, not 230: the repayment the repair booked no longer counts as money in flight.
    assert (repaired.confirmed_outstanding, repaired.ledger_watermark) == (Decimal("630.00"), 3)
    assert view["has_gap"] is False
    assert Decimal(view["money_in_flight"]) == 0
    assert view["ledger_watermark"] == 3


async def test_a_loan_the_ledger_does_not_know_is_refused_as_unknown(harness: Harness) -> None:
    async with running(await harness.runtime()):
        answer = await harness.answer(await harness.check("L-nobody", "10.00"))
    assert isinstance(answer, c.BalanceRefused)
    assert answer.reason == "unknown_loan"


# --- Must show: reconciliation closes a case the ledger shows as paid ----------------------


async def test_reconciliation_closes_a_case_the_ledger_shows_as_paid(harness: Harness) -> None:
    async with (
        running(await harness.runtime(reconciliation_interval_s=1)) as ls,
        running(await with_workflow(harness)) as wf,
    ):
        await harness.book(posting("L-rec", 1, "800.00", "disbursement"))
        await eventually(lambda: projected(ls, "L-rec", 1))
        await harness.lender.publish(lending.overdue("L-rec", Decimal("800.00")))
        await eventually(
            lambda: scalar(ls, "SELECT count(*) FROM open_cases WHERE loan_id = 'L-rec'")
        )
        await eventually(lambda: loan_answers(harness, "L-rec"))
        # Paid at the bank's counter: the ledger books it, but the lending system's repayment
        # event never reaches collections. Only reconciliation can notice.
        await harness.book(posting("L-rec", 2, "-800.00", "repayment", repayment_id="R-rec"))

        corrections = await eventually(lambda: harness.corrections("L-rec"))
        finding = await eventually(lambda: _published_finding(ls, "L-rec"))
        await eventually(lambda: _case_closed(wf, "L-rec"))
        await eventually(lambda: _no_open_case(ls, "L-rec"))  # the CaseClosed came back
        report = await eventually(lambda: _completed_run(ls))
        found_by = await _run_that_found(ls, "L-rec")
        await asyncio.sleep(2.5)  # two more passes: the closed case is not corrected again
        later = await harness.corrections("L-rec")

    assert [(k.kind, k.ledger_outstanding, k.ledger_watermark) for k in corrections] == [
        ("nothing_owed", Decimal("0"), 2)
    ]
    assert finding["kind"] == "nothing_owed"
    assert finding["event_id"]
    assert report["status"] == "completed"
    # The pass that found it paid looked at the one open case and counted what it found.
    assert found_by["status"] == "completed"
    assert found_by["examined"] == 1
    assert found_by["counts"]["nothing_owed"] == 1
    assert len(later) == len(corrections)


async def _published_finding(ls: Runtime, loan_id: str) -> dict[str, Any] | None:
    async with ls.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT kind, event_id FROM reconciliation_findings "
                    "WHERE loan_id = :l AND published"
                ),
                {"l": loan_id},
            )
        ).first()
    return dict(row._mapping) if row else None


async def _case_closed(wf: Runtime, loan_id: str) -> bool:
    async with wf.engine.connect() as conn:
        status = await conn.scalar(select(cases.c.status).where(cases.c.loan_id == loan_id))
    return status == "closed"


async def _no_open_case(ls: Runtime, loan_id: str) -> bool:
    return (
        int(await scalar(ls, "SELECT count(*) FROM open_cases WHERE loan_id = :l", l=loan_id)) == 0
    )


async def _run_that_found(ls: Runtime, loan_id: str) -> dict[str, Any]:
    """The first reconciliation run that found the loan paid: status, examined, counts."""
    async with ls.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT r.status, r.examined, r.counts FROM reconciliation_runs r "
                    "JOIN reconciliation_findings f ON f.run_id = r.run_id "
                    "WHERE f.loan_id = :l AND f.kind = 'nothing_owed' "
                    "ORDER BY r.started_at LIMIT 1"
                ),
                {"l": loan_id},
            )
        ).one()
    return dict(row._mapping)


async def _completed_run(ls: Runtime) -> dict[str, Any] | None:
    response = await rest(ls, "/v1/reconciliation/runs/latest")
    if response.status_code != 200 or response.json()["status"] != "completed":
        return None
    body: dict[str, Any] = response.json()
    return body


# --- reconciliation: drift, stale data, one pass at a time ---------------------------------


def case_opened(loan_id: str) -> c.CaseOpened:
    """Announced the way the workflow announces a new case."""
    return c.CaseOpened(
        case_id=f"case-{loan_id}",
        loan_id=loan_id,
        borrower_id=f"B-{loan_id}",
        stage="warning",
        policy_version="test",
        opened_at=datetime.now(UTC),
    )


async def test_reconciliation_corrects_drift_and_never_corrects_on_stale_data(
    harness: Harness,
) -> None:
    async with running(
        await harness.runtime(reconciliation_interval_s=1, ledger_api_attempts=1)
    ) as ls:
        await harness.ledger_up(False)
        for loan_id in ("L-drift", "L-blind"):
            await harness.lender.publish(case_opened(loan_id))
        await harness.book(posting("L-drift", 1, "1000.00", "disbursement"))
        await eventually(lambda: projected(ls, "L-drift", 1))
        confirmed = await harness.answer(await harness.check("L-drift", "1000.00"))
        await harness.book(posting("L-drift", 2, "250.00", "fee"))  # the case never hears
        # L-blind: its repayment's posting is lost on the feed, and the ledger is down.
        await harness.book(posting("L-blind", 1, "500.00", "disbursement"))
        await harness.book(posting("L-blind", 2, "-500.00", "repayment"), feed=False)
        await harness.book(posting("L-blind", 3, "0.40"))  # a fee within tolerance

        drift = await eventually(lambda: harness.corrections("L-drift"))
        report = await eventually(lambda: _run_with(ls, "L-blind"))
        await asyncio.sleep(2.5)  # more passes: the drift is not corrected twice
        drift_later = await harness.corrections("L-drift")
        blind_while_down = await harness.corrections("L-blind")

        await harness.ledger_up(True)  # the next pass repairs L-blind and sees it paid
        blind = await eventually(lambda: harness.corrections("L-blind"))

    assert isinstance(confirmed, c.BalanceConfirmed)
    assert [(k.kind, k.ledger_outstanding, k.ledger_watermark) for k in drift] == [
        ("drift", Decimal("1250.00"), 2)
    ]
    assert len(drift_later) == 1
    skipped = next(f for f in report["findings"] if f["loan_id"] == "L-blind")
    assert skipped["kind"] == "skipped"
    assert skipped["published"] is False
    assert "ledger API unavailable" in skipped["detail"]
    assert report["counts"]["skipped"] >= 1
    assert blind_while_down == []
    assert [(k.kind, k.ledger_outstanding) for k in blind] == [("nothing_owed", Decimal("0.40"))]


async def _run_with(ls: Runtime, loan_id: str) -> dict[str, Any] | None:
    run = await _completed_run(ls)
    if run is None or not any(f["loan_id"] == loan_id for f in run["findings"]):
        return None
    return run


async def test_only_one_replica_runs_a_reconciliation_pass_at_a_time(harness: Harness) -> None:
    # Slow ledger, stale loans: a pass takes long enough for the replicas to overlap.
    async with httpx.AsyncClient(base_url=harness.ledger.base_url) as http:
        await http.put("/admin/availability", json={"up": True, "delay_s": 0.5})
    replicas = [await harness.runtime(reconciliation_interval_s=3600) for _ in range(2)]
    async with running(replicas[0]) as one, running(replicas[1]) as two:
        async with one.engine.begin() as conn:
            for n in range(3):
                await conn.execute(
                    text(
                        "INSERT INTO open_cases (loan_id, case_id, opened_at) "
                        "VALUES (:l, :c, now())"
                    ),
                    {"l": f"L-one-{n}", "c": f"case-{n}"},
                )
        runs = await asyncio.gather(
            one.state["reconciler"].run_pass(), two.state["reconciler"].run_pass()
        )
        again = await two.state["reconciler"].run_pass()
        count = await scalar(one, "SELECT count(*) FROM reconciliation_runs")
    assert sum(r is not None for r in runs) == 1
    assert again is None, "a pass ran less than an interval ago"
    assert count == 1


async def test_case_events_in_one_batch_end_as_one_at_a_time_would(harness: Harness) -> None:
    """Opened, opened again with a new case, closed: in one poll (a run of openings is
    written in one statement), applied in their order."""
    first, second = case_opened("L-batch-1"), case_opened("L-batch-2")
    again = first.model_copy(update={"case_id": "case-L-batch-1-reopened"})
    closed = c.CaseClosed(
        case_id=second.case_id,
        loan_id="L-batch-2",
        outcome="repaid",
        cause="repaid in full",
        closed_at=datetime.now(UTC),
    )
    for message in (first, second, again, closed):  # published before the consumer starts:
        await harness.lender.publish(message)  # one poll, one batch
    async with running(await harness.runtime()) as ls:

        async def settled() -> bool:
            cases = await scalar(
                ls,
                "SELECT string_agg(loan_id || '=' || case_id, ',' "
                "ORDER BY loan_id) FROM open_cases "
                "WHERE loan_id LIKE 'L-batch-%'",
            )
            return bool(cases == "L-batch-1=case-L-batch-1-reopened")

        await eventually(settled)


async def test_checks_answered_together_in_one_poll_match_one_at_a_time(harness: Harness) -> None:
    """Published before ledger-sync starts, so one poll holds them all: checks of several
    loans are read and confirmed together, a second check of a loan in the run and a check
    asked again still get exactly the answers one at a time would give."""
    async with running(await harness.runtime()) as ls:
        for loan, amount in (("L-run-1", "300.00"), ("L-run-2", "400.00")):
            await harness.book(posting(loan, 1, amount, "disbursement"))
        await eventually(lambda: projected(ls, "L-run-2", 1))
        await harness.lender.publish(
            c.RepaymentReceived(
                repayment_id="R-run-2",
                loan_id="L-run-2",
                currency="CNY",
                amount=Decimal("400.00"),
                outstanding_balance_after=Decimal("0"),
                received_at=datetime.now(UTC),
            )
        )

        async def in_flight() -> bool:
            return bool(
                await scalar(ls, "SELECT count(*) FROM repayments WHERE repayment_id = 'R-run-2'")
            )

        await eventually(in_flight)
    a = await harness.check("L-run-1", "300.00")
    b = await harness.check("L-run-2", "400.00")  # repaid, not yet booked: in flight
    u = await harness.check("L-run-unknown", "10.00")
    a2 = await harness.check("L-run-1", "300.00")  # the same loan again: a new run
    await harness.check("L-run-1", "300.00", check_id=a)  # asked again: the same answer
    async with running(await harness.runtime()) as ls:
        found = await eventually(lambda: harness.answers(a, b, u, a2))
        await asyncio.sleep(1.0)
        found = await harness.answers(a, b, u, a2)
        views = await scalar(
            ls,
            "SELECT string_agg(loan_id || '=' || source, ',' ORDER BY "
            "loan_id) FROM collections_views WHERE loan_id LIKE 'L-run%'",
        )
    first, again = found[a][0].data, found[a2][0].data
    assert isinstance(first, c.BalanceConfirmed)
    assert isinstance(again, c.BalanceConfirmed)
    assert first.confirmed_outstanding == again.confirmed_outstanding == Decimal("300.00")
    assert first.confirmation_id != again.confirmation_id
    assert len({e.data.model_dump_json() for e in found[a]}) == 1  # republished as it was
    refused = {k: found[k][0].data for k in (b, u)}
    assert [getattr(r, "reason", None) for r in refused.values()] == [
        "nothing_owed",
        "unknown_loan",
    ]
    # The confirmed loan shows the ledger's amount; the repaid one the settled correction.
    assert views == "L-run-1=confirmation,L-run-2=correction,L-run-unknown=check"


async def test_a_polls_money_facts_are_applied_before_its_checks_are_answered(
    harness: Harness,
) -> None:
    """Records of different topics have no order between them on Kafka, and a fetch that
    waits to fill gathers a loan's disbursement and the workflow's check of it into one
    poll. The poll's postings and repayments are applied first: a check ahead of them in
    the poll is not refused as an unknown loan, nor confirmed as if nothing were in flight.
    (No ledger API here, as in the demo: nobody would be asked about the unknown loan.)"""
    now = datetime.now(UTC)
    checks = [
        c.BalanceCheckRequested(
            check_id=f"chk-fact-{n}",
            loan_id=f"L-fact-{n}",
            currency="CNY",
            expected_outstanding=Decimal(amount),
            requested_at=now,
        )
        for n, amount in ((1, "300.00"), (2, "400.00"))
    ]
    async with running(await harness.runtime(ledger_api_url=None)) as ls:
        await harness.book(posting("L-fact-2", 1, "400.00", "disbursement"), ledger=False)
        await eventually(lambda: projected(ls, "L-fact-2", 1))
        (loop,) = ls.loops
        await loop._handle_poll(
            poll_of(
                [
                    *(lending.record_for(check) for check in checks),
                    lending.record_for(posting("L-fact-1", 1, "300.00", "disbursement")),
                    lending.record_for(
                        c.RepaymentReceived(
                            repayment_id="R-fact-2",
                            loan_id="L-fact-2",
                            currency="CNY",
                            amount=Decimal("400.00"),
                            outstanding_balance_after=Decimal("0"),
                            received_at=now,
                        )
                    ),
                ]
            )
        )
        first, second = [await harness.answer(check.check_id) for check in checks]
    assert isinstance(first, c.BalanceConfirmed)
    assert first.confirmed_outstanding == Decimal("300.00")
    assert isinstance(second, c.BalanceRefused)
    assert second.reason == "nothing_owed"


async def test_a_failed_poll_isolated_record_by_record_keeps_its_money_facts_first(
    harness: Harness,
) -> None:
    """A poll that fails as a whole is retried one record at a time; those retries follow
    the same order, money facts first. Here the handler fails whenever it is given one
    loan's posting (a fault put in front of the real handler: valid input that no longer
    fails in the database is refused on decoding, see the contract), so the poll is
    isolated; the check ahead of its loan's disbursement is still answered on the
    disbursement, and the failing posting is dead-lettered."""
    now = datetime.now(UTC)
    check = c.BalanceCheckRequested(
        check_id="chk-iso-1",
        loan_id="L-iso-1",
        currency="CNY",
        expected_outstanding=Decimal("300.00"),
        requested_at=now,
    )
    async with running(
        await harness.runtime(ledger_api_url=None, retry_backoff_s=0, max_attempts=2)
    ) as ls:
        (loop,) = ls.loops
        handle = loop._batch_handler
        assert handle is not None

        async def failing_on_one_loan(tx: Tx, envelopes: Sequence[Envelope]) -> None:
            if any(getattr(e.data, "loan_id", None) == "L-iso-bad" for e in envelopes):
                raise RuntimeError("this loan's posting cannot be applied")
            await handle(tx, envelopes)

        loop._batch_handler = failing_on_one_loan
        await loop._handle_poll(
            poll_of(
                [
                    lending.record_for(check),
                    lending.record_for(posting("L-iso-bad", 1, "1.00", "disbursement")),
                    lending.record_for(posting("L-iso-1", 1, "300.00", "disbursement")),
                ]
            )
        )
        answer = await harness.answer(check.check_id)

        async def dead_letters() -> list[tuple[str, str | None]]:
            return [
                (e.data.error_kind, e.data.origin_key)
                for e in await read_topic(
                    harness.stack["kafka_bootstrap"], harness.prefix + Topic.DLQ.value
                )
                if isinstance(e, Envelope) and isinstance(e.data, c.DeadLetter)
            ]

        dead = await eventually(dead_letters)
    assert isinstance(answer, c.BalanceConfirmed)
    assert answer.confirmed_outstanding == Decimal("300.00")
    assert dead == [("handler_failed", "L-iso-bad")]
