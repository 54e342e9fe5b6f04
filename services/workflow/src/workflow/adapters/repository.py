"""Cases, intents, timers and the timeline in PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from collections_kit.clock import derived_id
from collections_kit.db import any_of, insert_rows, on_conflict_update
from workflow.adapters.tables import (
    case_inputs,
    cases,
    contact_intents,
    money_seen,
    timeline,
    timeline_rows,
    timers,
)
from workflow.app.ports import DueTimer
from workflow.domain.decide import timer_is_current
from workflow.domain.measures import CaseHistory, Recorded
from workflow.domain.messages import MoneySeen
from workflow.domain.model import (
    Arrangement,
    ArrangementKind,
    Case,
    CaseStatus,
    ContactIntent,
    Exit,
    Hold,
    HoldKind,
    Instalment,
    IntentStatus,
    PreDelinquency,
    TimelineEntry,
    Timer,
    TimerKind,
)
from workflow.domain.policy import Stage


def _pre_delinquency_json(pre: PreDelinquency | None) -> dict[str, Any] | None:
    if pre is None:
        return None
    return {
        "signal_id": pre.signal_id,
        "kind": pre.kind,
        "score": str(pre.score),
        "observed_at": pre.observed_at.isoformat(),
        "valid_until": pre.valid_until.isoformat(),
    }


def _pre_delinquency(data: dict[str, Any] | None) -> PreDelinquency | None:
    if not data:
        return None
    return PreDelinquency(
        signal_id=data["signal_id"],
        kind=data["kind"],
        score=Decimal(data["score"]),
        observed_at=datetime.fromisoformat(data["observed_at"]),
        valid_until=datetime.fromisoformat(data["valid_until"]),
    )


def _hold_json(hold: Hold | None) -> dict[str, Any] | None:
    if hold is None:
        return None
    return {
        "hold_id": hold.hold_id,
        "kind": hold.kind.value,
        "reason": hold.reason,
        "actor": hold.actor,
        "started_at": hold.started_at.isoformat(),
        "until": hold.until.isoformat() if hold.until else None,
        "effective_from": hold.effective_from.isoformat() if hold.effective_from else None,
    }


def _hold(data: dict[str, Any] | None) -> Hold | None:
    if not data:
        return None
    return Hold(
        hold_id=data["hold_id"],
        kind=HoldKind(data["kind"]),
        reason=data["reason"],
        actor=data["actor"],
        started_at=datetime.fromisoformat(data["started_at"]),
        until=datetime.fromisoformat(data["until"]) if data.get("until") else None,
        effective_from=datetime.fromisoformat(data["effective_from"])
        if data.get("effective_from")
        else None,
    )


def _arrangement_json(a: Arrangement | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {
        "arrangement_id": a.arrangement_id,
        "kind": a.kind.value,
        "schedule": [{"due_at": i.due_at.isoformat(), "amount": str(i.amount)} for i in a.schedule],
        "created_at": a.created_at.isoformat(),
        "paid": str(a.paid),
        "interest_reduction": str(a.interest_reduction)
        if a.interest_reduction is not None
        else None,
        "note": a.note,
        "outcome": a.outcome,
        "ended_at": a.ended_at.isoformat() if a.ended_at else None,
    }


def _arrangement(data: dict[str, Any] | None) -> Arrangement | None:
    if not data:
        return None
    return Arrangement(
        arrangement_id=data["arrangement_id"],
        kind=ArrangementKind(data["kind"]),
        schedule=tuple(
            Instalment(datetime.fromisoformat(i["due_at"]), Decimal(i["amount"]))
            for i in data["schedule"]
        ),
        created_at=datetime.fromisoformat(data["created_at"]),
        paid=Decimal(data["paid"]),
        interest_reduction=Decimal(data["interest_reduction"])
        if data.get("interest_reduction") is not None
        else None,
        note=data.get("note", ""),
        outcome=data.get("outcome"),
        ended_at=datetime.fromisoformat(data["ended_at"]) if data.get("ended_at") else None,
    )


def case_from_row(row: Any) -> Case:
    m = row._mapping  # by key: a Row's attribute access costs ten times more
    return Case(
        case_id=m["case_id"],
        loan_id=m["loan_id"],
        borrower_id=m["borrower_id"],
        product=m["product"],
        currency=m["currency"],
        stage=Stage(m["stage"]),
        status=CaseStatus(m["status"]),
        exit=Exit(m["exit"]) if m["exit"] else None,
        outstanding=m["outstanding"],
        amount_overdue=m["amount_overdue"],
        days_past_due=m["days_past_due"],
        last_overdue_as_of=m["last_overdue_as_of"],
        borrower_time_zone=m["borrower_time_zone"],
        jurisdiction=m["jurisdiction"],
        policy_version=m["policy_version"],
        opened_at=m["opened_at"],
        updated_at=m["updated_at"],
        stage_epoch=m["stage_epoch"],
        stage_entered_at=m["stage_entered_at"],
        outstanding_at_stage_entry=m["outstanding_at_stage_entry"],
        hold=_hold(m["hold"]),
        arrangement=_arrangement(m["arrangement"]),
        last_arrangement=_arrangement(m["last_arrangement"]),
        unanswered_contacts=m["unanswered_contacts"],
        milestones=tuple(m["milestones"] or ()),
        money_applied_at=m["money_applied_at"],
        refused_proposals=tuple(datetime.fromisoformat(at) for at in m["refused_proposals"]),
        variant=m["variant"],
        pre_delinquency=_pre_delinquency(m["pre_delinquency"]),
    )


def _case_values(case: Case, next_action_at: datetime | None) -> dict[str, Any]:
    return {
        "case_id": case.case_id,
        "loan_id": case.loan_id,
        "borrower_id": case.borrower_id,
        "product": case.product,
        "currency": case.currency,
        "stage": case.stage.value,
        "status": case.status.value,
        "exit": case.exit.value if case.exit else None,
        "outstanding": case.outstanding,
        "amount_overdue": case.amount_overdue,
        "days_past_due": case.days_past_due,
        "last_overdue_as_of": case.last_overdue_as_of,
        "borrower_time_zone": case.borrower_time_zone,
        "jurisdiction": case.jurisdiction,
        "policy_version": case.policy_version,
        "variant": case.variant,
        "opened_at": case.opened_at,
        "updated_at": case.updated_at,
        "stage_epoch": case.stage_epoch,
        "stage_entered_at": case.stage_entered_at,
        "outstanding_at_stage_entry": case.outstanding_at_stage_entry,
        "hold": _hold_json(case.hold),
        "arrangement": _arrangement_json(case.arrangement),
        "last_arrangement": _arrangement_json(case.last_arrangement),
        "unanswered_contacts": case.unanswered_contacts,
        "milestones": list(case.milestones),
        "next_action_at": next_action_at,
        "money_applied_at": case.money_applied_at,
        "refused_proposals": [at.isoformat() for at in case.refused_proposals],
        "pre_delinquency": _pre_delinquency_json(case.pre_delinquency),
    }


def _intent_values(i: ContactIntent) -> dict[str, Any]:
    return {
        "intent_id": i.intent_id,
        "case_id": i.case_id,
        "loan_id": i.loan_id,
        "stage": i.stage.value,
        "channel": i.channel,
        "recipient": i.recipient,
        "template": i.template,
        "status": i.status.value,
        "reason": i.reason,
        "command_id": i.command_id,
        "confirmation_id": i.confirmation_id,
        "created_at": i.created_at,
        "check_id": i.check_id,
        "attempts": i.attempts,
    }


@dataclass
class BatchState:
    """The cases a batch touches, in memory while its inputs are decided in order."""

    cases: dict[str, Case]  # by loan id
    intents: dict[str, dict[str, ContactIntent]] = field(default_factory=dict)  # by case id
    # Unfired timers by case id: timer id -> (kind, token, due at).
    timers: dict[str, dict[str, tuple[TimerKind, str, datetime]]] = field(default_factory=dict)
    changed_cases: dict[str, Case] = field(default_factory=dict)  # by case id
    changed_intents: dict[str, ContactIntent] = field(default_factory=dict)
    # Entries no journalled input wrote (``timeline_rows``), and the journal's rows, which
    # hold the entries their input wrote (migration 0021).
    timeline_rows: list[dict[str, Any]] = field(default_factory=list)
    new_timers: list[dict[str, Any]] = field(default_factory=list)
    journal_rows: list[dict[str, Any]] = field(default_factory=list)
    journalled: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # Money seen of loans without a case (by loan id), and what the batch changed of it.
    money: dict[str, MoneySeen] = field(default_factory=dict)
    remembered: dict[str, MoneySeen] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)

    def remember(self, loan_id: str, seen: MoneySeen) -> None:
        """Keep the newest money fact of a loan without a case (by the lender's time)."""
        known = self.money.get(loan_id)
        if known is None or seen.at >= known.at:
            self.money[loan_id] = self.remembered[loan_id] = seen
            self.forgotten.discard(loan_id)

    def forget(self, loan_id: str) -> None:
        """The loan's case opened with what was seen: from now on its case keeps it."""
        if self.money.pop(loan_id, None) is not None:
            self.remembered.pop(loan_id, None)
            self.forgotten.add(loan_id)

    def journal(
        self,
        subject: Case,
        input_type: str,
        payload: Any,
        *,
        at: datetime,
        actor: str,
        cause_id: str,
    ) -> None:
        """Journal the input ``cause_id`` that ``subject``'s decision was made from; the
        timeline entries :meth:`record` takes for it, at the same time by the same actor,
        go into its row."""
        row = {
            "case_id": subject.case_id,
            "loan_id": subject.loan_id,
            "at": at,
            "cause_id": cause_id,
            "input_type": input_type,
            "payload": payload,
            "actor": actor,
            "entries": [],
        }
        self.journal_rows.append(row)
        self.journalled[(subject.case_id, cause_id)] = row

    def record(
        self,
        before: Case | None,
        case: Case | None,
        intents: Sequence[ContactIntent],
        entries: Sequence[TimelineEntry],
        new_timers: Sequence[Timer],
        *,
        at: datetime,
        actor: str,
        cause_id: str,
    ) -> Case | None:
        subject = case or before
        if subject is None:
            return None
        if case is not None:
            self.cases[case.loan_id] = case
            self.changed_cases[case.case_id] = case
        known = self.intents.setdefault(subject.case_id, {})
        for intent in intents:
            known[intent.intent_id] = intent
            self.changed_intents[intent.intent_id] = intent
        written = [
            {
                "kind": e.kind,
                "cause": e.cause,
                "stage_before": e.stage_before.value if e.stage_before else None,
                "stage_after": e.stage_after.value if e.stage_after else None,
                "status_before": e.status_before.value if e.status_before else None,
                "status_after": e.status_after.value if e.status_after else None,
                "policy_version": e.policy_version,
                # Champion-challenger: every entry a case writes (its decisions and its
                # placements alike) names the case's variant, so results compare per variant.
                "detail": {**e.detail, "variant": subject.variant} if subject.variant else e.detail,
            }
            for e in entries
        ]
        journal = self.journalled.get((subject.case_id, cause_id))
        if journal is not None and journal["at"] == at and journal["actor"] == actor:
            journal["entries"].extend(written)
        else:
            self.timeline_rows.extend(
                {
                    "case_id": subject.case_id,
                    "loan_id": subject.loan_id,
                    "at": at,
                    "actor": actor,
                    **entry,
                }
                for entry in written
            )
        for t in new_timers:
            timer_id = derived_id(cause_id, f"timer/{t.kind}/{t.token}")
            self.timers.setdefault(subject.case_id, {})[timer_id] = (t.kind, t.token, t.due_at)
            self.new_timers.append(
                {
                    "timer_id": timer_id,
                    "case_id": subject.case_id,
                    "loan_id": subject.loan_id,
                    "kind": t.kind.value,
                    "token": t.token,
                    "due_at": t.due_at,
                }
            )
        if new_timers and case is None:
            self.changed_cases[subject.case_id] = subject  # its next action moved
        return subject


def intent_from_row(row: Any) -> ContactIntent:
    m = row._mapping  # by key: a Row's attribute access costs ten times more
    return ContactIntent(
        intent_id=m["intent_id"],
        case_id=m["case_id"],
        loan_id=m["loan_id"],
        stage=Stage(m["stage"]),
        channel=m["channel"],
        recipient=m["recipient"],
        template=m["template"],
        status=IntentStatus(m["status"]),
        created_at=m["created_at"],
        reason=m["reason"],
        command_id=m["command_id"],
        confirmation_id=m["confirmation_id"],
        check_id=m["check_id"],
        attempts=m["attempts"],
    )


_INTENT_UPSERT = on_conflict_update(
    "intent_id", ("status", "reason", "command_id", "confirmation_id", "check_id", "attempts")
)

# Only a newer fact replaces the one kept (by the lending system's time).
_NEWER_MONEY = (
    on_conflict_update(
        "loan_id",
        ("event_id", "kind", "repayment_id", "amount", "outstanding_after", "at", "seen_at"),
    )
    + ' WHERE "money_seen".at <= EXCLUDED.at'
)

# Timeline kinds of the outcomes that say a contact was made (see decide._outcome).
_CONTACT_MADE = (
    "contact_sent",
    "contact_delivered",
    "contact_answered",
    "contact_unanswered",
    "contact_in_doubt",
)  # in doubt: it may have reached the borrower

_PENDING = (IntentStatus.AWAITING_CONFIRMATION.value, IntentStatus.AWAITING_RECHECK.value)


class CaseRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get(self, loan_id: str, *, lock: bool = False) -> Case | None:
        stmt = select(cases).where(cases.c.loan_id == loan_id)
        if lock:
            # Serialises the handlers of one loan across replicas, timers and the REST API.
            stmt = stmt.with_for_update()
        row = (await self._conn.execute(stmt)).first()
        return case_from_row(row) if row else None

    async def intents_of(self, case_id: str) -> list[ContactIntent]:
        rows = await self._conn.execute(
            select(contact_intents)
            .where(contact_intents.c.case_id == case_id)
            .order_by(contact_intents.c.created_at, contact_intents.c.intent_id)
        )
        return [intent_from_row(r) for r in rows]

    async def load_for_batch(
        self, loan_ids: Sequence[str], check_ids: Sequence[str], intent_ids: Sequence[str]
    ) -> BatchState:
        """Everything a batch of inputs for these loans decides on, in three queries.

        Cases are locked in loan-id order, the order every writer uses, so concurrent
        batches and timers serialise per loan without deadlocking.
        """
        rows = (
            await self._conn.execute(
                select(cases)
                .where(any_of(cases.c.loan_id, sorted(set(loan_ids))))
                .order_by(cases.c.loan_id)
                .with_for_update()
            )
        ).all()
        state = BatchState({case.loan_id: case for case in map(case_from_row, rows)})
        caseless = sorted(set(loan_ids) - state.cases.keys())
        if caseless:
            await self._load_caseless(state, caseless)
        case_ids = [c.case_id for c in state.cases.values()]
        if not case_ids:
            return state
        wanted: list[ColumnElement[bool]] = [contact_intents.c.status.in_(_PENDING)]
        if check_ids:
            wanted.append(any_of(contact_intents.c.check_id, check_ids))
        if intent_ids:
            wanted.append(any_of(contact_intents.c.intent_id, intent_ids))
        for r in await self._conn.execute(
            select(contact_intents).where(any_of(contact_intents.c.case_id, case_ids), or_(*wanted))
        ):
            intent = intent_from_row(r)
            state.intents.setdefault(intent.case_id, {})[intent.intent_id] = intent
        for r in await self._conn.execute(
            select(
                timers.c.timer_id, timers.c.case_id, timers.c.kind, timers.c.token, timers.c.due_at
            ).where(any_of(timers.c.case_id, case_ids), timers.c.fired_at.is_(None))
        ):
            state.timers.setdefault(r.case_id, {})[r.timer_id] = (
                TimerKind(r.kind),
                r.token,
                r.due_at,
            )
        return state

    async def _load_caseless(self, state: BatchState, loan_ids: Sequence[str]) -> None:
        """Serialise loans without a case row (no row to lock yet), then read what was
        seen of their money.

        Without the lock a repayment and the overdue report that opens the case, decided
        in two transactions at once, would each see no case: the repayment remembered for
        a loan that has a case by then, and forgotten. After the lock (a new statement,
        so a new snapshot) a case committed meanwhile is read and locked like the rest.
        """
        await self._conn.execute(
            text(
                "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(l, 0) AS k "
                "FROM unnest(CAST(:loans AS text[])) AS l ORDER BY k) AS keys"
            ),
            {"loans": list(loan_ids)},
        )
        for row in (
            await self._conn.execute(
                select(cases)
                .where(any_of(cases.c.loan_id, loan_ids))
                .order_by(cases.c.loan_id)
                .with_for_update()
            )
        ).all():
            case = case_from_row(row)
            state.cases[case.loan_id] = case
        for r in await self._conn.execute(
            select(money_seen).where(
                any_of(money_seen.c.loan_id, [i for i in loan_ids if i not in state.cases])
            )
        ):
            state.money[r.loan_id] = MoneySeen(
                event_id=r.event_id,
                kind=r.kind,
                repayment_id=r.repayment_id,
                amount=r.amount,
                outstanding_after=r.outstanding_after,
                at=r.at,
            )

    async def prune_money_seen(self, before: datetime, *, limit: int = 10_000) -> int:
        """Forget money seen before ``before`` of loans that never had a case since."""
        oldest = (
            select(money_seen.c.loan_id)
            .where(money_seen.c.seen_at < before)
            .limit(limit)
            .scalar_subquery()
        )
        result = await self._conn.execute(
            delete(money_seen).where(money_seen.c.loan_id.in_(oldest))
        )
        return int(result.rowcount or 0)

    async def write_batch(self, state: BatchState, at: datetime) -> None:
        """Persist what a batch changed: one multi-row statement per table."""
        superseded: list[str] = []
        case_rows = []
        for case in state.changed_cases.values():
            live = []
            for timer_id, (kind, token, due_at) in state.timers.get(case.case_id, {}).items():
                if timer_is_current(case, kind, token):
                    live.append(due_at)
                else:
                    superseded.append(timer_id)
            case_rows.append(_case_values(case, min(live) if live else None))
        if case_rows:
            # Every column written but the key and the opening time.
            await insert_rows(
                self._conn,
                cases,
                case_rows,
                on_conflict=on_conflict_update(
                    "case_id", [k for k in case_rows[0] if k not in ("case_id", "opened_at")]
                ),
            )
        await insert_rows(
            self._conn,
            contact_intents,
            [_intent_values(i) for i in state.changed_intents.values()],
            on_conflict=_INTENT_UPSERT,
        )
        gone = set(superseded)
        await insert_rows(
            self._conn,
            timers,
            [
                {
                    **row,
                    "fired_at": at if row["timer_id"] in gone else None,
                    "outcome": "superseded" if row["timer_id"] in gone else None,
                }
                for row in state.new_timers
            ],
            on_conflict="ON CONFLICT DO NOTHING",
        )
        new_ids = {row["timer_id"] for row in state.new_timers}
        stale_existing = [t for t in superseded if t not in new_ids]
        if stale_existing:
            await self._conn.execute(
                update(timers)
                .where(any_of(timers.c.timer_id, stale_existing))
                .values(fired_at=at, outcome="superseded")
            )
        await insert_rows(self._conn, case_inputs, state.journal_rows)
        # After the journal: ids rise in the order entries are written (see tables.timeline).
        await insert_rows(self._conn, timeline_rows, state.timeline_rows)
        await insert_rows(
            self._conn,
            money_seen,
            [
                {
                    "loan_id": loan_id,
                    "event_id": f.event_id,
                    "kind": f.kind,
                    "repayment_id": f.repayment_id,
                    "amount": f.amount,
                    "outstanding_after": f.outstanding_after,
                    "at": f.at,
                    "seen_at": at,
                }
                for loan_id, f in state.remembered.items()
            ],
            on_conflict=_NEWER_MONEY,
        )
        if state.forgotten:
            await self._conn.execute(
                delete(money_seen).where(any_of(money_seen.c.loan_id, sorted(state.forgotten)))
            )

    async def timeline_of(self, case_id: str, *, after_id: int = 0, limit: int = 500) -> list[Any]:
        rows = await self._conn.execute(
            select(timeline)
            .where(timeline.c.case_id == case_id, timeline.c.id > after_id)
            .order_by(timeline.c.id)
            .limit(limit)
        )
        return list(rows)

    async def contacts_made_during(self, case_id: str, hold: Hold) -> list[dict[str, Any]]:
        """Contacts the notifier reported made (sent, delivered, answered or not) while the
        hold was in effect: for a backdated hold, those before the lender heard of it.

        Read off the outcomes consumed (the timeline), each contact once, at the time it
        was made (the time it was consumed, for outcomes journalled before that was kept).
        """
        rows = await self._conn.execute(
            select(timeline.c.at, timeline.c.kind, timeline.c.detail)
            .where(
                timeline.c.case_id == case_id,
                timeline.c.at >= hold.since,
                timeline.c.kind.in_(_CONTACT_MADE),
            )
            .order_by(timeline.c.id)
        )
        made: dict[str, dict[str, Any]] = {}
        for at, kind, detail in rows:
            occurred = (
                datetime.fromisoformat(detail["occurred_at"]) if detail.get("occurred_at") else at
            )
            command_id = detail.get("command_id") or ""
            if (
                occurred < hold.since
                or (hold.until is not None and occurred >= hold.until)
                or command_id in made
            ):
                continue
            made[command_id] = {
                "command_id": command_id,
                "intent_id": detail.get("intent_id"),
                "channel": detail.get("channel"),
                "outcome": kind.removeprefix("contact_"),
                "occurred_at": occurred,
            }
        return sorted(made.values(), key=lambda c: c["occurred_at"])

    async def list_cases(
        self,
        *,
        stage: str | None,
        status: str | None,
        dpd_min: int | None,
        dpd_max: int | None,
        next_action_before: datetime | None,
        after: str | None,
        limit: int,
    ) -> list[Case]:
        """Keyset pagination on loan id: stable under inserts, cheap at any depth."""
        conditions: list[ColumnElement[bool]] = []
        if stage:
            conditions.append(cases.c.stage == stage)
        if status:
            conditions.append(cases.c.status == status)
        if dpd_min is not None:
            conditions.append(cases.c.days_past_due >= dpd_min)
        if dpd_max is not None:
            conditions.append(cases.c.days_past_due <= dpd_max)
        if next_action_before is not None:
            conditions.append(cases.c.next_action_at <= next_action_before)
        if after:
            conditions.append(cases.c.loan_id > after)
        rows = await self._conn.execute(
            select(cases).where(and_(True, *conditions)).order_by(cases.c.loan_id).limit(limit)
        )
        return [case_from_row(r) for r in rows]

    async def next_actions(self, case_ids: Sequence[str]) -> dict[str, datetime | None]:
        if not case_ids:
            return {}
        rows = await self._conn.execute(
            select(cases.c.case_id, cases.c.next_action_at).where(any_of(cases.c.case_id, case_ids))
        )
        return {r.case_id: r.next_action_at for r in rows}

    async def summary(self) -> dict[str, Any]:
        by_stage = await self._conn.execute(
            select(
                cases.c.status, cases.c.stage, cases.c.exit, cases.c.variant, func.count()
            ).group_by(cases.c.status, cases.c.stage, cases.c.exit, cases.c.variant)
        )
        by_intent = await self._conn.execute(
            select(contact_intents.c.status, contact_intents.c.reason, func.count()).group_by(
                contact_intents.c.status, contact_intents.c.reason
            )
        )
        return {
            "cases": [
                {"status": s, "stage": st, "exit": ex, "variant": v, "count": n}
                for s, st, ex, v, n in by_stage
            ],
            "intents": [{"status": s, "reason": r, "count": n} for s, r, n in by_intent],
        }

    async def histories(
        self, start: datetime, end: datetime, *, after: str = "", limit: int | None = None
    ) -> list[CaseHistory]:
        """The timelines the measures of ``[start, end)`` read (domain/measures.py): of
        every case opened before ``end`` that is not closed now or has an entry since
        ``start`` (a case closed before ``start`` and quiet since adds nothing), its
        entries before ``end`` in the order written. A page: up to ``limit`` such cases
        after case id ``after``, in case id order."""
        touched = (
            select(timeline.c.id)
            .where(timeline.c.case_id == cases.c.case_id, timeline.c.at >= start)
            .exists()
        )
        chosen = (
            select(cases.c.case_id, cases.c.product, cases.c.jurisdiction, cases.c.variant)
            .where(
                cases.c.opened_at < end,
                cases.c.case_id > after,
                or_(cases.c.status != "closed", touched),
            )
            .order_by(cases.c.case_id)
            .limit(limit)
            .cte("chosen")
        )
        # Lateral, and kept a subquery (OFFSET 0: the planner would flatten it into a join):
        # each case's entries are read by its id through the indexes of the view's two
        # sources. Joined whole, the view expands every journal row's entries (1.5 s for a
        # page of 2,000 cases against 600,000 journal rows; this way, milliseconds).
        written = (
            select(
                timeline.c.id,
                timeline.c.at,
                timeline.c.kind,
                timeline.c.stage_before,
                timeline.c.stage_after,
                timeline.c.status_before,
                timeline.c.status_after,
                timeline.c.detail,
            )
            .where(timeline.c.case_id == chosen.c.case_id, timeline.c.at < end)
            .offset(0)
            .lateral("written")
        )
        rows = await self._conn.execute(
            select(
                chosen.c.case_id,
                chosen.c.product,
                chosen.c.jurisdiction,
                chosen.c.variant,
                written.c.at,
                written.c.kind,
                written.c.stage_before,
                written.c.stage_after,
                written.c.status_before,
                written.c.status_after,
                written.c.detail,
            )
            # Outer: every chosen case is in the page, entries or not, so a short page
            # means the last one.
            .select_from(chosen.outerjoin(written, true()))
            .order_by(chosen.c.case_id, written.c.id)
        )
        found: dict[str, tuple[Any, list[Recorded]]] = {}
        for r in rows:
            _, entries = found.setdefault(r.case_id, (r, []))
            if r.kind is None:
                continue
            entries.append(
                Recorded(
                    at=r.at,
                    kind=r.kind,
                    stage_before=r.stage_before,
                    stage_after=r.stage_after,
                    status_before=r.status_before,
                    status_after=r.status_after,
                    detail=r.detail,
                )
            )
        return [
            CaseHistory(
                case_id=case_id,
                product=first.product,
                jurisdiction=first.jurisdiction,
                variant=first.variant,
                entries=tuple(entries),
            )
            for case_id, (first, entries) in found.items()
        ]


# Past-due timers are counted up to this many (the gauge needs no more).
_OVERDUE_COUNT_CAP = 100_000


class TimerRepository:
    """Durable timers. The partial index on unfired timers keeps every read here cheap."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def due(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        rows = await self._conn.execute(
            select(timers.c.timer_id, timers.c.loan_id)
            .where(timers.c.fired_at.is_(None), timers.c.due_at <= now)
            .order_by(timers.c.due_at)
            .limit(limit)
        )
        return [(timer_id, loan_id) for timer_id, loan_id in rows]

    async def lock_unfired(self, timer_id: str) -> DueTimer | None:
        # SKIP LOCKED: a timer another replica is firing is its to fire.
        row = (
            await self._conn.execute(
                select(timers)
                .where(timers.c.timer_id == timer_id, timers.c.fired_at.is_(None))
                .with_for_update(skip_locked=True)
            )
        ).first()
        if row is None:
            return None
        return DueTimer(row.timer_id, row.loan_id, row.kind, row.token, row.due_at)

    async def mark_fired(self, timer_id: str, at: datetime) -> None:
        await self._conn.execute(
            update(timers).where(timers.c.timer_id == timer_id).values(fired_at=at, outcome="fired")
        )

    async def next_due(self) -> datetime | None:
        due: datetime | None = await self._conn.scalar(
            select(func.min(timers.c.due_at)).where(timers.c.fired_at.is_(None))
        )
        return due

    async def overdue(self, now: datetime) -> tuple[int, datetime | None]:
        overdue = (timers.c.fired_at.is_(None)) & (timers.c.due_at <= now)
        count = await self._conn.scalar(
            select(func.count()).select_from(
                select(timers.c.timer_id).where(overdue).limit(_OVERDUE_COUNT_CAP).subquery()
            )
        )
        oldest: datetime | None = await self._conn.scalar(
            select(func.min(timers.c.due_at)).where(overdue)
        )
        return int(count or 0), oldest
