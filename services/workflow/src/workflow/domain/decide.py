"""The workflow's decisions: ``(case, intents, message, policy, now) -> Decision``.

Pure functions. They never read a clock or mint random ids: ``now`` is given and ids come
from ``new_id(label)``, which the app derives from the causing event, so replaying an
event yields the same decision to the letter.

Rules worth knowing (also in the README):
- An overdue report older than (or as old as) the last one applied changes nothing.
- A case escalates at most one stage per overdue report: no stage is skipped.
- No contact command without a ledger confirmation for that very intent, and none for a
  case that is not open or an intent that is no longer pending.
- A full repayment (lending system's balance within tolerance) closes the case as repaid
  and cancels every pending intent; a cancellation goes to the notifier too.
- A reversal reopens a repaid case at the stage it left; its contacts need a new
  confirmation, because the earlier ones were for money since repaid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from workflow.domain import messages as m
from workflow.domain.model import (
    Case,
    CaseStatus,
    ContactIntent,
    Exit,
    IntentStatus,
    TimelineEntry,
)
from workflow.domain.policy import EscalationPolicy, Stage, next_stage

NewId = Callable[[str], str]


@dataclass(frozen=True)
class RequestBalanceCheck:
    intent: ContactIntent
    expected_outstanding: Decimal


@dataclass(frozen=True)
class IssueContactCommand:
    intent: ContactIntent
    confirmation: m.BalanceConfirmed


@dataclass(frozen=True)
class CancelContacts:
    reason: str


@dataclass(frozen=True)
class AnnounceCaseOpened:
    pass


@dataclass(frozen=True)
class AnnounceStageChanged:
    from_stage: Stage
    to_stage: Stage
    cause: str


@dataclass(frozen=True)
class AnnounceCaseClosed:
    exit: Exit
    cause: str


Effect = (RequestBalanceCheck | IssueContactCommand | CancelContacts | AnnounceCaseOpened
          | AnnounceStageChanged | AnnounceCaseClosed)


@dataclass(frozen=True)
class Decision:
    case: Case | None
    # New or changed intents, to be saved.
    intents: tuple[ContactIntent, ...] = ()
    effects: tuple[Effect, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()


def _entry(kind: str, cause: str, before: Case | None, after: Case | None,
           policy: EscalationPolicy, **detail: object) -> TimelineEntry:
    return TimelineEntry(
        kind=kind, cause=cause,
        stage_before=before.stage if before else None,
        stage_after=after.stage if after else None,
        status_before=before.status if before else None,
        status_after=after.status if after else None,
        policy_version=policy.version,
        detail=dict(detail),
    )


def _plan_contacts(case: Case, policy: EscalationPolicy, now: datetime,
                   new_id: NewId) -> tuple[tuple[ContactIntent, ...], tuple[Effect, ...]]:
    intents = tuple(
        ContactIntent(
            intent_id=new_id(f"intent/{case.stage}/{i}"), case_id=case.case_id,
            loan_id=case.loan_id, stage=case.stage, channel=plan.channel,
            recipient=plan.recipient, template=plan.template,
            status=IntentStatus.AWAITING_CONFIRMATION, created_at=now,
        )
        for i, plan in enumerate(policy.for_stage(case.stage).contacts)
    )
    return intents, tuple(RequestBalanceCheck(i, case.outstanding) for i in intents)


def _cancel_pending(pending: Sequence[ContactIntent], reason: str) -> tuple[ContactIntent, ...]:
    return tuple(replace(i, status=IntentStatus.CANCELLED, reason=reason)
                 for i in pending if i.is_pending)


def on_overdue(case: Case | None, pending: Sequence[ContactIntent], event: m.OverdueReported,
               policy: EscalationPolicy, now: datetime, new_id: NewId) -> Decision:
    cause = f"event:{event.event_id}"
    if case is None:
        opened = Case(
            case_id=new_id("case"), loan_id=event.loan_id, borrower_id=event.borrower_id,
            product=event.product, currency=event.currency, stage=Stage.WARNING,
            status=CaseStatus.OPEN, exit=None, outstanding=event.outstanding,
            amount_overdue=event.amount_overdue, days_past_due=event.days_past_due,
            last_overdue_as_of=event.as_of, borrower_time_zone=event.borrower_time_zone,
            jurisdiction=event.jurisdiction, policy_version=policy.version,
            opened_at=now, updated_at=now,
        )
        intents, effects = _plan_contacts(opened, policy, now, new_id)
        return Decision(
            case=opened, intents=intents, effects=(AnnounceCaseOpened(), *effects),
            timeline=(
                _entry("case_opened", cause, None, opened, policy,
                       days_past_due=event.days_past_due, outstanding=str(event.outstanding)),
                *(_entry("contact_intent_recorded", cause, opened, opened, policy,
                         intent_id=i.intent_id, channel=i.channel, recipient=i.recipient)
                  for i in intents),
            ),
        )
    if event.as_of <= case.last_overdue_as_of:
        return Decision(case=None, timeline=(_entry(
            "stale_overdue_ignored", cause, case, case, policy,
            as_of=event.as_of.isoformat(), applied_as_of=case.last_overdue_as_of.isoformat()),))
    if not case.is_open:
        return Decision(case=None, timeline=(_entry(
            "overdue_after_close_ignored", cause, case, case, policy,
            days_past_due=event.days_past_due),))
    updated = replace(case, outstanding=event.outstanding, amount_overdue=event.amount_overdue,
                      days_past_due=event.days_past_due, last_overdue_as_of=event.as_of,
                      updated_at=now)
    target = next_stage(case.stage)
    if target is None or event.days_past_due < policy.for_stage(target).min_days_past_due:
        return Decision(case=updated)
    escalated = replace(updated, stage=target, policy_version=policy.version)
    intents, effects = _plan_contacts(escalated, policy, now, new_id)
    superseded = _cancel_pending(pending, "superseded_by_escalation")
    return Decision(
        case=escalated, intents=superseded + intents,
        effects=(AnnounceStageChanged(case.stage, target, "days_past_due"), *effects),
        timeline=(
            _entry("stage_changed", cause, case, escalated, policy, trigger="days_past_due",
                   days_past_due=event.days_past_due),
            *(_entry("contact_intent_recorded", cause, escalated, escalated, policy,
                     intent_id=i.intent_id, channel=i.channel, recipient=i.recipient)
              for i in intents),
        ),
    )


def on_balance_confirmed(case: Case, intent: ContactIntent, event: m.BalanceConfirmed,
                         policy: EscalationPolicy, now: datetime, new_id: NewId) -> Decision:
    cause = f"event:{event.event_id}"
    if not case.is_open or not intent.is_pending:
        return Decision(case=None, timeline=(_entry(
            "confirmation_not_used", cause, case, case, policy, intent_id=intent.intent_id,
            why="case closed" if not case.is_open else f"intent {intent.status}"),))
    if event.valid_until <= now:
        return Decision(case=None, timeline=(_entry(
            "confirmation_expired", cause, case, case, policy, intent_id=intent.intent_id),))
    commanded = replace(intent, status=IntentStatus.COMMANDED,
                        command_id=new_id("command"), confirmation_id=event.confirmation_id)
    return Decision(
        case=replace(case, outstanding=event.confirmed_outstanding, updated_at=now),
        intents=(commanded,),
        effects=(IssueContactCommand(commanded, event),),
        timeline=(_entry("contact_commanded", cause, case, case, policy,
                         intent_id=intent.intent_id, command_id=commanded.command_id,
                         channel=intent.channel, confirmation_id=event.confirmation_id,
                         confirmed_outstanding=str(event.confirmed_outstanding),
                         ledger_watermark=event.ledger_watermark),),
    )


def on_balance_refused(case: Case, intent: ContactIntent, pending: Sequence[ContactIntent],
                       event: m.BalanceRefused, policy: EscalationPolicy,
                       now: datetime) -> Decision:
    cause = f"event:{event.event_id}"
    if event.reason == "nothing_owed" and case.is_open:
        # The ledger says the debt is gone: the case closes, whatever our own view was.
        closed = replace(case, status=CaseStatus.CLOSED, exit=Exit.REPAID,
                         outstanding=Decimal("0"), updated_at=now)
        return Decision(
            case=closed, intents=_cancel_pending(pending, "ledger_nothing_owed"),
            effects=(CancelContacts("repaid"), AnnounceCaseClosed(Exit.REPAID, "ledger")),
            timeline=(_entry("case_closed", cause, case, closed, policy,
                             exit="repaid", trigger="ledger_nothing_owed",
                             intent_id=intent.intent_id),),
        )
    if not intent.is_pending:
        return Decision(case=None)
    refused = replace(intent, status=IntentStatus.REFUSED, reason=event.reason)
    return Decision(case=None, intents=(refused,), timeline=(_entry(
        "contact_suppressed", cause, case, case, policy, intent_id=intent.intent_id,
        reason=event.reason, detail=event.detail),))


def on_repayment(case: Case, pending: Sequence[ContactIntent], event: m.RepaymentReceived,
                 policy: EscalationPolicy, now: datetime) -> Decision:
    cause = f"event:{event.event_id}"
    if not case.is_open:
        return Decision(case=None, timeline=(_entry(
            "repayment_recorded", cause, case, case, policy, amount=str(event.amount),
            repayment_id=event.repayment_id),))
    if event.outstanding_after <= policy.tolerance:
        closed = replace(case, status=CaseStatus.CLOSED, exit=Exit.REPAID,
                         outstanding=event.outstanding_after, updated_at=now)
        return Decision(
            case=closed, intents=_cancel_pending(pending, "repaid"),
            effects=(CancelContacts("repaid"), AnnounceCaseClosed(Exit.REPAID, "repayment")),
            timeline=(_entry("case_closed", cause, case, closed, policy, exit="repaid",
                             amount=str(event.amount), repayment_id=event.repayment_id),),
        )
    updated = replace(case, outstanding=event.outstanding_after, updated_at=now)
    return Decision(case=updated, timeline=(_entry(
        "partial_repayment", cause, case, updated, policy, amount=str(event.amount),
        outstanding_after=str(event.outstanding_after), repayment_id=event.repayment_id),))


def on_reversal(case: Case, event: m.RepaymentReversed, policy: EscalationPolicy,
                now: datetime, new_id: NewId) -> Decision:
    cause = f"event:{event.event_id}"
    if case.status is CaseStatus.CLOSED and case.exit is Exit.REPAID \
            and event.outstanding_after > policy.tolerance:
        reopened = replace(case, status=CaseStatus.OPEN, exit=None,
                           outstanding=event.outstanding_after, updated_at=now)
        intents, effects = _plan_contacts(reopened, policy, now, new_id)
        return Decision(
            case=reopened, intents=intents, effects=effects,
            timeline=(_entry("case_reopened", cause, case, reopened, policy,
                             repayment_id=event.repayment_id, amount=str(event.amount)),),
        )
    if not case.is_open:
        return Decision(case=None, timeline=(_entry(
            "reversal_recorded", cause, case, case, policy, repayment_id=event.repayment_id),))
    updated = replace(case, outstanding=event.outstanding_after, updated_at=now)
    return Decision(case=updated, timeline=(_entry(
        "repayment_reversed", cause, case, updated, policy, repayment_id=event.repayment_id,
        outstanding_after=str(event.outstanding_after)),))


def on_contact_outcome(case: Case, event: m.ContactOutcomeReported,
                       policy: EscalationPolicy) -> Decision:
    return Decision(case=None, timeline=(_entry(
        f"contact_{event.outcome}", f"event:{event.event_id}", case, case, policy,
        command_id=event.command_id, intent_id=event.intent_id, channel=event.channel,
        reason=event.reason),))
