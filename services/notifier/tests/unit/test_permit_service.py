"""The permit service against in-memory fakes of its unit of work: what is stored for a
grant, a refusal and a closed case; the repayment gate; a result taken once."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, cast

from sqlalchemy.ext.asyncio import AsyncConnection

from collections_kit.outbox import Tx
from notifier.adapters.repository import BatchContext
from notifier.app.permits import PermitConfig, PermitService
from notifier.app.ports import StartPermitUnitOfWork
from notifier.domain.model import (
    AttemptResult,
    Closure,
    ContactDetails,
    ContactRequest,
    Dispatch,
    Party,
)
from notifier.domain.permits import (
    CONFIRMATION_ASKED,
    CONFIRMATION_ON_ITS_WAY,
    NO_CONFIRMATIONS,
    ConfirmationView,
    Granted,
    LedgerConfirmation,
    Permit,
    PermitAsk,
    PermitDecision,
    PermitResult,
    Refused,
)
from notifier.domain.policy import DispatchPolicy

# 10:00 in Shanghai.
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
CN_PHONE = "+8613812341234"
ASK = PermitAsk("L1", "debtor", "voice", "collector", "col-1")
ANCHOR = ContactRequest(
    command_id="cmd-1",
    intent_id="int-1",
    case_id="case-1",
    loan_id="L1",
    borrower_id="B1",
    recipient="debtor",
    channel="sms",
    stage="formal_notice",
    template="formal-notice",
    currency="CNY",
    amount_due=Decimal("990.00"),
    confirmation_id="conf-1",
    ledger_watermark=7,
    confirmed_at=NOW - timedelta(minutes=1),
    confirmation_valid_until=NOW + timedelta(minutes=29),
    borrower_time_zone="Asia/Shanghai",
    jurisdiction="CN",
    issued_at=NOW - timedelta(minutes=1),
)


@dataclass
class Data:
    anchor: ContactRequest | None = ANCHOR
    closures: list[Closure] = field(default_factory=list)
    permits: dict[str, Permit] = field(default_factory=dict)
    attempts: dict[str, AttemptResult] = field(default_factory=dict)
    confirmations: ConfirmationView = NO_CONFIRMATIONS
    # When a refusal asked the workflow for a confirmation.
    asked: list[datetime] = field(default_factory=list)
    # The confirmation each permit was decided on.
    confirmation_of: dict[str, str] = field(default_factory=dict)
    # The outbox: what committed transactions published.
    published: list[dict[str, Any]] = field(default_factory=list)


class FakeContexts:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def contexts(
        self, batch: Sequence[Dispatch], *, repayments_since: datetime, attempts_since: datetime
    ) -> BatchContext:
        ctx = BatchContext(details={"B1": ContactDetails("B1", "zh-CN", Party(phone=CN_PHONE))})
        ctx.closures["L1"] = list(self._data.closures)
        return ctx


class FakePermits:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def anchor(self, loan_id: str) -> ContactRequest | None:
        return self._data.anchor

    async def confirmations(self, loan_id: str) -> ConfirmationView:
        return self._data.confirmations

    async def confirmation_asked(self, loan_id: str, *, now: datetime) -> None:
        self._data.asked.append(now)

    async def settle_unreported(self, person: str, *, now: datetime) -> None:
        return None

    async def record(
        self,
        permit_id: str,
        ask: PermitAsk,
        decision: PermitDecision,
        *,
        actor_kind_from: str,
        anchor: ContactRequest,
        person: str,
        number: str | None,
        policy_version: str,
        now: datetime,
        expires_at: datetime,
        result_by: datetime,
    ) -> None:
        granted = isinstance(decision, Granted)
        self._data.confirmation_of[permit_id] = anchor.confirmation_id
        self._data.permits[permit_id] = Permit(
            permit_id=permit_id,
            loan_id=ask.loan_id,
            recipient=ask.recipient,
            channel=ask.channel,
            actor_kind=ask.actor_kind,
            actor_id=ask.actor_id,
            decision="granted" if granted else "refused",
            reason=decision.reason if isinstance(decision, Refused) else "all_checks_passed",
            rule=decision.rule,
            asked_at=now,
            expires_at=expires_at if granted else None,
            result_by=result_by if granted else None,
            actor_from=actor_kind_from,
        )
        if granted:
            self._data.attempts[permit_id] = "pending"

    async def get(self, permit_id: str, *, lock: bool = False) -> Permit | None:
        return self._data.permits.get(permit_id)

    async def record_result(
        self, permit_id: str, result: PermitResult, attempt: AttemptResult, *, now: datetime
    ) -> None:
        self._data.permits[permit_id] = replace(
            self._data.permits[permit_id], result=result, result_at=now
        )
        self._data.attempts[permit_id] = attempt

    async def of_loan(self, loan_id: str, *, limit: int = 200) -> Sequence[Permit]:
        return list(self._data.permits.values())

    async def summary(self) -> list[tuple[str, str, str, int]]:
        return []


class FakeUnitOfWork:
    """One transaction: what it writes is kept only if it commits."""

    def __init__(self, db: Data, now: datetime) -> None:
        self._db = db
        self._work = replace(
            db,
            closures=list(db.closures),
            permits=dict(db.permits),
            attempts=dict(db.attempts),
            asked=list(db.asked),
            published=[],
            confirmation_of=dict(db.confirmation_of),
        )
        self.now = now
        self.dispatches = FakeContexts(self._work)
        self.permits = FakePermits(self._work)
        self.tx = Tx(conn=cast(AsyncConnection, None), now=now, source="notifier", topic_prefix="")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def commit(self) -> None:
        self._db.permits, self._db.attempts = self._work.permits, self._work.attempts
        self._db.asked, self._db.confirmation_of = self._work.asked, self._work.confirmation_of
        self._db.published.extend(self.tx.staged)


@dataclass
class Gate:
    open: bool = True

    def is_open(self) -> bool:
        return self.open


@dataclass
class World:
    db: Data = field(default_factory=Data)
    now: datetime = NOW
    gate: Gate = field(default_factory=Gate)

    def service(self) -> PermitService:
        def start() -> FakeUnitOfWork:
            return FakeUnitOfWork(self.db, self.now)

        return PermitService(
            uow=cast(StartPermitUnitOfWork, start),
            policy=DispatchPolicy(),
            config=PermitConfig(),
            gate=self.gate,
        )


async def test_a_grant_is_stored_and_counted_at_once_as_an_attempt_in_flight() -> None:
    world = World()
    answer = await world.service().ask(ASK, kind_from="token")
    assert answer.decision == Granted("CN.contact_window")
    assert answer.recorded
    assert answer.expires_at == NOW + timedelta(minutes=5)
    assert answer.result_by == NOW + timedelta(minutes=65)
    assert world.db.attempts == {answer.permit_id: "pending"}
    assert world.db.permits[answer.permit_id].actor_from == "token"


async def test_while_the_repayment_view_lags_a_grant_becomes_a_refusal() -> None:
    world = World(gate=Gate(open=False))
    answer = await world.service().ask(ASK, kind_from="token")
    assert answer.decision == Refused("repayments_lagging", "repayment_gate", "view_lagging")
    assert world.db.attempts == {}
    # Stored as a refusal: the summary shows how often people were held back, and why.
    assert world.db.permits[answer.permit_id].decision == "refused"


async def test_a_closed_or_unknown_case_stores_nothing() -> None:
    world = World()
    world.db.closures.append(Closure("written_off", NOW - timedelta(minutes=1)))
    closed = await world.service().ask(ASK, kind_from="token")
    assert isinstance(closed.decision, Refused)
    assert closed.decision.reason == "case_closed"
    assert not closed.recorded
    world.db.anchor = None
    unknown = await world.service().ask(ASK, kind_from="body")
    assert isinstance(unknown.decision, Refused)
    assert unknown.decision.reason == "case_unknown"
    assert (world.db.permits, world.db.attempts) == ({}, {})


async def test_a_result_is_taken_once_by_its_holder() -> None:
    world = World()
    service = world.service()
    permit_id = (await service.ask(ASK, kind_from="token")).permit_id
    world.now = NOW + timedelta(minutes=10)
    first = await service.result(permit_id, "col-1", "conversation")
    assert first.check == "record"
    assert world.db.attempts[permit_id] == "answered"
    again = await service.result(permit_id, "col-1", "conversation")
    assert again.check == "replay"
    other = await service.result(permit_id, "col-1", "unanswered")
    assert other.check == "conflict"
    assert world.db.attempts[permit_id] == "answered"
    assert (await service.result(permit_id, "agency-9", "connected")).check == "not_yours"
    assert (await service.result("permit-none", "col-1", "connected")).check == "unknown"


def notes(world: World) -> list[dict[str, Any]]:
    """The permit steps published for the case timeline, in order."""
    return [
        json.loads(row["value"])
        for row in world.db.published
        if row["topic"] == "collections.contact-outcomes.v1"
    ]


async def test_each_decision_and_result_is_published_for_the_case_timeline_once() -> None:
    world = World()
    service = world.service()
    granted = await service.ask(ASK, kind_from="token")
    world.gate.open = False
    refused = await service.ask(ASK, kind_from="token")
    world.now = NOW + timedelta(minutes=1)
    for _ in range(2):  # a retried report: one step
        await service.result(granted.permit_id, "col-1", "connected")
    published = notes(world)
    assert [(n["kind"], n["permit_id"], n["reason"]) for n in published] == [
        ("granted", granted.permit_id, "all_checks_passed"),
        ("refused", refused.permit_id, "repayments_lagging"),
        ("result", granted.permit_id, "all_checks_passed"),
    ]
    assert published[2]["result"] == "connected"
    # Ids and codes only: who acted, never anyone's number or name.
    assert {(n["actor_kind"], n["actor_id"], n["person"]) for n in published} == {
        ("collector", "col-1", "debtor")
    }
    assert not any(CN_PHONE in json.dumps(n) for n in published)
    # A case it refuses as bad input publishes nothing, as it stores nothing.
    world.db.closures.append(Closure("written_off", world.now - timedelta(seconds=1)))
    await service.ask(ASK, kind_from="token")
    assert len(notes(world)) == 3


async def test_a_lapsed_confirmation_with_none_on_its_way_asks_for_one_once() -> None:
    """The first refusal asks the workflow for a confirmation (and says when to retry);
    the next ones, while it is on its way, only say when."""
    lapsed = replace(
        ANCHOR,
        confirmed_at=NOW - timedelta(hours=2),
        confirmation_valid_until=NOW - timedelta(hours=1, minutes=30),
    )
    world = World(db=Data(anchor=lapsed))
    service = world.service()
    first = await service.ask(ASK, kind_from="token")
    assert first.decision == Refused(
        "balance_unconfirmed",
        "ledger_confirmation_validity",
        CONFIRMATION_ASKED,
        NOW + timedelta(seconds=3),
    )
    assert world.db.asked == [NOW]
    (note,) = notes(world)
    assert (note["reason"], note["confirmation_needed"]) == ("balance_unconfirmed", True)

    world.now = NOW + timedelta(seconds=1)
    world.db.confirmations = ConfirmationView(pending_since=NOW)
    second = await service.ask(ASK, kind_from="token")
    assert isinstance(second.decision, Refused)
    assert (second.decision.detail, second.decision.retry_after) == (
        CONFIRMATION_ON_ITS_WAY,
        NOW + timedelta(seconds=4),
    )
    assert world.db.asked == [NOW]  # not asked again
    assert notes(world)[-1]["confirmation_needed"] is False

    # The confirmation arrives: the permit rests on it.
    world.db.confirmations = ConfirmationView(
        LedgerConfirmation(
            "conf-fresh", 9, Decimal("990.00"), world.now, world.now + timedelta(minutes=30)
        )
    )
    third = await service.ask(ASK, kind_from="token")
    assert third.decision == Granted("CN.contact_window")
    assert world.db.confirmation_of[third.permit_id] == "conf-fresh"
