"""A stand-in for the lender's systems: publishes loan and ledger events through Kafka.

Used by the demo and the tests. It writes exactly what a real lending system would put on
the wire (CloudEvents binary mode, key = loan id), so nothing downstream is bypassed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaProducer

from collections_kit import contract as c
from collections_kit.contract import SPEC_BY_MODEL
from collections_kit.envelope import Envelope, encode


def record_for(
    data: c.Message,
    *,
    event_id: str | None = None,
    source: str = "lending-system",
    at: datetime | None = None,
) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    spec = SPEC_BY_MODEL[type(data)]
    subject = str(getattr(data, "loan_id", ""))
    key, value, headers = encode(
        Envelope(
            id=event_id or str(uuid.uuid4()),
            type=spec.ce_type,
            source=source,
            time=at or datetime.now(UTC),
            subject=subject,
            data=data,
        )
    )
    return spec.topic.value, key, value, headers


@dataclass
class Lender:
    producer: AIOKafkaProducer
    topic_prefix: str = ""
    sent: int = 0
    _futures: list[object] = field(default_factory=list)

    async def publish(self, data: c.Message, *, event_id: str | None = None) -> str:
        event_id = event_id or str(uuid.uuid4())
        topic, key, value, headers = record_for(data, event_id=event_id)
        await self.producer.send_and_wait(
            self.topic_prefix + topic, value=value, key=key, headers=headers
        )
        self.sent += 1
        return event_id

    async def send(self, data: c.Message) -> asyncio.Future[Any]:
        """Hand one message to the producer without waiting for the broker; the returned
        future settles with its acknowledgement."""
        topic, key, value, headers = record_for(data)
        future: asyncio.Future[Any] = await self.producer.send(
            self.topic_prefix + topic, value=value, key=key, headers=headers
        )
        return future

    async def publish_many(self, items: Iterable[c.Message]) -> int:
        """Pipelined publishing for bulk loads; per-key order is kept by the producer."""
        futures = [await self.send(data) for data in items]
        for future in futures:
            await future
        self.sent += len(futures)
        return len(futures)


def disbursement(
    loan_id: str,
    amount: Decimal,
    *,
    sequence: int = 1,
    currency: str = "CNY",
    at: datetime | None = None,
) -> c.LedgerPostingBooked:
    return c.LedgerPostingBooked(
        posting_id=f"{loan_id}-p{sequence}",
        loan_id=loan_id,
        sequence=sequence,
        kind="disbursement",
        currency=currency,
        amount=amount,
        booked_at=at or datetime.now(UTC),
    )


def overdue(
    loan_id: str,
    outstanding: Decimal,
    *,
    dpd: int = 5,
    currency: str = "CNY",
    tz: str = "Asia/Shanghai",
    jurisdiction: str = "CN",
    as_of: datetime | None = None,
    borrower_id: str | None = None,
) -> c.LoanOverdue:
    return c.LoanOverdue(
        loan_id=loan_id,
        borrower_id=borrower_id or f"B-{loan_id}",
        currency=currency,
        amount_overdue=(outstanding / 10).quantize(Decimal("0.01")),
        outstanding_balance=outstanding,
        days_past_due=dpd,
        as_of=as_of or datetime.now(UTC),
        borrower_time_zone=tz,
        jurisdiction=jurisdiction,
    )


def risk_signal(
    loan_id: str,
    outstanding: Decimal,
    *,
    score: Decimal = Decimal("0.90"),
    kind: str = "income_drop",
    valid_for: timedelta = timedelta(days=30),
    observed_at: datetime | None = None,
    signal_id: str | None = None,
    currency: str = "CNY",
    tz: str = "Asia/Shanghai",
    jurisdiction: str = "CN",
    borrower_id: str | None = None,
) -> c.RiskSignal:
    """A risk model's signal about a loan that is still current (early warning)."""
    observed = observed_at or datetime.now(UTC)
    return c.RiskSignal(
        signal_id=signal_id or f"S-{uuid.uuid4().hex[:12]}",
        loan_id=loan_id,
        borrower_id=borrower_id or f"B-{loan_id}",
        kind=kind,
        score=score,
        currency=currency,
        outstanding_balance=outstanding,
        observed_at=observed,
        valid_until=observed + valid_for,
        borrower_time_zone=tz,
        jurisdiction=jurisdiction,
    )


def repayment(
    loan_id: str,
    amount: Decimal,
    outstanding_after: Decimal,
    *,
    repayment_id: str | None = None,
    currency: str = "CNY",
) -> c.RepaymentReceived:
    return c.RepaymentReceived(
        repayment_id=repayment_id or f"R-{uuid.uuid4().hex[:12]}",
        loan_id=loan_id,
        currency=currency,
        amount=amount,
        outstanding_balance_after=outstanding_after,
        received_at=datetime.now(UTC),
    )


def booked_repayment(
    loan_id: str, amount: Decimal, *, sequence: int, repayment_id: str, currency: str = "CNY"
) -> c.LedgerPostingBooked:
    return c.LedgerPostingBooked(
        posting_id=f"{loan_id}-p{sequence}",
        loan_id=loan_id,
        sequence=sequence,
        kind="repayment",
        currency=currency,
        amount=-amount,
        booked_at=datetime.now(UTC),
        repayment_id=repayment_id,
    )
