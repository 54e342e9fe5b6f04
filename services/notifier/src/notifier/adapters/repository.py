"""Dispatches, decisions, cancellations, repayments and contact details in PostgreSQL."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import case, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from collections_kit.db import any_of, insert_rows, on_conflict_update, update_rows
from collections_kit.outbox import Along
from collections_kit.pii import KeyRing, PiiError
from collections_kit.vocabulary import CHANNELS
from notifier.adapters.tables import (
    case_closures,
    case_holds,
    channel_opt_outs,
    command_cancellations,
    contact_attempts,
    contact_decisions,
    contact_details,
    delivery_receipts,
    dispatches,
    do_not_contact,
    loan_cancellations,
    repayments,
    validation_notices,
)
from notifier.domain.model import (
    CANCELLABLE_STATUSES,
    OPEN_STATUSES,
    PHONE_CHANNELS,
    Attempt,
    AttemptResult,
    Cancellation,
    ChannelName,
    Closure,
    ContactDetails,
    ContactRequest,
    Dispatch,
    DispatchContext,
    DispatchStatus,
    Hold,
    Party,
    Preferences,
    Repayment,
    ValidationState,
    number_key,
    person_key,
)
from notifier.domain.receipts import Receipt

log = logging.getLogger(__name__)

_OPEN = [s.value for s in OPEN_STATUSES]
# A command taken again (after a lease ran out or a retry) starts a fresh attempt.
_ATTEMPT_RESTART = on_conflict_update(
    "command_id", ("result", "attempted_at", "settles_by", "number_key", "updated_at")
)
# A repayment stored (a reversal seen first left a row without received_at: completed, its
# reversed_at kept) and the loan's commands not yet handed to a channel read and locked
# against the dispatcher, as ``cancellable`` does, in one statement: the read shares the
# insert's snapshot, as a statement after it had the same view, since it touches no
# repayment. One row when none waits (the dispatch columns NULL). Plain SQL, prepared once
# per connection: no SQL expression built per repayment.
_REPAID_AND_WAITING = f"""
    WITH paid AS (
        INSERT INTO repayments AS p
            (repayment_id, loan_id, currency, amount, received_at, reversed_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, NULL, $6)
        ON CONFLICT (repayment_id) DO UPDATE
            SET received_at = coalesce(p.received_at, EXCLUDED.received_at),
                updated_at = EXCLUDED.updated_at
        RETURNING p.received_at, p.reversed_at)
    SELECT paid.received_at AS repaid_at, paid.reversed_at AS repaid_reversed_at, w.*
    FROM paid LEFT JOIN (
        SELECT * FROM dispatches
        WHERE loan_id = $2
          AND status IN ({", ".join(f"'{s.value}'" for s in CANCELLABLE_STATUSES)})
        ORDER BY issued_at, command_id
        FOR UPDATE) AS w ON true
    ORDER BY w.issued_at, w.command_id
    """

# Decisions on dispatches not ``sending`` (no attempt to settle), as ``record`` writes each:
# the audit rows appended and the dispatches' new state, for a JSON array of
# [command id, seq, loan, channel, recipient, decision, reason, rule, policy version, at,
# due at, status] in ``$1``, the audit rows numbered in the array's order. As CTEs, to ride
# the outbox row's statement (``decisions``).
_DECISIONS = """
    decided AS (
        INSERT INTO contact_decisions (command_id, seq, loan_id, channel, recipient, decision,
                                       reason, rule, policy_version, at, due_at)
        SELECT e->>0, (e->>1)::int, e->>2, e->>3, e->>4, e->>5, e->>6, e->>7, e->>8,
               (e->>9)::timestamptz, (e->>10)::timestamptz
        FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS x(e, n)
        ORDER BY n),
    applied AS (
        UPDATE dispatches AS d
        SET status = e->>11, decision_seq = (e->>1)::int, reason = e->>6, rule = e->>7,
            updated_at = (e->>9)::timestamptz,
            due_at = coalesce((e->>10)::timestamptz, d.due_at)
        FROM jsonb_array_elements($1::text::jsonb) AS e
        WHERE d.command_id = e->>0)
    """

# First key of the two-key advisory locks on people and numbers (a space of its own).
_CONTACT_LOCK_NS = 0x4E54


def _number_of(dispatch: Dispatch, details: ContactDetails | None) -> str | None:
    if dispatch.request.channel not in PHONE_CHANNELS or details is None:
        return None
    phone = details.address_for(dispatch.request.recipient, dispatch.request.channel)
    return number_key(phone) if phone else None


def _hold(row: Any) -> Hold:
    return Hold(
        hold_id=row.hold_id,
        kind=row.kind,
        held_at=row.held_at,
        until=row.until,
        resumed_at=row.resumed_at,
    )


def _attempt(row: Any) -> Attempt:
    return Attempt(
        command_id=row.command_id,
        loan_id=row.loan_id,
        person=row.person,
        channel=row.channel,
        at=row.attempted_at,
        result=row.result,
        number=row.number_key,
        settles_by=row.settles_by,
    )


@dataclass
class BatchContext:
    """What the dispatcher knows about one claimed batch, kept current while it decides:
    an attempt or a validation notice planned for one command is seen by the next."""

    details: dict[str, ContactDetails] = field(default_factory=dict)
    cancellations: dict[str, list[Cancellation]] = field(default_factory=lambda: defaultdict(list))
    repayments: dict[str, list[Repayment]] = field(default_factory=lambda: defaultdict(list))
    holds: dict[str, list[Hold]] = field(default_factory=lambda: defaultdict(list))
    closures: dict[str, list[Closure]] = field(default_factory=lambda: defaultdict(list))
    opt_outs: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    do_not_contact: set[str] = field(default_factory=set)
    # (loan, person) -> (status, command id)
    validation: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    attempts: dict[str, Attempt] = field(default_factory=dict)
    # Command ids of the attempts per person and per number: a 500-row pass scanning
    # every attempt for every command was quadratic.
    _by_person: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    _by_number: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # When each command's attempt was first noted (the attempts dict's own order).
    _noted: dict[str, int] = field(default_factory=dict)

    def note_attempt(self, attempt: Attempt) -> None:
        self.attempts[attempt.command_id] = attempt
        self._noted.setdefault(attempt.command_id, len(self._noted))
        self._by_person[attempt.person].add(attempt.command_id)
        if attempt.number is not None:
            self._by_number[attempt.number].add(attempt.command_id)

    def _attempts_of(self, person: str, number: str | None) -> tuple[Attempt, ...]:
        ids = self._by_person.get(person, set())
        if number is not None:
            ids = ids | self._by_number.get(number, set())
        # The index only narrows; the test is the attempt's own (a re-noted attempt may
        # have another number). In the order the attempts were noted, as before.
        return tuple(
            sorted(
                (
                    a
                    for a in map(self.attempts.__getitem__, ids)
                    if a.person == person or (number is not None and a.number == number)
                ),
                key=lambda a: self._noted[a.command_id],
            )
        )

    def note_validation_in_flight(self, dispatch: Dispatch) -> None:
        r = dispatch.request
        self.validation[(r.loan_id, person_key(r.borrower_id, r.recipient))] = (
            "in_flight",
            r.command_id,
        )

    def number_of(self, dispatch: Dispatch) -> str | None:
        return _number_of(dispatch, self.details.get(dispatch.request.borrower_id))

    def for_dispatch(self, dispatch: Dispatch) -> DispatchContext:
        r = dispatch.request
        person = person_key(r.borrower_id, r.recipient)
        number = self.number_of(dispatch)
        status, owner = self.validation.get((r.loan_id, person), ("none", ""))
        validation: ValidationState = (
            "sent"
            if status == "sent"
            # Its own notice, taken over after a lease: this command may carry it again.
            else "in_flight"
            if status == "in_flight" and owner != r.command_id
            else "none"
        )
        opted: frozenset[ChannelName] = frozenset(
            c for c in CHANNELS if c in self.opt_outs.get(person, ())
        )
        return DispatchContext(
            cancellations=tuple(
                c
                for c in self.cancellations.get(r.loan_id, ())
                if c.command_id in (None, r.command_id)
            ),
            repayments=tuple(self.repayments.get(r.loan_id, ())),
            details=self.details.get(r.borrower_id),
            holds=tuple(self.holds.get(r.loan_id, ())),
            closures=tuple(self.closures.get(r.loan_id, ())),
            preferences=Preferences(opted_out=opted, do_not_contact=person in self.do_not_contact),
            attempts=self._attempts_of(person, number),
            validation=validation,
        )


def request_of(row: Any) -> ContactRequest:
    return ContactRequest(
        command_id=row.command_id,
        intent_id=row.intent_id,
        case_id=row.case_id,
        loan_id=row.loan_id,
        borrower_id=row.borrower_id,
        recipient=row.recipient,
        channel=row.channel,
        stage=row.stage,
        template=row.template,
        currency=row.currency,
        amount_due=row.amount_due,
        confirmation_id=row.confirmation_id,
        ledger_watermark=row.ledger_watermark,
        confirmed_at=row.confirmed_at,
        confirmation_valid_until=row.confirmation_valid_until,
        borrower_time_zone=row.borrower_time_zone,
        jurisdiction=row.jurisdiction,
        issued_at=row.issued_at,
    )


def _dispatch(row: Any) -> Dispatch:
    return Dispatch(
        request=request_of(row),
        status=DispatchStatus(row.status),
        due_at=row.due_at,
        attempts=row.attempts,
        decision_seq=row.decision_seq,
    )


# Personal data in contact_details, sealed at rest (collections_kit.pii); each value is
# bound to its column and borrower.
PII_COLUMNS = (
    "email",
    "phone",
    "postal_address",
    "guarantor_name",
    "guarantor_email",
    "guarantor_phone",
    "guarantor_postal_address",
)


def pii_aad(table: str, column: str, row_id: str) -> str:
    return f"{table}.{column}:{row_id}"


def _details(row: Any, ring: KeyRing) -> ContactDetails:
    clear = {
        c: ring.open(getattr(row, c), aad=pii_aad("contact_details", c, row.borrower_id))
        for c in PII_COLUMNS
    }
    has_guarantor = any(
        (
            clear["guarantor_name"],
            clear["guarantor_email"],
            clear["guarantor_phone"],
            clear["guarantor_postal_address"],
        )
    )
    return ContactDetails(
        borrower_id=row.borrower_id,
        language=row.language,
        debtor=Party(
            email=clear["email"], phone=clear["phone"], postal_address=clear["postal_address"]
        ),
        guarantor=Party(
            name=clear["guarantor_name"],
            email=clear["guarantor_email"],
            phone=clear["guarantor_phone"],
            postal_address=clear["guarantor_postal_address"],
        )
        if has_guarantor
        else None,
    )


@dataclass(frozen=True)
class DecisionRecord:
    """One row for ``contact_decisions``."""

    dispatch: Dispatch
    decision: str
    reason: str
    rule: str
    policy_version: str
    at: datetime
    due_at: datetime | None = None


class DispatchRepository:
    def __init__(self, conn: AsyncConnection, ring: KeyRing | None = None) -> None:
        self._conn = conn
        # Needed only to read contact details (contexts()).
        self._ring = ring

    # --- commands in ---------------------------------------------------------------------

    async def add_many(self, requests: Sequence[ContactRequest], *, now: datetime) -> set[str]:
        """Store new commands, due at once, in one statement; returns the ids that were new
        (a command known already, or twice in ``requests``, is stored once: the first)."""
        rows = await insert_rows(
            self._conn,
            dispatches,
            [self._row(r, now) for r in requests],
            on_conflict='ON CONFLICT ("command_id") DO NOTHING',
            returning="command_id",
        )
        return {row[0] for row in rows}

    @staticmethod
    def _row(request: ContactRequest, now: datetime) -> dict[str, Any]:
        return {
            "command_id": request.command_id,
            "intent_id": request.intent_id,
            "case_id": request.case_id,
            "loan_id": request.loan_id,
            "borrower_id": request.borrower_id,
            "recipient": request.recipient,
            "channel": request.channel,
            "stage": request.stage,
            "template": request.template,
            "currency": request.currency,
            "amount_due": request.amount_due,
            "confirmation_id": request.confirmation_id,
            "ledger_watermark": request.ledger_watermark,
            "confirmed_at": request.confirmed_at,
            "confirmation_valid_until": request.confirmation_valid_until,
            "borrower_time_zone": request.borrower_time_zone,
            "jurisdiction": request.jurisdiction,
            "issued_at": request.issued_at,
            "status": DispatchStatus.PENDING.value,
            "due_at": now,
            "attempts": 0,
            "decision_seq": 0,
            "reason": "",
            "rule": "",
            "received_at": now,
            "updated_at": now,
        }

    async def remember_cancellation(
        self, loan_id: str, cancellation: Cancellation, *, now: datetime
    ) -> None:
        if cancellation.command_id is not None:
            await self._conn.execute(
                pg_insert(command_cancellations)
                .values(
                    command_id=cancellation.command_id,
                    loan_id=loan_id,
                    cancelled_at=cancellation.cancelled_at,
                    reason=cancellation.reason,
                )
                .on_conflict_do_nothing(index_elements=[command_cancellations.c.command_id])
            )
            return
        stmt = pg_insert(loan_cancellations).values(
            loan_id=loan_id,
            cancelled_at=cancellation.cancelled_at,
            reason=cancellation.reason,
            updated_at=now,
        )
        # Only ever forward: an older cancellation replayed late must not lower the mark.
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[loan_cancellations.c.loan_id],
                set_={
                    "cancelled_at": stmt.excluded.cancelled_at,
                    "reason": stmt.excluded.reason,
                    "updated_at": stmt.excluded.updated_at,
                },
                where=loan_cancellations.c.cancelled_at < stmt.excluded.cancelled_at,
            )
        )

    async def cancellable(self, loan_id: str) -> list[Dispatch]:
        """The loan's commands not yet handed to a channel, locked against the dispatcher."""
        rows = await self._conn.execute(
            select(dispatches)
            .where(
                dispatches.c.loan_id == loan_id,
                dispatches.c.status.in_([s.value for s in CANCELLABLE_STATUSES]),
            )
            .order_by(dispatches.c.issued_at, dispatches.c.command_id)
            .with_for_update()
        )
        return [_dispatch(r) for r in rows]

    async def record_repayment(
        self,
        *,
        repayment_id: str,
        loan_id: str,
        currency: str,
        amount: object,
        received_at: datetime,
        now: datetime,
    ) -> tuple[Repayment, list[Dispatch]]:
        """Store a receipt; returns the repayment as now known (a reversal may precede it)
        and the loan's commands not yet handed to a channel, locked against the dispatcher
        (as ``cancellable``), in one round trip: on the path of every suppression."""
        result = await self._conn.exec_driver_sql(
            _REPAID_AND_WAITING,
            (repayment_id, loan_id, currency, amount, received_at, now),
        )
        rows = result.all()
        head = rows[0]
        repayment = Repayment(repayment_id, head.repaid_at, head.repaid_reversed_at is not None)
        return repayment, [_dispatch(row) for row in rows if row.command_id is not None]

    async def reverse_repayment(
        self,
        *,
        repayment_id: str,
        loan_id: str,
        currency: str,
        amount: object,
        reversed_at: datetime,
        now: datetime,
    ) -> None:
        stmt = pg_insert(repayments).values(
            repayment_id=repayment_id,
            loan_id=loan_id,
            currency=currency,
            amount=amount,
            received_at=None,
            reversed_at=reversed_at,
            updated_at=now,
        )
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[repayments.c.repayment_id],
                set_={
                    "reversed_at": stmt.excluded.reversed_at,
                    "updated_at": stmt.excluded.updated_at,
                },
            )
        )

    async def hold(
        self,
        *,
        hold_id: str,
        loan_id: str,
        case_id: str,
        kind: str,
        held_at: datetime,
        until: datetime | None,
        now: datetime,
    ) -> Hold:
        stmt = pg_insert(case_holds).values(
            hold_id=hold_id,
            loan_id=loan_id,
            case_id=case_id,
            kind=kind,
            held_at=held_at,
            until=until,
            resumed_at=None,
            updated_at=now,
        )
        # A resume seen first left a row: complete it, keep its resumed_at.
        row = (
            await self._conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[case_holds.c.hold_id],
                    set_={
                        "kind": stmt.excluded.kind,
                        "held_at": stmt.excluded.held_at,
                        "until": stmt.excluded.until,
                        "updated_at": stmt.excluded.updated_at,
                    },
                ).returning(*case_holds.c)
            )
        ).one()
        return _hold(row)

    async def resume(
        self, *, hold_id: str, loan_id: str, case_id: str, resumed_at: datetime, now: datetime
    ) -> None:
        # Without the hold (not seen yet), what is known is kept: a hold of unknown kind
        # that ended at ``resumed_at`` still voids every command issued before then.
        stmt = pg_insert(case_holds).values(
            hold_id=hold_id,
            loan_id=loan_id,
            case_id=case_id,
            kind="unknown",
            held_at=resumed_at,
            until=None,
            resumed_at=resumed_at,
            updated_at=now,
        )
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[case_holds.c.hold_id],
                set_={
                    "resumed_at": stmt.excluded.resumed_at,
                    "updated_at": stmt.excluded.updated_at,
                },
            )
        )

    async def close_case(
        self, *, case_id: str, loan_id: str, outcome: str, closed_at: datetime
    ) -> None:
        await self._conn.execute(
            pg_insert(case_closures)
            .values(case_id=case_id, loan_id=loan_id, outcome=outcome, closed_at=closed_at)
            .on_conflict_do_nothing(index_elements=[case_closures.c.case_id])
        )

    # --- the dispatcher ------------------------------------------------------------------

    async def claim_due(self, now: datetime, limit: int) -> list[Dispatch]:
        """Rows whose time has come, locked; another replica skips them rather than wait.

        A row still ``sending`` whose lease (its ``due_at``) has run out belongs to a
        dispatcher that died or hung mid-call: it is taken again like a due one.
        """
        rows = await self._conn.execute(
            select(dispatches)
            .where(dispatches.c.status.in_(_OPEN), dispatches.c.due_at <= now)
            .order_by(dispatches.c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_dispatch(r) for r in rows]

    async def contexts(
        self, batch: Sequence[Dispatch], *, repayments_since: datetime, attempts_since: datetime
    ) -> BatchContext:
        """The context of every command in ``batch``, in a few queries.

        Takes the per-person and per-number advisory locks first (in one sorted order, so
        two replicas cannot deadlock), then reads the attempts: whoever decides about a
        person next waits for this transaction and then sees the attempts it records.
        That is what makes check-and-count atomic across replicas.
        """
        if not batch:
            return BatchContext()
        loan_ids = sorted({d.request.loan_id for d in batch})
        command_ids = [d.command_id for d in batch]
        borrower_ids = sorted({d.request.borrower_id for d in batch})
        if self._ring is None:
            raise RuntimeError("DispatchRepository needs the PII key ring to read contacts")
        details: dict[str, ContactDetails] = {}
        for row in await self._conn.execute(
            select(contact_details).where(any_of(contact_details.c.borrower_id, borrower_ids))
        ):
            try:
                details[row.borrower_id] = _details(row, self._ring)
            except PiiError as exc:
                # Unusable (key missing from the ring, or tampered): as good as none, so
                # the contact is blocked for want of details rather than the batch stuck.
                log.error(
                    "contact details do not open: %s", exc, extra={"borrower_id": row.borrower_id}
                )

        people: set[str] = set()
        numbers: set[str] = set()
        for d in batch:
            people.add(person_key(d.request.borrower_id, d.request.recipient))
            number = _number_of(d, details.get(d.request.borrower_id))
            if number is not None:
                numbers.add(number)
        await self.lock_contact_keys(
            [f"person:{p}" for p in people] + [f"number:{n}" for n in numbers]
        )

        ctx = BatchContext(details=details)
        for row in await self._conn.execute(
            select(loan_cancellations).where(any_of(loan_cancellations.c.loan_id, loan_ids))
        ):
            ctx.cancellations[row.loan_id].append(Cancellation(row.reason, row.cancelled_at))
        for row in await self._conn.execute(
            select(command_cancellations).where(
                any_of(command_cancellations.c.command_id, command_ids)
            )
        ):
            ctx.cancellations[row.loan_id].append(
                Cancellation(row.reason, row.cancelled_at, row.command_id)
            )
        for row in await self._conn.execute(
            select(repayments).where(
                any_of(repayments.c.loan_id, loan_ids),
                or_(
                    repayments.c.received_at > repayments_since, repayments.c.received_at.is_(None)
                ),
            )
        ):
            ctx.repayments[row.loan_id].append(
                Repayment(row.repayment_id, row.received_at, row.reversed_at is not None)
            )
        for row in await self._conn.execute(
            select(case_holds).where(any_of(case_holds.c.loan_id, loan_ids))
        ):
            ctx.holds[row.loan_id].append(_hold(row))
        for row in await self._conn.execute(
            select(case_closures).where(any_of(case_closures.c.loan_id, loan_ids))
        ):
            ctx.closures[row.loan_id].append(Closure(row.outcome, row.closed_at))
        for row in await self._conn.execute(
            select(channel_opt_outs).where(any_of(channel_opt_outs.c.borrower_id, borrower_ids))
        ):
            ctx.opt_outs[person_key(row.borrower_id, row.party)].add(row.channel)
        for row in await self._conn.execute(
            select(do_not_contact).where(any_of(do_not_contact.c.borrower_id, borrower_ids))
        ):
            ctx.do_not_contact.add(person_key(row.borrower_id, row.party))
        for row in await self._conn.execute(
            select(validation_notices).where(any_of(validation_notices.c.loan_id, loan_ids))
        ):
            ctx.validation[(row.loan_id, row.person)] = (row.status, row.command_id)
        conditions = [any_of(contact_attempts.c.person, sorted(people))]
        if numbers:
            conditions.append(any_of(contact_attempts.c.number_key, sorted(numbers)))
        for row in await self._conn.execute(
            select(contact_attempts).where(
                or_(*conditions), contact_attempts.c.attempted_at > attempts_since
            )
        ):
            ctx.note_attempt(_attempt(row))
        return ctx

    async def lock_contact_keys(self, keys: Iterable[str]) -> None:
        """Transaction-scoped advisory locks on people and numbers, in a fixed order.

        One statement for all keys (a round trip per key was an eighth of the notifier's
        time at a 500-row batch). The order is that of the lock ids themselves: the sorted
        subquery's rows reach the outer call in that order, so two replicas taking
        overlapping sets always queue on their first common lock and cannot deadlock."""
        unique = list(set(keys))  # ordered by the statement itself
        if not unique:
            return
        await self._conn.exec_driver_sql(
            "SELECT count(pg_advisory_xact_lock($1, lock_id)) FROM ("
            "SELECT DISTINCT hashtext(k) AS lock_id FROM unnest($2::text[]) AS k "
            "ORDER BY lock_id) AS ordered",
            (_CONTACT_LOCK_NS, unique),
        )

    async def mark_sending(
        self,
        dispatch: Dispatch,
        *,
        now: datetime,
        lease_until: datetime,
        number: str | None = None,
        validation_notice: bool = False,
    ) -> int:
        """Hand the row to a channel; returns the attempt number that owns it.

        In the same transaction the contact is counted (a pending attempt, which every cap
        counts as its worst case until the result is in) and, for a validation notice,
        marked in flight so that other contacts keep waiting for it.
        """
        await self.mark_sending_many([(dispatch, number)], now=now, lease_until=lease_until)
        request = dispatch.request
        person = person_key(request.borrower_id, request.recipient)
        if validation_notice:
            vstmt = pg_insert(validation_notices).values(
                loan_id=request.loan_id,
                person=person,
                command_id=request.command_id,
                channel=request.channel,
                status="in_flight",
                updated_at=now,
            )
            await self._conn.execute(
                vstmt.on_conflict_do_update(
                    index_elements=[validation_notices.c.loan_id, validation_notices.c.person],
                    set_={
                        "command_id": request.command_id,
                        "channel": request.channel,
                        "status": "in_flight",
                        "updated_at": now,
                    },
                    where=validation_notices.c.status != "sent",
                )
            )
        return dispatch.attempts + 1

    async def mark_sending_many(
        self, marks: Sequence[tuple[Dispatch, str | None]], *, now: datetime, lease_until: datetime
    ) -> None:
        """``mark_sending`` (without a validation notice) for ``(dispatch, number)`` each, in
        two statements for all of them; each row's attempt is ``dispatch.attempts + 1``."""
        if not marks:
            return
        await update_rows(
            self._conn,
            dispatches,
            "command_id",
            [
                {
                    "command_id": d.command_id,
                    "status": DispatchStatus.SENDING.value,
                    "due_at": lease_until,
                    "attempts": d.attempts + 1,
                    "updated_at": now,
                }
                for d, _ in marks
            ],
        )
        await insert_rows(
            self._conn,
            contact_attempts,
            [
                {
                    "command_id": d.command_id,
                    "loan_id": d.request.loan_id,
                    "person": person_key(d.request.borrower_id, d.request.recipient),
                    "channel": d.request.channel,
                    "number_key": number,
                    "attempted_at": now,
                    "result": "pending",
                    "settles_by": lease_until,
                    "updated_at": now,
                }
                for d, number in marks
            ],
            on_conflict=_ATTEMPT_RESTART,
        )

    async def settle_attempt(
        self,
        command_id: str,
        *,
        result: AttemptResult,
        now: datetime,
        provider_ref: str | None = None,
    ) -> None:
        await self._conn.execute(
            update(contact_attempts)
            .where(contact_attempts.c.command_id == command_id)
            .values(result=result, settles_by=None, provider_ref=provider_ref, updated_at=now)
        )

    async def validation_notice_sent(
        self, dispatch: Dispatch, *, now: datetime, dispute_by: datetime | None, wake_rule: str
    ) -> int:
        """The notice is out: remember it and wake the contacts that waited for it."""
        request = dispatch.request
        person = person_key(request.borrower_id, request.recipient)
        stmt = pg_insert(validation_notices).values(
            loan_id=request.loan_id,
            person=person,
            command_id=request.command_id,
            channel=request.channel,
            status="sent",
            sent_at=now,
            dispute_by=dispute_by,
            updated_at=now,
        )
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[validation_notices.c.loan_id, validation_notices.c.person],
                set_={
                    "command_id": request.command_id,
                    "channel": request.channel,
                    "status": "sent",
                    "sent_at": now,
                    "dispute_by": dispute_by,
                    "updated_at": now,
                },
                where=validation_notices.c.status != "sent",
            )
        )
        woken = await self._conn.execute(
            update(dispatches)
            .where(
                dispatches.c.loan_id == request.loan_id,
                dispatches.c.borrower_id == request.borrower_id,
                dispatches.c.recipient == request.recipient,
                dispatches.c.status == DispatchStatus.DEFERRED.value,
                dispatches.c.rule == wake_rule,
            )
            .values(due_at=now, updated_at=now)
        )
        return int(woken.rowcount or 0)

    async def validation_notice_failed(self, dispatch: Dispatch) -> None:
        """The notice did not go out: the next letter or e-mail may carry it."""
        request = dispatch.request
        await self._conn.execute(
            validation_notices.delete().where(
                validation_notices.c.loan_id == request.loan_id,
                validation_notices.c.person == person_key(request.borrower_id, request.recipient),
                validation_notices.c.command_id == request.command_id,
                validation_notices.c.status == "in_flight",
            )
        )

    async def lock_sending_many(self, owners: Sequence[tuple[str, int]]) -> dict[str, Dispatch]:
        """The rows still ``sending`` for the very attempt given, locked, by command id.

        Any other row's lease ran out and another dispatcher took over: its outcome counts.
        Locked in command-id order, one statement for a whole pass."""
        attempt_of = dict(owners)
        rows = await self._conn.execute(
            select(dispatches)
            .where(
                any_of(dispatches.c.command_id, sorted(attempt_of)),
                dispatches.c.status == DispatchStatus.SENDING.value,
            )
            .order_by(dispatches.c.command_id)
            .with_for_update()
        )
        found = (_dispatch(row) for row in rows)
        return {d.command_id: d for d in found if d.attempts == attempt_of[d.command_id]}

    async def record_sent_many(
        self, sent: Sequence[tuple[DecisionRecord, str, str | None]]
    ) -> list[int]:
        """For each ``(decision, delivery result, provider ref)`` of dispatches that were
        ``sending``: settle the attempt and record the ``sent`` decision, as
        ``settle_attempt`` then ``record`` would, in three statements for all of them.
        Returns each decision's sequence number."""
        if not sent:
            return []
        at = sent[0][0].at
        await update_rows(
            self._conn,
            contact_attempts,
            "command_id",
            [
                {
                    "command_id": r.dispatch.command_id,
                    "result": result,
                    "settles_by": None,
                    "provider_ref": ref,
                    "updated_at": at,
                }
                for r, result, ref in sent
            ],
        )
        seqs = [r.dispatch.decision_seq + 1 for r, _, _ in sent]
        await update_rows(
            self._conn,
            dispatches,
            "command_id",
            [
                {
                    "command_id": r.dispatch.command_id,
                    "status": DispatchStatus.SENT.value,
                    "decision_seq": seq,
                    "reason": r.reason,
                    "rule": r.rule,
                    "updated_at": at,
                }
                for (r, _, _), seq in zip(sent, seqs, strict=True)
            ],
        )
        await insert_rows(
            self._conn,
            contact_decisions,
            [
                {
                    "command_id": r.dispatch.command_id,
                    "seq": seq,
                    "loan_id": r.dispatch.request.loan_id,
                    "channel": r.dispatch.request.channel,
                    "recipient": r.dispatch.request.recipient,
                    "decision": r.decision,
                    "reason": r.reason,
                    "rule": r.rule,
                    "policy_version": r.policy_version,
                    "at": r.at,
                    "due_at": r.due_at,
                }
                for (r, _, _), seq in zip(sent, seqs, strict=True)
            ],
        )
        return seqs

    async def extend_lease(
        self, command_ids: Sequence[str], *, now: datetime, until: datetime
    ) -> None:
        """Keep rows ``sending`` (same attempt) until ``until``: this dispatcher is asking
        the channel what became of them, and nobody else may meanwhile."""
        if not command_ids:
            return
        await self._conn.execute(
            update(dispatches)
            .where(any_of(dispatches.c.command_id, sorted(command_ids)))
            .values(due_at=until, updated_at=now)
        )

    async def notice_in_flight(self, command_id: str) -> bool:
        """Whether this command carries a validation notice still in flight."""
        found = await self._conn.scalar(
            select(validation_notices.c.command_id)
            .where(
                validation_notices.c.command_id == command_id,
                validation_notices.c.status == "in_flight",
            )
            .limit(1)
        )
        return found is not None

    async def in_doubt(self, command_id: str) -> Dispatch | None:
        """The command if it is in doubt, locked."""
        row = (
            await self._conn.execute(
                select(dispatches)
                .where(
                    dispatches.c.command_id == command_id,
                    dispatches.c.status == DispatchStatus.IN_DOUBT.value,
                )
                .with_for_update()
            )
        ).first()
        return _dispatch(row) if row is not None else None

    async def order_resend(
        self, dispatch: Dispatch, *, reason: str, actor: str, policy_version: str, now: datetime
    ) -> None:
        """An operator's order: the command is due again and decided afresh (its attempt
        in doubt keeps counting). The order is in the audit trail with who gave it."""
        await self.record(
            DecisionRecord(
                dispatch=dispatch,
                decision="resend_ordered",
                reason=reason,
                rule=f"operator:{actor}",
                policy_version=policy_version,
                at=now,
                due_at=now,
            ),
            status=DispatchStatus.PENDING,
        )

    # --- delivery receipts -------------------------------------------------------------

    async def claim_receipt(self, receipt: Receipt, *, now: datetime) -> bool:
        """Keep the receipt (as unmatched until ``receipt_effect`` says otherwise); False if
        this provider's receipt id was seen before. A second copy arriving at the same time
        waits here for the first one's transaction, then finds it."""
        row = await self._conn.execute(
            pg_insert(delivery_receipts)
            .values(
                provider=receipt.provider,
                receipt_id=receipt.receipt_id,
                command_id=receipt.reference,
                provider_ref=receipt.provider_ref,
                status=receipt.status,
                effect="unmatched",
                occurred_at=receipt.occurred_at,
                received_at=now,
            )
            .on_conflict_do_nothing(
                index_elements=[delivery_receipts.c.provider, delivery_receipts.c.receipt_id]
            )
            .returning(delivery_receipts.c.provider)
        )
        return row.first() is not None

    async def receipt_target(self, receipt: Receipt) -> tuple[Dispatch, AttemptResult] | None:
        """The command and attempt a receipt is about, locked: by our reference (the
        command id) or else by the provider's id of the message."""
        if receipt.reference is not None:
            match = dispatches.c.command_id == receipt.reference
        elif receipt.provider_ref is not None:
            match = contact_attempts.c.provider_ref == receipt.provider_ref
        else:
            return None
        row = (
            await self._conn.execute(
                select(dispatches, contact_attempts.c.result.label("attempt_result"))
                .select_from(
                    dispatches.join(
                        contact_attempts, contact_attempts.c.command_id == dispatches.c.command_id
                    )
                )
                .where(match)
                .limit(1)
                .with_for_update(of=dispatches)
            )
        ).first()
        return (_dispatch(row), row.attempt_result) if row is not None else None

    async def note_receipt_effect(
        self, receipt: Receipt, *, effect: str, command_id: str | None
    ) -> None:
        await self._conn.execute(
            update(delivery_receipts)
            .where(
                delivery_receipts.c.provider == receipt.provider,
                delivery_receipts.c.receipt_id == receipt.receipt_id,
            )
            .values(effect=effect, command_id=command_id)
        )

    async def settle_by_receipt(
        self, command_id: str, *, result: AttemptResult, provider_ref: str | None, now: datetime
    ) -> None:
        """A handed-over attempt gets the result a receipt reports (its provider id kept
        if the receipt names none)."""
        await self._conn.execute(
            update(contact_attempts)
            .where(contact_attempts.c.command_id == command_id)
            .values(
                result=result,
                settles_by=None,
                updated_at=now,
                provider_ref=func.coalesce(provider_ref, contact_attempts.c.provider_ref),
            )
        )

    async def retry_later(
        self, dispatch: Dispatch, *, now: datetime, due_at: datetime, error: str
    ) -> None:
        await self._conn.execute(
            update(dispatches)
            .where(dispatches.c.command_id == dispatch.command_id)
            .values(
                status=DispatchStatus.PENDING.value, due_at=due_at, last_error=error, updated_at=now
            )
        )

    async def record(
        self, record: DecisionRecord, *, status: DispatchStatus, error: str | None = None
    ) -> int:
        """Apply a decision to its dispatch and append it to the audit trail; returns its
        sequence number (which also numbers the outcome event)."""
        d = record.dispatch
        seq = d.decision_seq + 1
        values: dict[str, Any] = {
            "status": status.value,
            "decision_seq": seq,
            "reason": record.reason,
            "rule": record.rule,
            "updated_at": record.at,
        }
        if record.due_at is not None:
            values["due_at"] = record.due_at
        if error is not None:
            values["last_error"] = error
        # The dispatch's new state rides the audit row's insert (a data-modifying WITH runs
        # whether or not it is read): one round trip, on the path of every cancellation.
        applied = (
            update(dispatches)
            .where(dispatches.c.command_id == d.command_id)
            .values(values)
            .cte("applied")
        )
        if d.status is DispatchStatus.SENDING and status is not DispatchStatus.SENT:
            # Taken over after its lease: whether the first try reached the person is not
            # known, so it keeps counting, but no longer as in flight.
            await self._conn.execute(
                update(contact_attempts)
                .where(
                    contact_attempts.c.command_id == d.command_id,
                    contact_attempts.c.result == "pending",
                )
                .values(result="unknown", settles_by=None, updated_at=record.at)
            )
        await self._conn.execute(
            contact_decisions.insert()
            .values(
                command_id=d.command_id,
                seq=seq,
                loan_id=d.request.loan_id,
                channel=d.request.channel,
                recipient=d.request.recipient,
                decision=record.decision,
                reason=record.reason,
                rule=record.rule,
                policy_version=record.policy_version,
                at=record.at,
                due_at=record.due_at,
            )
            .add_cte(applied)
        )
        return seq

    @staticmethod
    def decisions(records: Sequence[DecisionRecord], *, status: DispatchStatus) -> Along:
        """``record`` for each of ``records`` (each dispatch's next decision; none of them
        ``sending``), as a write to run along the outbox row's (``collections_kit.outbox.
        flush``): one statement for the decisions and the messages that announce them."""
        if any(r.dispatch.status is DispatchStatus.SENDING for r in records):
            raise ValueError("decisions: a dispatch in flight has an attempt to settle")
        return Along(
            _DECISIONS,
            orjson.dumps(
                [
                    [
                        r.dispatch.command_id,
                        r.dispatch.decision_seq + 1,
                        r.dispatch.request.loan_id,
                        r.dispatch.request.channel,
                        r.dispatch.request.recipient,
                        r.decision,
                        r.reason,
                        r.rule,
                        r.policy_version,
                        r.at,
                        r.due_at,
                        status.value,
                    ]
                    for r in records
                ]
            ).decode(),
        )

    async def next_due(self) -> datetime | None:
        due: datetime | None = await self._conn.scalar(
            select(func.min(dispatches.c.due_at)).where(dispatches.c.status.in_(_OPEN))
        )
        return due

    # --- reports ---------------------------------------------------------------------------

    async def decisions_of(self, loan_id: str, *, after_id: int = 0, limit: int = 500) -> list[Any]:
        # A sent decision shows what the channel reported (delivered, answered...).
        delivery = case(
            (contact_decisions.c.decision == "sent", contact_attempts.c.result), else_=None
        ).label("delivery")
        rows = await self._conn.execute(
            select(contact_decisions, delivery)
            .select_from(
                contact_decisions.outerjoin(
                    contact_attempts,
                    contact_attempts.c.command_id == contact_decisions.c.command_id,
                )
            )
            .where(contact_decisions.c.loan_id == loan_id, contact_decisions.c.id > after_id)
            .order_by(contact_decisions.c.id)
            .limit(limit)
        )
        return list(rows)

    async def summary(self) -> dict[str, Any]:
        rows = await self._conn.execute(
            select(
                contact_decisions.c.decision,
                contact_decisions.c.reason,
                contact_decisions.c.rule,
                func.count(),
            )
            .group_by(
                contact_decisions.c.decision, contact_decisions.c.reason, contact_decisions.c.rule
            )
            .order_by(contact_decisions.c.decision, contact_decisions.c.reason)
        )
        by_decision = [
            {"decision": d, "reason": r, "rule": rule, "count": n} for d, r, rule, n in rows
        ]
        totals: dict[str, int] = defaultdict(int)
        for item in by_decision:
            totals[item["decision"]] += item["count"]
        statuses = await self._conn.execute(
            select(dispatches.c.status, func.count()).group_by(dispatches.c.status)
        )
        return {
            "by_decision": by_decision,
            "totals": dict(sorted(totals.items())),
            "dispatches": {s: n for s, n in statuses},
        }


class ContactDetailsRepository:
    def __init__(self, conn: AsyncConnection, ring: KeyRing) -> None:
        self._conn = conn
        self._ring = ring

    async def put(self, details: ContactDetails, *, now: datetime) -> None:
        guarantor = details.guarantor or Party()
        clear = {
            "email": details.debtor.email,
            "phone": details.debtor.phone,
            "postal_address": details.debtor.postal_address,
            "guarantor_name": guarantor.name,
            "guarantor_email": guarantor.email,
            "guarantor_phone": guarantor.phone,
            "guarantor_postal_address": guarantor.postal_address,
        }
        values: dict[str, Any] = {
            "borrower_id": details.borrower_id,
            "language": details.language,
            "updated_at": now,
            **{
                c: self._ring.seal(v, aad=pii_aad("contact_details", c, details.borrower_id))
                for c, v in clear.items()
            },
        }
        stmt = pg_insert(contact_details).values(values)
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[contact_details.c.borrower_id],
                set_={k: stmt.excluded[k] for k in values if k != "borrower_id"},
            )
        )

    async def get(self, borrower_id: str) -> tuple[ContactDetails, datetime] | None:
        row = (
            await self._conn.execute(
                select(contact_details).where(contact_details.c.borrower_id == borrower_id)
            )
        ).first()
        return (_details(row, self._ring), row.updated_at) if row else None


class PreferencesRepository:
    """Opt-outs and do-not-contact, as the person asked through our systems."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def opt_out(
        self, borrower_id: str, party: str, channel: str, *, reason: str, now: datetime
    ) -> None:
        stmt = pg_insert(channel_opt_outs).values(
            borrower_id=borrower_id, party=party, channel=channel, reason=reason, created_at=now
        )
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[
                    channel_opt_outs.c.borrower_id,
                    channel_opt_outs.c.party,
                    channel_opt_outs.c.channel,
                ],
                set_={"reason": stmt.excluded.reason},
            )
        )

    async def opt_in(self, borrower_id: str, party: str, channel: str) -> bool:
        done = await self._conn.execute(
            channel_opt_outs.delete().where(
                channel_opt_outs.c.borrower_id == borrower_id,
                channel_opt_outs.c.party == party,
                channel_opt_outs.c.channel == channel,
            )
        )
        return bool(done.rowcount)

    async def stop_all(self, borrower_id: str, party: str, *, reason: str, now: datetime) -> None:
        stmt = pg_insert(do_not_contact).values(
            borrower_id=borrower_id, party=party, reason=reason, created_at=now
        )
        await self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[do_not_contact.c.borrower_id, do_not_contact.c.party],
                set_={"reason": stmt.excluded.reason},
            )
        )

    async def allow(self, borrower_id: str, party: str) -> bool:
        done = await self._conn.execute(
            do_not_contact.delete().where(
                do_not_contact.c.borrower_id == borrower_id, do_not_contact.c.party == party
            )
        )
        return bool(done.rowcount)

    async def of(self, borrower_id: str) -> tuple[list[Any], list[Any]]:
        opt_outs = list(
            await self._conn.execute(
                select(channel_opt_outs)
                .where(channel_opt_outs.c.borrower_id == borrower_id)
                .order_by(channel_opt_outs.c.party, channel_opt_outs.c.channel)
            )
        )
        stops = list(
            await self._conn.execute(
                select(do_not_contact)
                .where(do_not_contact.c.borrower_id == borrower_id)
                .order_by(do_not_contact.c.party)
            )
        )
        return opt_outs, stops
