"""Taking a delivery receipt against an in-memory fake of its unit of work: applied once,
a second copy changes nothing, one about nothing of ours is kept as unmatched."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import pytest

from collections_kit.clock import FixedClock
from collections_kit.testing import InMemoryUnitOfWork
from notifier.app.receipts import take_receipt
from notifier.domain.model import AttemptResult, ContactRequest, Dispatch, DispatchStatus
from notifier.domain.receipts import Receipt

if TYPE_CHECKING:
    from notifier.adapters.repository import DecisionRecord

NOW = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)


@dataclass
class Data:
    dispatches: dict[str, Dispatch] = field(default_factory=dict)
    results: dict[str, AttemptResult] = field(default_factory=dict)  # by command id
    receipts: dict[tuple[str, str], str | None] = field(default_factory=dict)  # -> effect
    decisions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Database:
    data: Data = field(default_factory=Data)
    published: list[dict[str, Any]] = field(default_factory=list)


class FakeDispatches:
    def __init__(self, data: Data) -> None:
        self._data = data

    async def claim_receipt(self, receipt: Receipt, *, now: datetime) -> bool:
        key = (receipt.provider, receipt.receipt_id)
        if key in self._data.receipts:
            return False
        self._data.receipts[key] = None
        return True

    async def receipt_target(self, receipt: Receipt) -> tuple[Dispatch, AttemptResult] | None:
        dispatch = self._data.dispatches.get(receipt.reference or "")
        if dispatch is None:
            return None
        return dispatch, self._data.results[dispatch.command_id]

    async def note_receipt_effect(
        self, receipt: Receipt, *, effect: str, command_id: str | None
    ) -> None:
        self._data.receipts[receipt.provider, receipt.receipt_id] = effect

    async def settle_by_receipt(
        self, command_id: str, *, result: AttemptResult, provider_ref: str | None, now: datetime
    ) -> None:
        self._data.results[command_id] = result

    async def record_sent_many(
        self, sent: Sequence[tuple[DecisionRecord, str, str | None]]
    ) -> list[int]:
        seqs = []
        for record, status, _ in sent:
            d = record.dispatch
            self._data.dispatches[d.command_id] = replace(
                d, status=DispatchStatus.SENT, decision_seq=d.decision_seq + 1
            )
            self._data.results[d.command_id] = cast(AttemptResult, status)
            self._data.decisions.append((d.command_id, record.decision))
            seqs.append(d.decision_seq + 1)
        return seqs


class FakeUnitOfWork(InMemoryUnitOfWork[Database]):
    source = "notifier"

    def bind(self, work: Data) -> None:
        self.dispatches = FakeDispatches(work)


def command(command_id: str) -> ContactRequest:
    at = NOW - timedelta(minutes=10)
    return ContactRequest(
        command_id=command_id,
        intent_id=f"int-{command_id}",
        case_id="case-1",
        loan_id="L1",
        borrower_id="B1",
        recipient="debtor",
        channel="sms",
        stage="warning",
        template="warning-reminder",
        currency="CNY",
        amount_due=Decimal("990.00"),
        confirmation_id="conf-1",
        ledger_watermark=7,
        confirmed_at=at,
        confirmation_valid_until=at + timedelta(hours=1),
        borrower_time_zone="Asia/Shanghai",
        jurisdiction="CN",
        issued_at=at,
    )


def receipt(receipt_id: str, reference: str, status: str = "delivered") -> Receipt:
    return Receipt(
        provider="sms-provider",
        receipt_id=receipt_id,
        reference=reference,
        provider_ref=f"msg-{reference}",
        status=status,  # type: ignore[arg-type]
        occurred_at=NOW,
    )


@dataclass
class World:
    db: Database
    clock: FixedClock

    def uow(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self.db, self.clock)

    async def take(self, r: Receipt) -> str:
        return await take_receipt(self.uow, r, policy_version="test")


@pytest.fixture
def world() -> World:
    db = Database()
    # cmd-sent: handed over, no final result yet; cmd-doubt: the hand-over is in doubt.
    for command_id, status, result in (
        ("cmd-sent", DispatchStatus.SENT, "sent"),
        ("cmd-doubt", DispatchStatus.IN_DOUBT, "unknown"),
    ):
        db.data.dispatches[command_id] = Dispatch(command(command_id), status, NOW, 1, 2)
        db.data.results[command_id] = cast(AttemptResult, result)
    return World(db, FixedClock(NOW))


async def test_a_receipt_gives_its_attempt_the_result_once(world: World) -> None:
    assert await world.take(receipt("r-1", "cmd-sent")) == "applied"
    assert world.db.data.results["cmd-sent"] == "delivered"
    assert [row["topic"] for row in world.db.published] == ["collections.contact-outcomes.v1"]
    before = copy.deepcopy(world.db.data)
    assert await world.take(receipt("r-1", "cmd-sent", "failed")) == "duplicate"
    assert world.db.data == before
    assert len(world.db.published) == 1


async def test_a_receipt_proves_a_hand_over_in_doubt(world: World) -> None:
    assert await world.take(receipt("r-2", "cmd-doubt")) == "applied"
    assert world.db.data.dispatches["cmd-doubt"].status is DispatchStatus.SENT
    assert world.db.data.decisions == [("cmd-doubt", "sent")]
    # The decision "sent" and the delivery, each announced.
    assert len(world.db.published) == 2


async def test_a_receipt_about_nothing_of_ours_is_kept_as_unmatched(world: World) -> None:
    assert await world.take(receipt("r-3", "cmd-unknown")) == "unmatched"
    assert world.db.data.receipts["sms-provider", "r-3"] == "unmatched"
    assert world.db.published == []
