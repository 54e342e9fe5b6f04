"""The workflow's decisions: ``decide(case, intents, input, policy, now, new_id)``.

Pure. It never reads a clock or mints random ids: ``now`` is given and ids come from
``new_id(label)``, which the app derives from the causing event or request, so replaying
an input yields the same decision to the letter.

How an input becomes a decision: it is mapped to a :class:`Trigger` (or handled as plain
bookkeeping, such as a contact outcome), the lifecycle table gives the rule for the case's
phase, and the rule is applied here. Rules worth knowing (docs/lifecycle-guide.md tells
them at length):
- An overdue report older than, or as old as, the last one applied changes nothing.
- A case escalates at most one stage at a time; only suspected fraud, refusal to
  communicate and an unreasonable proposal jump straight to litigation.
- No contact command without a ledger confirmation for that very balance check, and none
  for a case that is held or closed. Resuming and reopening re-confirm before any contact.
- A timer scheduled under an older stage epoch, hold or arrangement does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from itertools import pairwise

from workflow.domain import messages as m
from workflow.domain import negotiation as n
from workflow.domain.lifecycle import PRE_LEGAL, Phase, Rule, Transition, Trigger, transition
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
from workflow.domain.policy import (
    STAGE_ORDER,
    ContactPlan,
    EscalationPolicy,
    Stage,
    next_stage,
)

NewId = Callable[[str], str]


# --- effects: what the app turns into outgoing messages -----------------------------------


@dataclass(frozen=True)
class RequestBalanceCheck:
    intent: ContactIntent
    expected_outstanding: Decimal


@dataclass(frozen=True)
class RequestPermitCheck:
    """A balance check for the people who contact the borrower (their contact permits),
    not for a contact intent: the same request to ledger-sync, with a ``PERMIT_CHECK`` id."""

    check_id: str
    expected_outstanding: Decimal


@dataclass(frozen=True)
class IssueContactCommand:
    intent: ContactIntent
    confirmation: m.BalanceConfirmed


@dataclass(frozen=True)
class CancelContacts:
    reason: str  # repaid | settled | closed | held | written_off


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


@dataclass(frozen=True)
class AnnounceHeld:
    hold: Hold


@dataclass(frozen=True)
class AnnounceResumed:
    hold: Hold
    reason: str
    actor: str


Effect = (
    RequestBalanceCheck
    | RequestPermitCheck
    | IssueContactCommand
    | CancelContacts
    | AnnounceCaseOpened
    | AnnounceStageChanged
    | AnnounceCaseClosed
    | AnnounceHeld
    | AnnounceResumed
)

Input = (
    m.OverdueReported
    | m.RiskSignalReceived
    | m.RepaymentReceived
    | m.RepaymentReversed
    | m.BalanceConfirmed
    | m.BalanceRefused
    | m.BalanceCorrected
    | m.ContactOutcomeReported
    | m.PermitNoted
    | m.TimerFired
    | m.RequestHold
    | m.RequestResume
    | m.RecordArrangement
    | m.SubmitProposal
    | m.RequestEscalation
    | m.RecordLegalMilestone
    | m.RequestClosure
)


@dataclass(frozen=True)
class Decision:
    # The case to save (None: unchanged).
    case: Case | None
    # New or changed intents, to be saved.
    intents: tuple[ContactIntent, ...] = ()
    effects: tuple[Effect, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()
    timers: tuple[Timer, ...] = ()
    # Set when a person's request is refused (HTTP 409); nothing else happens then.
    rejected: str | None = None

    def then(self, other: Decision) -> Decision:
        return Decision(
            case=other.case or self.case,
            intents=_merge_intents(self.intents, other.intents),
            effects=self.effects + other.effects,
            timeline=self.timeline + other.timeline,
            timers=self.timers + other.timers,
            rejected=self.rejected or other.rejected,
        )


def _merge_intents(
    first: Sequence[ContactIntent], second: Sequence[ContactIntent]
) -> tuple[ContactIntent, ...]:
    merged = {i.intent_id: i for i in first}
    merged.update({i.intent_id: i for i in second})
    return tuple(merged.values())


@dataclass(frozen=True)
class _Ctx:
    policy: EscalationPolicy
    now: datetime
    new_id: NewId
    cause: str


def _entry(
    ctx: _Ctx, what: str, before: Case | None, after: Case | None, **detail: object
) -> TimelineEntry:
    return TimelineEntry(
        kind=what,
        cause=ctx.cause,
        stage_before=before.stage if before else None,
        stage_after=after.stage if after else None,
        status_before=before.status if before else None,
        status_after=after.status if after else None,
        policy_version=ctx.policy.version,
        detail={k: v for k, v in detail.items() if v is not None},
    )


def _noted(ctx: _Ctx, what: str, case: Case, **detail: object) -> Decision:
    """A decision that changes nothing but the case's timeline."""
    return Decision(case=None, timeline=(_entry(ctx, what, case, case, **detail),))


# --- building blocks --------------------------------------------------------------------


def _contacts_for(case: Case, policy: EscalationPolicy) -> tuple[ContactPlan, ...]:
    """What a case contacts on entering its stage: a pre-delinquency case its early-warning
    reminders (the borrower only), any other its stage's contacts."""
    if case.pre_delinquency is not None:
        return policy.early_warning.contacts if policy.early_warning else ()
    return policy.for_stage(case.stage).contacts


def _plan_contacts(case: Case, ctx: _Ctx, label: str) -> Decision:
    """Intents for the stage's contacts, each waiting for a ledger confirmation."""
    intents = []
    for i, plan in enumerate(_contacts_for(case, ctx.policy)):
        intent_id = ctx.new_id(f"intent/{label}/{case.stage}/{i}")
        intents.append(
            ContactIntent(
                intent_id=intent_id,
                case_id=case.case_id,
                loan_id=case.loan_id,
                stage=case.stage,
                channel=plan.channel,
                recipient=plan.recipient,
                template=plan.template,
                status=IntentStatus.AWAITING_CONFIRMATION,
                created_at=ctx.now,
                check_id=ctx.new_id(f"check/{label}/{case.stage}/{i}"),
            )
        )
    return Decision(
        case=None,
        intents=tuple(intents),
        effects=tuple(RequestBalanceCheck(i, case.outstanding) for i in intents),
        timeline=tuple(
            _entry(
                ctx,
                "contact_intent_recorded",
                case,
                case,
                intent_id=i.intent_id,
                channel=i.channel,
                recipient=i.recipient,
            )
            for i in intents
        ),
    )


def _end_arrangement(case: Case, outcome: str, ctx: _Ctx) -> Case:
    """The case without its running arrangement, which stays readable with its outcome."""
    if case.arrangement is None:
        return case
    return replace(
        case,
        arrangement=None,
        last_arrangement=replace(case.arrangement, outcome=outcome, ended_at=ctx.now),
    )


def _cancel_pending(intents: Sequence[ContactIntent], reason: str) -> tuple[ContactIntent, ...]:
    return tuple(
        replace(i, status=IntentStatus.CANCELLED, reason=reason) for i in intents if i.is_pending
    )


def _intent_ids(cancelled: Sequence[ContactIntent]) -> list[str] | None:
    """The contacts a closure or a hold cancelled before any command left, for the
    timeline: the suppressed contacts of the measures (domain/measures.py) count them."""
    return [i.intent_id for i in cancelled] or None


def _stage_timers(case: Case, ctx: _Ctx) -> tuple[Timer, ...]:
    if case.pre_delinquency is not None:
        # No stage time limit: a pre-delinquency case never escalates. Its next reminder,
        # under the epoch, so a hold or a new epoch ends the old chain of reminders.
        early = ctx.policy.early_warning
        if early is None:
            return ()
        return (
            Timer(
                TimerKind.EARLY_WARNING_REMINDER,
                ctx.now + early.reminder_every,
                str(case.stage_epoch),
            ),
        )
    timers = []
    limit = ctx.policy.for_stage(case.stage).max_duration
    if limit is not None:
        timers.append(Timer(TimerKind.STAGE_TIME_LIMIT, ctx.now + limit, str(case.stage_epoch)))
    if case.stage is Stage.FORMAL_NOTICE:
        timers.append(
            Timer(
                TimerKind.NOTICE_DEADLINE,
                ctx.now + ctx.policy.notice_response_deadline,
                str(case.stage_epoch),
            )
        )
    return tuple(timers)


def _enter_stage(
    case: Case,
    intents: Sequence[ContactIntent],
    target: Stage,
    ctx: _Ctx,
    trigger: Trigger,
    why: str,
) -> Decision:
    moved = replace(
        _end_arrangement(case, "cancelled", ctx),
        stage=target,
        status=CaseStatus.OPEN,
        stage_epoch=case.stage_epoch + 1,
        stage_entered_at=ctx.now,
        outstanding_at_stage_entry=case.outstanding,
        unanswered_contacts=0,
        policy_version=ctx.policy.version,
        updated_at=ctx.now,
    )
    contacts = _plan_contacts(moved, ctx, f"stage-{moved.stage_epoch}")
    return Decision(
        case=moved,
        intents=_cancel_pending(intents, "superseded_by_stage_change"),
        effects=(AnnounceStageChanged(case.stage, target, trigger.value),),
        timeline=(
            _entry(ctx, "stage_changed", case, moved, trigger=trigger.value, why=why or None),
        ),
        timers=_stage_timers(moved, ctx),
    ).then(contacts)


def _close(
    case: Case,
    intents: Sequence[ContactIntent],
    exit_: Exit,
    ctx: _Ctx,
    trigger: Trigger,
    **detail: object,
) -> Decision:
    outcome = (
        "completed"
        if trigger is Trigger.PLAN_COMPLETED
        else "repaid"
        if exit_ is Exit.REPAID
        else "cancelled"
    )
    closed = replace(
        _end_arrangement(case, outcome, ctx),
        status=CaseStatus.CLOSED,
        exit=exit_,
        hold=None,
        stage_epoch=case.stage_epoch + 1,
        policy_version=ctx.policy.version,
        updated_at=ctx.now,
    )
    cancelled = _cancel_pending(intents, exit_.value)
    return Decision(
        case=closed,
        intents=cancelled,
        effects=(CancelContacts(exit_.value), AnnounceCaseClosed(exit_, trigger.value)),
        timeline=(
            _entry(
                ctx,
                "case_closed",
                case,
                closed,
                exit=exit_.value,
                trigger=trigger.value,
                contacts_cancelled=_intent_ids(cancelled),
                **detail,
            ),
        ),
    )


def _reopen(case: Case, ctx: _Ctx, kind: str, **detail: object) -> Decision:
    """Back to collecting at the case's stage: every contact needs a fresh confirmation."""
    reopened = replace(
        case,
        status=CaseStatus.OPEN,
        exit=None,
        hold=None,
        stage_epoch=case.stage_epoch + 1,
        stage_entered_at=ctx.now,
        policy_version=ctx.policy.version,
        updated_at=ctx.now,
    )
    # Closing superseded a pre-delinquency case's expiry timer: a bounced repayment that
    # reopens it sets it again (at once if the signal has expired meanwhile).
    expiry = (
        (_expiry_timer(reopened.pre_delinquency, ctx),)
        if case.is_closed and reopened.pre_delinquency is not None
        else ()
    )
    return Decision(
        case=reopened,
        timeline=(_entry(ctx, kind, case, reopened, **detail),),
        timers=_stage_timers(reopened, ctx) + expiry,
    ).then(_plan_contacts(reopened, ctx, f"reopen-{reopened.stage_epoch}"))


def apply_rule(
    case: Case,
    intents: Sequence[ContactIntent],
    trigger: Trigger,
    ctx: _Ctx,
    *,
    changed: bool = False,
    hold: Hold | None = None,
    arrangement: Arrangement | None = None,
    actor: str = "system",
    reason: str = "",
    **detail: object,
) -> Decision:
    """Apply the lifecycle table's rule for ``trigger`` to ``case``.

    ``changed`` says ``case`` already carries bookkeeping changes (balance, days past due)
    that must be saved even when the rule itself changes nothing. Each family of rules is
    one named step below; this only picks it.
    """
    rule = transition(case.phase, trigger)
    why = reason or rule.why
    match rule.rule:
        case Rule.REJECT:
            return Decision(case=None, rejected=rule.why)
        case Rule.IGNORE | Rule.STAY:
            return _record_unchanged(case, rule, trigger, ctx, changed=changed, **detail)
        case Rule.ADVANCE | Rule.TO_LITIGATION | Rule.TO_ENFORCEMENT:
            return _enter_stage(case, intents, _stage_after(case, rule.rule), ctx, trigger, why)
        case Rule.BREAK_ARRANGEMENT:
            return _break_arrangement(case, intents, ctx, trigger, **detail)
        case Rule.END_ARRANGEMENT:
            ended = _end_arrangement(case, "kept", ctx)
            return _restart_collecting(
                ended, ctx, _entry(ctx, "arrangement_kept", case, ended, **detail)
            )
        case Rule.CLOSE_REPAID:
            return _close(case, intents, Exit.REPAID, ctx, trigger, **detail)
        case Rule.CLOSE_SETTLED | Rule.CLOSE_WRITTEN_OFF | Rule.CLOSE_CLOSED:
            exit_ = _CLOSED_BY_A_PERSON[rule.rule]
            return _close(
                case, intents, exit_, ctx, trigger, actor=actor, reason=reason or None, **detail
            )
        case Rule.HOLD:
            assert hold is not None
            return _put_on_hold(case, intents, hold, ctx)
        case Rule.RESUME:
            return _resume(case, ctx, why, actor, **detail)
        case Rule.REOPEN:
            # Announced as at its opening: ledger-sync forgot the case when it closed, and
            # reconciles open cases only.
            return Decision(case=None, effects=(AnnounceCaseOpened(),)).then(
                _reopen(case, ctx, "case_reopened", **detail)
            )
        case Rule.ARRANGE:
            assert arrangement is not None
            return _arrange(case, intents, arrangement, ctx, actor)
        case Rule.TO_COLLECTION:
            return _to_collection(case, intents, ctx, trigger, why, **detail)
    raise AssertionError(f"unhandled rule {rule.rule}")


# Closures a person records (through the REST API), by the rule that makes them.
_CLOSED_BY_A_PERSON = {
    Rule.CLOSE_SETTLED: Exit.SETTLED,
    Rule.CLOSE_WRITTEN_OFF: Exit.WRITTEN_OFF,
    Rule.CLOSE_CLOSED: Exit.CLOSED,
}


def _record_unchanged(
    case: Case, rule: Transition, trigger: Trigger, ctx: _Ctx, *, changed: bool, **detail: object
) -> Decision:
    """IGNORE and STAY: the phase stays; the timeline says why. An exited case is
    absorbing: its bookkeeping does not move either."""
    keep = case if changed and not case.is_closed else None
    if rule.rule is Rule.IGNORE:
        entry = _entry(ctx, "ignored", case, case, trigger=trigger.value, why=rule.why, **detail)
    else:
        entry = _entry(ctx, trigger.value, case, case, why=rule.why or None, **detail)
    return Decision(case=keep, timeline=(entry,))


def _stage_after(case: Case, rule: Rule) -> Stage:
    """The stage ADVANCE, TO_LITIGATION or TO_ENFORCEMENT moves ``case`` to."""
    if rule is Rule.TO_LITIGATION:
        return Stage.LITIGATION
    if rule is Rule.TO_ENFORCEMENT:
        return Stage.ENFORCEMENT
    target = next_stage(case.stage)
    assert target is not None, "the table never advances from the last stage"
    return target


def _break_arrangement(
    case: Case, intents: Sequence[ContactIntent], ctx: _Ctx, trigger: Trigger, **detail: object
) -> Decision:
    """A broken arrangement advances a pre-legal case; a legal one collects on."""
    ended = _end_arrangement(case, "broken", ctx)
    broken = _entry(ctx, "arrangement_broken", case, ended, **detail)
    target = next_stage(case.stage)
    # A pre-delinquency case's loan is not overdue: a broken plan advances nothing.
    if case.pre_delinquency is None and Phase(case.stage.value) in PRE_LEGAL and target:
        decision = _enter_stage(ended, intents, target, ctx, trigger, "broken promise")
        return Decision(case=None, timeline=(broken,)).then(decision)
    return _restart_collecting(ended, ctx, broken)


def _put_on_hold(case: Case, intents: Sequence[ContactIntent], hold: Hold, ctx: _Ctx) -> Decision:
    held = replace(
        _end_arrangement(case, "cancelled", ctx),
        status=CaseStatus.HELD,
        hold=hold,
        stage_epoch=case.stage_epoch + 1,
        updated_at=ctx.now,
    )
    expiry: tuple[Timer, ...] = (
        (Timer(TimerKind.HOLD_EXPIRY, hold.until, hold.hold_id),) if hold.until else ()
    )
    cancelled = _cancel_pending(intents, "held")
    return Decision(
        case=held,
        intents=cancelled,
        effects=(CancelContacts("held"), AnnounceHeld(hold)),
        timeline=(
            _entry(
                ctx,
                "case_held",
                case,
                held,
                hold_id=hold.hold_id,
                kind=hold.kind.value,
                reason=hold.reason,
                actor=hold.actor,
                until=hold.until.isoformat() if hold.until else None,
                effective_from=hold.effective_from.isoformat() if hold.effective_from else None,
                contacts_cancelled=_intent_ids(cancelled),
            ),
        ),
        timers=expiry,
    )


def _resume(case: Case, ctx: _Ctx, why: str, actor: str, **detail: object) -> Decision:
    assert case.hold is not None
    decision = _reopen(
        case, ctx, "case_resumed", hold_id=case.hold.hold_id, reason=why, actor=actor, **detail
    )
    return decision.then(Decision(case=None, effects=(AnnounceResumed(case.hold, why, actor),)))


def _arrange(
    case: Case,
    intents: Sequence[ContactIntent],
    arrangement: Arrangement,
    ctx: _Ctx,
    actor: str,
) -> Decision:
    arranged = replace(case, arrangement=arrangement, updated_at=ctx.now)
    timers = tuple(
        Timer(TimerKind.ARRANGEMENT_DUE, i.due_at, f"{arrangement.arrangement_id}:{n}")
        for n, i in enumerate(arrangement.schedule)
    )
    return Decision(
        case=arranged,
        intents=_cancel_pending(intents, "superseded_by_arrangement"),
        timeline=(
            _entry(
                ctx,
                "arrangement_recorded",
                case,
                arranged,
                arrangement_id=arrangement.arrangement_id,
                kind=arrangement.kind.value,
                total=str(arrangement.total),
                instalments=len(arrangement.schedule),
                actor=actor,
                interest_reduction=str(arrangement.interest_reduction)
                if arrangement.interest_reduction is not None
                else None,
            ),
        ),
        timers=timers,
    )


def _restart_collecting(case: Case, ctx: _Ctx, first: TimelineEntry) -> Decision:
    restarted = replace(
        case, stage_epoch=case.stage_epoch + 1, stage_entered_at=ctx.now, updated_at=ctx.now
    )
    return Decision(case=restarted, timeline=(first,), timers=_stage_timers(restarted, ctx))


# --- the decision ------------------------------------------------------------------------


def cause_of(event: Input) -> str:
    """What the timeline names as the cause of the steps ``event`` makes."""
    if hasattr(event, "request_id"):
        return f"request:{event.request_id}"
    if isinstance(event, m.TimerFired):
        return f"timer:{event.timer_id}"
    return f"event:{event.event_id}"


def decide(
    case: Case | None,
    intents: Sequence[ContactIntent],
    event: Input,
    policy: EscalationPolicy,
    now: datetime,
    new_id: NewId,
) -> Decision:
    """Decide what ``event`` does to ``case`` (None: the loan has no case yet)."""
    ctx = _Ctx(policy, now, new_id, cause_of(event))
    if isinstance(event, m.OverdueReported):
        return _overdue(case, intents, event, ctx)
    if isinstance(event, m.RiskSignalReceived):
        return _risk_signal(case, event, ctx)
    if case is None:
        return Decision(case=None, rejected="no case for this loan")
    match event:
        case m.RepaymentReceived():
            return _repayment(case, intents, event, ctx)
        case m.RepaymentReversed():
            return _reversal(case, intents, event, ctx)
        case m.BalanceConfirmed():
            return _confirmed(case, intents, event, ctx)
        case m.BalanceRefused():
            return _refused(case, intents, event, ctx)
        case m.BalanceCorrected():
            return _corrected(case, intents, event, ctx)
        case m.ContactOutcomeReported():
            return _outcome(case, intents, event, ctx)
        case m.PermitNoted():
            return _permit(case, event, ctx)
        case m.TimerFired():
            return _timer(case, intents, event, ctx)
        case m.RequestHold():
            return _hold(case, intents, event, ctx)
        case m.RequestResume():
            return _resume_request(case, intents, event, ctx)
        case m.RecordArrangement():
            return _arrangement(case, intents, event, ctx)
        case m.SubmitProposal():
            return _proposal(case, intents, event, ctx)
        case m.RequestEscalation():
            trigger = {
                "manual": Trigger.MANUAL_ESCALATION,
                "fraud": Trigger.FRAUD_SUSPECTED,
                "proposal_unreasonable": Trigger.PROPOSAL_UNREASONABLE,
            }[event.kind]
            return apply_rule(case, intents, trigger, ctx, actor=event.actor, reason=event.reason)
        case m.RecordLegalMilestone():
            return _milestone(case, intents, event, ctx)
        case m.RequestClosure():
            trigger = {
                "settled": Trigger.SETTLE,
                "written_off": Trigger.WRITE_OFF,
                "closed": Trigger.CLOSE,
            }[event.exit]
            return apply_rule(case, intents, trigger, ctx, actor=event.actor, reason=event.reason)
    raise AssertionError(f"unhandled input {event!r}")


def _resume_request(
    case: Case, intents: Sequence[ContactIntent], event: m.RequestResume, ctx: _Ctx
) -> Decision:
    if (
        case.hold is not None
        and case.hold.kind is HoldKind.DISPUTE
        and not event.verification_outcome
    ):
        return Decision(
            case=None,
            rejected="a disputed debt resumes only after its verification outcome is recorded",
        )
    return apply_rule(
        case,
        intents,
        Trigger.RESUME,
        ctx,
        actor=event.actor,
        reason=event.reason,
        verification=event.verification_outcome,
    )


def _corrected(
    case: Case, intents: Sequence[ContactIntent], event: m.BalanceCorrected, ctx: _Ctx
) -> Decision:
    if event.kind == "nothing_owed":
        return apply_rule(
            case, intents, Trigger.LEDGER_NOTHING_OWED, ctx, correction="reconciliation"
        )
    corrected = replace(case, outstanding=event.ledger_outstanding, updated_at=ctx.now)
    return Decision(
        case=corrected,
        timeline=(
            _entry(
                ctx,
                "balance_corrected",
                case,
                corrected,
                from_=str(case.outstanding),
                to=str(event.ledger_outstanding),
            ),
        ),
    )


def _reversal(
    case: Case, intents: Sequence[ContactIntent], event: m.RepaymentReversed, ctx: _Ctx
) -> Decision:
    if event.outstanding_after <= ctx.policy.tolerance:
        return _noted(ctx, "reversal_recorded", case, repayment_id=event.repayment_id)
    reversed_ = replace(
        case, outstanding=event.outstanding_after, updated_at=ctx.now, money_applied_at=ctx.now
    )
    return apply_rule(
        reversed_,
        intents,
        Trigger.REPAYMENT_REVERSED,
        ctx,
        changed=True,
        repayment_id=event.repayment_id,
        amount=str(event.amount),
    )


def _opened_case(
    event: m.OverdueReported | m.RiskSignalReceived,
    ctx: _Ctx,
    *,
    outstanding: Decimal,
    amount_overdue: Decimal,
    days_past_due: int,
    as_of: datetime,
    pre_delinquency: PreDelinquency | None = None,
) -> Case:
    """A new case of the event's loan, open in the first stage under the policy (and
    variant) the loan was assigned; an overdue report and a risk signal open one alike."""
    return Case(
        case_id=ctx.new_id("case"),
        loan_id=event.loan_id,
        borrower_id=event.borrower_id,
        product=event.product,
        currency=event.currency,
        stage=Stage.WARNING,
        status=CaseStatus.OPEN,
        exit=None,
        outstanding=outstanding,
        amount_overdue=amount_overdue,
        days_past_due=days_past_due,
        last_overdue_as_of=as_of,
        borrower_time_zone=event.borrower_time_zone,
        jurisdiction=event.jurisdiction,
        policy_version=ctx.policy.version,
        variant=ctx.policy.variant,
        opened_at=ctx.now,
        updated_at=ctx.now,
        stage_entered_at=ctx.now,
        outstanding_at_stage_entry=outstanding,
        pre_delinquency=pre_delinquency,
    )


def _overdue(
    case: Case | None, intents: Sequence[ContactIntent], event: m.OverdueReported, ctx: _Ctx
) -> Decision:
    if case is None:
        seen = event.money_seen
        # Money seen after the report's as-of is news to it; older money is in its figures.
        if seen is not None and seen.at <= event.as_of:
            seen = None
        opened = _opened_case(
            event,
            ctx,
            outstanding=seen.outstanding_after if seen else event.outstanding,
            amount_overdue=event.amount_overdue,
            days_past_due=event.days_past_due,
            as_of=event.as_of,
        )
        announced = Decision(
            case=opened,
            effects=(AnnounceCaseOpened(),),
            timeline=(
                _entry(
                    ctx,
                    "case_opened",
                    None,
                    opened,
                    days_past_due=event.days_past_due,
                    outstanding=str(opened.outstanding),
                    reported_outstanding=str(event.outstanding) if seen else None,
                    money_seen=seen.repayment_id if seen else None,
                ),
            ),
        )
        if seen is not None and seen.outstanding_after <= ctx.policy.tolerance:
            # Repaid before the report was read, as a case closed by the repayment would
            # ignore this report: closed at once, no contact planned.
            return announced.then(
                apply_rule(
                    opened,
                    (),
                    Trigger.FULL_REPAYMENT,
                    ctx,
                    repayment_id=seen.repayment_id,
                    amount=str(seen.amount),
                )
            )
        return announced.then(Decision(case=None, timers=_stage_timers(opened, ctx))).then(
            _plan_contacts(opened, ctx, "open")
        )
    if case.pre_delinquency is not None:
        # Before the staleness check: a pre-delinquency case has applied no overdue report
        # (its as-of is the signal's), and any report means the loan fell overdue.
        return _fall_overdue(case, intents, event, ctx)
    if event.as_of <= case.last_overdue_as_of:
        return _noted(
            ctx,
            "stale_overdue_ignored",
            case,
            as_of=event.as_of.isoformat(),
            applied_as_of=case.last_overdue_as_of.isoformat(),
        )
    if case.is_closed:
        return _noted(ctx, "overdue_after_close_ignored", case, days_past_due=event.days_past_due)
    updated = replace(
        case,
        outstanding=event.outstanding,
        amount_overdue=event.amount_overdue,
        days_past_due=event.days_past_due,
        last_overdue_as_of=event.as_of,
        updated_at=ctx.now,
    )
    target = next_stage(case.stage)
    if target is None or event.days_past_due < ctx.policy.for_stage(target).min_days_past_due:
        return Decision(case=updated)
    return apply_rule(
        updated,
        intents,
        Trigger.DPD_THRESHOLD,
        ctx,
        changed=True,
        days_past_due=event.days_past_due,
    )


def _repayment(
    case: Case, intents: Sequence[ContactIntent], event: m.RepaymentReceived, ctx: _Ctx
) -> Decision:
    amount = str(event.amount)
    arrangement = case.arrangement
    if arrangement is not None:
        arrangement = replace(arrangement, paid=arrangement.paid + event.amount)
    if event.outstanding_after <= ctx.policy.tolerance:
        # What was paid towards a running arrangement stays readable after the close.
        return apply_rule(
            replace(case, arrangement=arrangement),
            intents,
            Trigger.FULL_REPAYMENT,
            ctx,
            repayment_id=event.repayment_id,
            amount=amount,
        )
    paid = replace(
        case,
        outstanding=event.outstanding_after,
        arrangement=arrangement,
        updated_at=ctx.now,
        money_applied_at=ctx.now,
    )
    decision = apply_rule(
        paid,
        intents,
        Trigger.PARTIAL_REPAYMENT,
        ctx,
        changed=True,
        outstanding_after=str(event.outstanding_after),
        repayment_id=event.repayment_id,
        amount=amount,
    )
    if case.is_closed:
        return decision
    after = decision.case or paid
    if arrangement is not None and arrangement.paid >= arrangement.total:
        trigger = (
            Trigger.PLAN_COMPLETED
            if arrangement.kind is ArrangementKind.INSTALMENT_PLAN
            else Trigger.PROMISE_KEPT
        )
        return decision.then(
            apply_rule(after, intents, trigger, ctx, arrangement_id=arrangement.arrangement_id)
        )
    return decision.then(_maybe_step_back(after, ctx))


def _maybe_step_back(case: Case, ctx: _Ctx) -> Decision:
    """Policy: a pre-legal case steps back one stage when most of the debt was repaid."""
    share = ctx.policy.step_back_below_share
    entry = case.outstanding_at_stage_entry
    if (
        share is None
        or entry is None
        or case.phase not in PRE_LEGAL
        or case.stage is Stage.WARNING
        or case.outstanding > entry * share
    ):
        return Decision(case=None)
    back = STAGE_ORDER[STAGE_ORDER.index(case.stage) - 1]
    stepped = replace(
        case,
        stage=back,
        stage_epoch=case.stage_epoch + 1,
        stage_entered_at=ctx.now,
        outstanding_at_stage_entry=case.outstanding,
        updated_at=ctx.now,
    )
    return Decision(
        case=stepped,
        effects=(AnnounceStageChanged(case.stage, back, "partial_repayment"),),
        timeline=(
            _entry(ctx, "stage_stepped_back", case, stepped, outstanding=str(case.outstanding)),
        ),
        timers=_stage_timers(stepped, ctx),
    )


# Balance checks asked for the people who contact the borrower (a collector leasing a
# task), not for a contact intent: their answer is the notifier's, for contact permits.
PERMIT_CHECK = "permit-check:"


def permit_check_id(cause: str) -> str:
    """The id of a balance check asked for contact permits, once per ``cause``."""
    return PERMIT_CHECK + cause


def _confirmed(
    case: Case, intents: Sequence[ContactIntent], event: m.BalanceConfirmed, ctx: _Ctx
) -> Decision:
    intent = next((i for i in intents if i.check_id == event.check_id), None)
    if intent is None and event.check_id.startswith(PERMIT_CHECK):
        # On the timeline only: the case's state is not the people's check to change (a
        # command's confirmation adopts the ledger's figure; the next one will).
        return _noted(
            ctx,
            "balance_reconfirmed",
            case,
            check_id=event.check_id,
            confirmation_id=event.confirmation_id,
            confirmed_outstanding=str(event.confirmed_outstanding),
            ledger_watermark=event.ledger_watermark,
            valid_until=event.valid_until.isoformat(),
            why="contact_permits",
        )
    if (
        intent is None
        or intent.status is not IntentStatus.AWAITING_CONFIRMATION
        or not case.is_open
    ):
        why = (
            "case held"
            if case.status is CaseStatus.HELD
            else "case closed"
            if case.is_closed
            else "intent no longer waits for this check"
        )
        return _noted(ctx, "confirmation_not_used", case, check_id=event.check_id, why=why)
    if event.valid_until <= ctx.now:
        return _noted(ctx, "confirmation_expired", case, intent_id=intent.intent_id)
    commanded = replace(
        intent,
        status=IntentStatus.COMMANDED,
        command_id=ctx.new_id("command"),
        confirmation_id=event.confirmation_id,
    )
    entries = []
    # The check was asked for when its intent was made (a re-check asks later: then this
    # errs on keeping the repayment's figure, which is the lending system's own). Money
    # applied since is newer than what the ledger was asked about.
    if case.money_applied_at is not None and case.money_applied_at > intent.created_at:
        entries.append(
            _entry(
                ctx,
                "confirmation_older_than_repayment",
                case,
                case,
                kept=str(case.outstanding),
                ledger=str(event.confirmed_outstanding),
            )
        )
        updated = replace(case, updated_at=ctx.now)
    else:
        if abs(event.confirmed_outstanding - case.outstanding) > ctx.policy.tolerance:
            entries.append(
                _entry(
                    ctx,
                    "balance_mismatch",
                    case,
                    case,
                    expected=str(case.outstanding),
                    ledger=str(event.confirmed_outstanding),
                )
            )
        updated = replace(case, outstanding=event.confirmed_outstanding, updated_at=ctx.now)
    entries.append(
        _entry(
            ctx,
            "contact_commanded",
            case,
            updated,
            intent_id=intent.intent_id,
            command_id=commanded.command_id,
            channel=intent.channel,
            confirmation_id=event.confirmation_id,
            confirmed_outstanding=str(event.confirmed_outstanding),
            ledger_watermark=event.ledger_watermark,
        )
    )
    return Decision(
        case=updated,
        intents=(commanded,),
        effects=(IssueContactCommand(commanded, event),),
        timeline=tuple(entries),
    )


def _refused(
    case: Case, intents: Sequence[ContactIntent], event: m.BalanceRefused, ctx: _Ctx
) -> Decision:
    if event.reason == "nothing_owed":
        return apply_rule(case, intents, Trigger.LEDGER_NOTHING_OWED, ctx, check_id=event.check_id)
    intent = next((i for i in intents if i.check_id == event.check_id), None)
    if intent is None and event.check_id.startswith(PERMIT_CHECK):
        # People asking for permits stay refused balance_unconfirmed (the notifier's view).
        return _noted(
            ctx,
            "balance_not_reconfirmed",
            case,
            check_id=event.check_id,
            reason=event.reason,
            detail=event.detail or None,
        )
    if intent is None or intent.status is not IntentStatus.AWAITING_CONFIRMATION:
        return Decision(case=None)
    # No confirmation on data the ledger cannot vouch for: ask again later, backing off.
    delay = min(ctx.policy.recheck_base * 2**intent.attempts, ctx.policy.recheck_max)
    waiting = replace(
        intent,
        status=IntentStatus.AWAITING_RECHECK,
        reason=event.reason,
        attempts=intent.attempts + 1,
    )
    return Decision(
        case=None,
        intents=(waiting,),
        timers=(
            Timer(TimerKind.RECHECK, ctx.now + delay, f"{intent.intent_id}:{waiting.attempts}"),
        ),
        timeline=(
            _entry(
                ctx,
                "contact_suppressed",
                case,
                case,
                intent_id=intent.intent_id,
                reason=event.reason,
                detail=event.detail or None,
                recheck_at=(ctx.now + delay).isoformat(),
            ),
        ),
    )


def _permit(case: Case, event: m.PermitNoted, ctx: _Ctx) -> Decision:
    """A person's permit on the timeline, and nothing else of the case: its result acts
    through the task's result (counting it here too would count a refusal twice). Refused
    for want of a ledger confirmation with none on its way, ask ledger-sync for one."""
    entry = _entry(
        ctx,
        f"permit_{event.kind}",
        case,
        case,
        permit_id=event.permit_id,
        person=event.person,
        channel=event.channel,
        actor_kind=event.actor_kind,
        actor_id=event.actor_id,
        reason=event.reason,
        rule=event.rule,
        retry_after=event.retry_after.isoformat() if event.retry_after else None,
        result=event.result,
    )
    if not (event.confirmation_needed and case.is_open):
        return Decision(case=None, timeline=(entry,))
    check_id = permit_check_id(f"permit:{event.permit_id}")
    return Decision(
        case=None,
        effects=(RequestPermitCheck(check_id, case.outstanding),),
        timeline=(
            entry,
            _entry(ctx, "balance_check_requested", case, case, check_id=check_id),
        ),
    )


def _outcome(
    case: Case, intents: Sequence[ContactIntent], event: m.ContactOutcomeReported, ctx: _Ctx
) -> Decision:
    entry = _entry(
        ctx,
        f"contact_{event.outcome}",
        case,
        case,
        command_id=event.command_id,
        intent_id=event.intent_id,
        channel=event.channel,
        reason=event.reason or None,
        occurred_at=event.occurred_at.isoformat() if event.occurred_at else None,
    )
    recorded = Decision(case=None, timeline=(entry,))
    if case.is_closed:
        return recorded
    if event.outcome == "answered" and case.unanswered_contacts:
        return Decision(
            case=replace(case, unanswered_contacts=0, updated_at=ctx.now), timeline=(entry,)
        )
    # A collector's "refused to communicate" counts towards the trigger as an unanswered
    # automated contact does (domain/tasks.py).
    if event.outcome in ("unanswered", "refused"):
        counted = replace(
            case, unanswered_contacts=case.unanswered_contacts + 1, updated_at=ctx.now
        )
        if counted.unanswered_contacts >= ctx.policy.unanswered_limit:
            return recorded.then(
                apply_rule(
                    counted,
                    intents,
                    Trigger.REFUSED_TO_COMMUNICATE,
                    ctx,
                    changed=True,
                    unanswered=counted.unanswered_contacts,
                )
            )
        return Decision(case=counted, timeline=(entry,))
    if event.outcome == "cancelled" and event.reason == "confirmation_expired" and case.is_open:
        # Deferred past its confirmation's validity: confirm the balance again, then contact.
        original = next((i for i in intents if i.intent_id == event.intent_id), None)
        if original is not None and original.stage is case.stage:
            again = replace(
                original,
                intent_id=ctx.new_id("intent/reconfirm"),
                check_id=ctx.new_id("check/reconfirm"),
                status=IntentStatus.AWAITING_CONFIRMATION,
                created_at=ctx.now,
                command_id=None,
                confirmation_id=None,
                reason="",
                attempts=0,
            )
            return recorded.then(
                Decision(
                    case=None,
                    intents=(again,),
                    effects=(RequestBalanceCheck(again, case.outstanding),),
                    timeline=(
                        _entry(
                            ctx,
                            "contact_intent_recorded",
                            case,
                            case,
                            intent_id=again.intent_id,
                            channel=again.channel,
                            recipient=again.recipient,
                            why="reconfirm",
                        ),
                    ),
                )
            )
    return recorded


def timer_is_current(case: Case, kind: TimerKind, token: str) -> bool:
    """Would this timer still mean something if it fired now? Stale ones are superseded."""
    if case.is_closed:
        return False
    if kind in (TimerKind.STAGE_TIME_LIMIT, TimerKind.NOTICE_DEADLINE):
        return token == str(case.stage_epoch)
    if kind is TimerKind.HOLD_EXPIRY:
        return case.hold is not None and case.hold.hold_id == token
    if kind is TimerKind.ARRANGEMENT_DUE:
        return (
            case.arrangement is not None
            and token.rpartition(":")[0] == case.arrangement.arrangement_id
        )
    if kind is TimerKind.PLACEMENT_EXPIRY:
        return True  # the placement step decides whether its placement still runs
    if kind is TimerKind.SIGNAL_EXPIRY:
        return (
            case.pre_delinquency is not None
            and token == case.pre_delinquency.valid_until.isoformat()
        )
    if kind is TimerKind.EARLY_WARNING_REMINDER:
        return case.pre_delinquency is not None and token == str(case.stage_epoch)
    return case.is_open  # RECHECK: the firing decides precisely


def _timer(
    case: Case, intents: Sequence[ContactIntent], event: m.TimerFired, ctx: _Ctx
) -> Decision:
    stale = _noted(ctx, "timer_stale", case, timer=event.kind, token=event.token)
    kind = TimerKind(event.kind)
    if kind is TimerKind.PLACEMENT_EXPIRY:
        # The case itself does not move: the placement step recalls (domain/placement.py).
        return Decision(case=None)
    if kind in (TimerKind.SIGNAL_EXPIRY, TimerKind.EARLY_WARNING_REMINDER):
        if not timer_is_current(case, kind, event.token):
            return stale
        if kind is TimerKind.SIGNAL_EXPIRY:
            return apply_rule(case, intents, Trigger.SIGNAL_EXPIRED, ctx, reason="signal expired")
        return _remind(case, ctx)
    if kind in (TimerKind.STAGE_TIME_LIMIT, TimerKind.NOTICE_DEADLINE):
        if event.token != str(case.stage_epoch):
            return stale
        trigger = (
            Trigger.STAGE_TIME_LIMIT
            if kind is TimerKind.STAGE_TIME_LIMIT
            else Trigger.NOTICE_DEADLINE
        )
        return apply_rule(case, intents, trigger, ctx)
    if kind is TimerKind.HOLD_EXPIRY:
        if case.hold is None or case.hold.hold_id != event.token:
            return stale
        return apply_rule(case, intents, Trigger.HOLD_EXPIRED, ctx, reason="hold expired")
    if kind is TimerKind.ARRANGEMENT_DUE:
        arrangement_id, _, index = event.token.rpartition(":")
        arrangement = case.arrangement
        if arrangement is None or arrangement.arrangement_id != arrangement_id:
            return stale
        if arrangement.covered(int(index)):
            return _noted(
                ctx, "instalment_kept", case, arrangement_id=arrangement_id, instalment=int(index)
            )
        return apply_rule(
            case,
            intents,
            Trigger.ARRANGEMENT_BROKEN,
            ctx,
            arrangement_id=arrangement_id,
            instalment=int(index),
            paid=str(arrangement.paid),
            due=str(arrangement.due_by(event.due_at)),
        )
    # RECHECK
    intent_id, _, attempt = event.token.rpartition(":")
    intent = next((i for i in intents if i.intent_id == intent_id), None)
    if (
        intent is None
        or intent.status is not IntentStatus.AWAITING_RECHECK
        or str(intent.attempts) != attempt
        or not case.is_open
    ):
        return stale
    asking = replace(
        intent,
        status=IntentStatus.AWAITING_CONFIRMATION,
        check_id=ctx.new_id(f"check/recheck/{attempt}"),
    )
    return Decision(
        case=None,
        intents=(asking,),
        effects=(RequestBalanceCheck(asking, case.outstanding),),
        timeline=(
            _entry(
                ctx,
                "balance_rechecked",
                case,
                case,
                intent_id=intent.intent_id,
                attempt=int(attempt),
            ),
        ),
    )


def _hold(
    case: Case, intents: Sequence[ContactIntent], event: m.RequestHold, ctx: _Ctx
) -> Decision:
    kind = HoldKind(event.kind)
    since = event.effective_from or ctx.now
    until = event.until
    if kind is HoldKind.BREATHING_SPACE:
        # The legal length is a ceiling, counted from when it took effect: breathing space
        # always ends by itself.
        limit = since + ctx.policy.breathing_space
        until = min(until, limit) if until else limit
    if since > ctx.now:
        return Decision(case=None, rejected="a hold cannot take effect in the future")
    if until is not None and until <= since:
        return Decision(case=None, rejected="a hold must end after it takes effect")
    if until is not None and until <= ctx.now:
        return Decision(case=None, rejected="the hold would already have ended")
    hold = Hold(
        hold_id=ctx.new_id("hold"),
        kind=kind,
        reason=event.reason,
        actor=event.actor,
        started_at=ctx.now,
        until=until,
        effective_from=event.effective_from,
    )
    return apply_rule(case, intents, Trigger.HOLD, ctx, hold=hold, actor=event.actor)


def _arrangement(
    case: Case, intents: Sequence[ContactIntent], event: m.RecordArrangement, ctx: _Ctx
) -> Decision:
    kind = ArrangementKind(event.kind)
    schedule = tuple(Instalment(t.due_at, t.amount) for t in event.schedule)
    problem = None
    if not schedule:
        problem = "an arrangement needs at least one payment"
    elif kind is ArrangementKind.PROMISE_TO_PAY and len(schedule) != 1:
        problem = "a promise to pay has exactly one amount and date"
    elif any(i.amount <= 0 for i in schedule):
        problem = "every payment must be positive"
    elif any(b.due_at <= a.due_at for a, b in pairwise(schedule)):
        problem = "payment dates must increase"
    elif schedule[-1].due_at <= ctx.now:
        problem = "the last payment date is already past"
    elif case.arrangement is not None:
        # Only a pre-delinquency case gets here with one (its phase is not "arranged").
        problem = "one arrangement at a time"
    if problem:
        return Decision(case=None, rejected=problem)
    arrangement = Arrangement(
        arrangement_id=ctx.new_id("arrangement"),
        kind=kind,
        schedule=schedule,
        created_at=ctx.now,
        interest_reduction=event.interest_reduction,
        note=event.note,
    )
    return apply_rule(
        case,
        intents,
        Trigger.ARRANGEMENT_REQUESTED,
        ctx,
        arrangement=arrangement,
        actor=event.actor,
    )


def _proposal(
    case: Case, intents: Sequence[ContactIntent], event: m.SubmitProposal, ctx: _Ctx
) -> Decision:
    """Answer a proposal by the negotiation policy (domain/negotiation.py): accepted, it is
    recorded as an arrangement is; refused, it counts towards the unreasonable-proposal
    rule, which escalates by itself once met. The proposal and its answer are on the
    timeline either way."""
    # Only where an arrangement could follow: not on hold, not during one, not once closed.
    allowed = transition(case.phase, Trigger.ARRANGEMENT_REQUESTED)
    if allowed.rule is Rule.REJECT:
        return Decision(case=None, rejected=allowed.why)
    if case.arrangement is not None:
        # A pre-delinquency case's phase does not say "arranged" (it never escalates either
        # way), so its running plan is checked here.
        return Decision(case=None, rejected="one arrangement at a time")
    bad = n.problems(event, case.outstanding, case.currency)
    if bad:
        # The REST route refuses these first; here only if the case changed meanwhile.
        return Decision(
            case=None,
            rejected="; ".join(f"{'.'.join(map(str, at))}: {why}" for at, why in bad),
        )
    answer = n.evaluate(
        event, case.outstanding, case.currency, case.jurisdiction, ctx.policy.negotiation, ctx.now
    )
    received = _entry(
        ctx,
        "proposal_received",
        case,
        case,
        actor=event.actor,
        via=event.via,
        note=event.note or None,
        **n.terms_detail(event),
    )
    rules = [{"rule": b.rule, "detail": b.detail} for b in answer.breaches] or None
    if answer.verdict is n.Verdict.ACCEPTED:
        plan = m.RecordArrangement(
            request_id=event.request_id,
            kind="instalment_plan",
            # A zero down payment is no payment: the plan starts with the first instalment.
            schedule=tuple(p for p in (event.down_payment, *event.instalments) if p.amount > 0),
            actor=event.actor,
            interest_reduction=event.waivers.penalty_interest or None,
            note=event.note,
        )
        arranged = _arrangement(case, intents, plan, ctx)
        if arranged.rejected is not None:
            return arranged
        accepted = _entry(
            ctx,
            "proposal_accepted",
            case,
            arranged.case,
            actor=event.actor,
            floor=str(answer.floor),
            approved_by=event.actor if answer.approved else None,
            waivers=n.terms_detail(event)["waivers"] or None,
        )
        return Decision(case=None, timeline=(received, accepted)).then(arranged)
    if answer.verdict is n.Verdict.COUNTERED:
        assert answer.counter is not None
        countered = _entry(
            ctx,
            "proposal_countered",
            case,
            case,
            rules=rules,
            floor=str(answer.floor),
            approvable=answer.approvable or None,
            counter=n.terms_detail(answer.counter),
        )
        return Decision(case=None, timeline=(received, countered))
    refused_at, fired = n.count_refusal(
        case.refused_proposals, ctx.policy.negotiation, case.jurisdiction, ctx.now
    )
    rule = answer.unreasonable or fired
    # Once the trigger fires the count starts again: each firing needs its own refusals.
    counted = replace(case, refused_proposals=() if rule else refused_at, updated_at=ctx.now)
    refused = Decision(
        case=counted,
        timeline=(
            received,
            _entry(
                ctx,
                "proposal_refused",
                case,
                counted,
                rules=rules,
                floor=str(answer.floor),
                refusals=len(refused_at),
                unreasonable=rule,
            ),
        ),
    )
    if rule is None:
        return refused
    if case.pre_delinquency is not None:
        # The loan is not overdue: the rule is on the timeline, nothing escalates.
        why = transition(case.phase, Trigger.PROPOSAL_UNREASONABLE).why
        return refused.then(
            _noted(
                ctx,
                "ignored",
                counted,
                trigger=Trigger.PROPOSAL_UNREASONABLE.value,
                why=why,
                rule=rule,
            )
        )
    return refused.then(
        apply_rule(
            counted,
            intents,
            Trigger.PROPOSAL_UNREASONABLE,
            ctx,
            changed=True,
            actor=event.actor,
            reason=f"negotiation policy: {rule}",
            rule=rule,
        )
    )


def _milestone(
    case: Case, intents: Sequence[ContactIntent], event: m.RecordLegalMilestone, ctx: _Ctx
) -> Decision:
    if event.milestone == "enforcement_applied":
        if "judgment" not in case.milestones and case.phase is Phase.LITIGATION:
            return Decision(case=None, rejected="enforcement needs a judgment on record")
        decision = apply_rule(
            case,
            intents,
            Trigger.ENFORCEMENT_APPLIED,
            ctx,
            actor=event.actor,
            reason="judgment not honoured",
            reference=event.reference,
        )
        if decision.case is not None:
            decision = replace(
                decision,
                case=replace(
                    decision.case, milestones=(*decision.case.milestones, event.milestone)
                ),
            )
        return decision
    if event.milestone in case.milestones:
        return Decision(case=None, rejected=f"{event.milestone} is already recorded")
    recorded = replace(case, milestones=(*case.milestones, event.milestone), updated_at=ctx.now)
    return apply_rule(
        recorded,
        intents,
        Trigger.LEGAL_MILESTONE,
        ctx,
        changed=True,
        milestone=event.milestone,
        reference=event.reference,
        actor=event.actor,
        note=event.note or None,
    )


# --- early warning: pre-delinquency cases -------------------------------------------------


def _expiry_timer(pre: PreDelinquency, ctx: _Ctx) -> Timer:
    """The pre-delinquency ends when its signal does: at ``valid_until`` (at once if that
    has passed), named by it so that a signal extending it makes this one stale."""
    return Timer(
        TimerKind.SIGNAL_EXPIRY, max(pre.valid_until, ctx.now), pre.valid_until.isoformat()
    )


def _signal_detail(event: m.RiskSignalReceived) -> dict[str, object]:
    return {
        "signal_id": event.signal_id,
        "signal_kind": event.kind,
        "score": str(event.score),
        "observed_at": event.observed_at.isoformat(),
        "valid_until": event.valid_until.isoformat(),
    }


def _risk_signal(case: Case | None, event: m.RiskSignalReceived, ctx: _Ctx) -> Decision:
    """A risk signal about a current loan. At or above the product's threshold, and still
    valid, it opens a pre-delinquency case, or extends the one open; anything else is
    only noted on an existing case's timeline. Below the threshold without a case nothing
    is kept (the inbox has the event): a case is something the borrower hears from."""
    early = ctx.policy.early_warning
    above = early is not None and event.score >= early.threshold
    valid = event.valid_until > ctx.now
    if case is None:
        if not (above and valid):
            return Decision(case=None)
        return _open_pre_delinquency(event, ctx)
    pre = case.pre_delinquency
    if pre is not None and case.exit is Exit.CLOSED and above and valid:
        # Its earlier signal expired (or a person closed it): the loan is still current.
        return _reopen_pre_delinquency(case, event, ctx)
    if pre is None or case.is_closed:
        why = "the case is closed" if case.is_closed else "the loan is already overdue"
        return _noted(ctx, "risk_signal_noted", case, why=why, **_signal_detail(event))
    if not (above and valid) or event.valid_until <= pre.valid_until:
        why = (
            "below the threshold"
            if not above
            else "already expired"
            if not valid
            else "no later than the signal in force"
        )
        return _noted(ctx, "risk_signal_noted", case, why=why, **_signal_detail(event))
    extended = replace(
        case,
        pre_delinquency=replace(
            pre,
            kind=event.kind,
            score=event.score,
            observed_at=event.observed_at,
            valid_until=event.valid_until,
        ),
        updated_at=ctx.now,
    )
    assert extended.pre_delinquency is not None
    return Decision(
        case=extended,
        timeline=(
            _entry(
                ctx,
                "pre_delinquency_extended",
                case,
                extended,
                until_before=pre.valid_until.isoformat(),
                **_signal_detail(event),
            ),
        ),
        timers=(_expiry_timer(extended.pre_delinquency, ctx),),
    )


def _open_pre_delinquency(event: m.RiskSignalReceived, ctx: _Ctx) -> Decision:
    """A case for a loan that is not overdue: at the first stage's name, without any
    overdue figures, reminding the borrower until the signal expires."""
    seen = event.money_seen
    outstanding = event.outstanding
    # Money seen after the signal was observed is news to it; older money is in its balance.
    if seen is not None and seen.at > event.observed_at:
        if seen.outstanding_after <= ctx.policy.tolerance:
            return Decision(case=None)  # repaid since: nobody to warn
        outstanding = seen.outstanding_after
    else:
        seen = None
    pre = PreDelinquency(
        signal_id=event.signal_id,
        kind=event.kind,
        score=event.score,
        observed_at=event.observed_at,
        valid_until=event.valid_until,
    )
    opened = _opened_case(
        event,
        ctx,
        outstanding=outstanding,
        amount_overdue=Decimal(0),
        days_past_due=0,
        # No overdue report applied yet: the signal's time stands in (an overdue report
        # for a pre-delinquency case is never stale, see _overdue).
        as_of=event.observed_at,
        pre_delinquency=pre,
    )
    return (
        Decision(
            case=opened,
            effects=(AnnounceCaseOpened(),),
            timeline=(
                _entry(
                    ctx,
                    "pre_delinquency_opened",
                    None,
                    opened,
                    outstanding=str(opened.outstanding),
                    reported_outstanding=str(event.outstanding) if seen else None,
                    money_seen=seen.repayment_id if seen else None,
                    **_signal_detail(event),
                ),
            ),
            timers=(_expiry_timer(pre, ctx), *_stage_timers(opened, ctx)),
        )
    ).then(_plan_contacts(opened, ctx, "pre-delinquency"))


def _reopen_pre_delinquency(case: Case, event: m.RiskSignalReceived, ctx: _Ctx) -> Decision:
    """A new signal on a pre-delinquency case that ended closed: the same case, its
    history kept, pre-delinquent again on the new signal, confirming before any contact.
    Announced as at its opening: ledger-sync forgot the case when it closed."""
    pre = PreDelinquency(
        signal_id=event.signal_id,
        kind=event.kind,
        score=event.score,
        observed_at=event.observed_at,
        valid_until=event.valid_until,
    )
    reopened = replace(
        case,
        status=CaseStatus.OPEN,
        exit=None,
        hold=None,
        outstanding=event.outstanding,
        outstanding_at_stage_entry=event.outstanding,
        stage_epoch=case.stage_epoch + 1,
        stage_entered_at=ctx.now,
        unanswered_contacts=0,
        policy_version=ctx.policy.version,
        updated_at=ctx.now,
        pre_delinquency=pre,
    )
    return Decision(
        case=reopened,
        effects=(AnnounceCaseOpened(),),
        timeline=(
            _entry(
                ctx,
                "pre_delinquency_reopened",
                case,
                reopened,
                outstanding=str(reopened.outstanding),
                **_signal_detail(event),
            ),
        ),
        timers=(_expiry_timer(pre, ctx), *_stage_timers(reopened, ctx)),
    ).then(_plan_contacts(reopened, ctx, f"pre-delinquency-{reopened.stage_epoch}"))


def _remind(case: Case, ctx: _Ctx) -> Decision:
    """A pre-delinquency reminder: the policy's contacts again (each after its own ledger
    confirmation), and the next one. Held or under a running plan, the chain goes on
    without contacting."""
    following = Decision(case=None, timers=_stage_timers(case, ctx))
    if not case.is_open or case.arrangement is not None:
        why = "the case is on hold" if not case.is_open else "an arrangement is running"
        return _noted(ctx, "reminder_skipped", case, why=why).then(following)
    label = f"reminder-{case.stage_epoch}-{ctx.now.isoformat()}"
    return (
        _noted(ctx, "pre_delinquency_reminder", case)
        .then(following)
        .then(_plan_contacts(case, ctx, label))
    )


def _fall_overdue(
    case: Case, intents: Sequence[ContactIntent], event: m.OverdueReported, ctx: _Ctx
) -> Decision:
    """An overdue report for a case opened by a risk signal: the lifecycle table decides
    (an open, held, expired or repaid pre-delinquency case becomes an ordinary one)."""
    reported = replace(
        case,
        outstanding=event.outstanding,
        amount_overdue=event.amount_overdue,
        days_past_due=event.days_past_due,
        last_overdue_as_of=event.as_of,
        updated_at=ctx.now,
    )
    return apply_rule(
        reported,
        intents,
        Trigger.FELL_OVERDUE,
        ctx,
        changed=True,
        days_past_due=event.days_past_due,
        as_of=event.as_of.isoformat(),
    )


def _to_collection(
    case: Case,
    intents: Sequence[ContactIntent],
    ctx: _Ctx,
    trigger: Trigger,
    why: str,
    **detail: object,
) -> Decision:
    """The same case, its timeline kept, now collecting at warning: the pre-delinquency
    contacts still waiting are superseded, a plan agreed before ends (the loan fell
    overdue under it), and the warning stage's contacts and timers start. A held case
    stays held (resuming starts them); an expired or repaid one is reopened."""
    pre = case.pre_delinquency
    assert pre is not None
    signal = {"signal_id": pre.signal_id, "signal_kind": pre.kind, "score": str(pre.score)}

    def entries(ordinary: Case) -> tuple[TimelineEntry, ...]:
        # Then the collections case opens, as an overdue report opens one: the measures
        # (domain/measures.py) count the case from here, as any case entering warning.
        return (
            _entry(
                ctx,
                "pre_delinquency_ended",
                case,
                ordinary,
                trigger=trigger.value,
                why=why,
                **signal,
                **detail,
            ),
            _entry(
                ctx,
                "case_opened",
                None,
                ordinary,
                days_past_due=ordinary.days_past_due,
                outstanding=str(ordinary.outstanding),
                pre_delinquency=pre.signal_id,
            ),
        )

    if case.status is CaseStatus.HELD:
        ordinary = replace(case, pre_delinquency=None, policy_version=ctx.policy.version)
        return Decision(case=ordinary, timeline=entries(ordinary))
    ordinary = replace(
        _end_arrangement(case, "cancelled", ctx),
        pre_delinquency=None,
        stage=Stage.WARNING,
        status=CaseStatus.OPEN,
        exit=None,
        stage_epoch=case.stage_epoch + 1,
        stage_entered_at=ctx.now,
        outstanding_at_stage_entry=case.outstanding,
        unanswered_contacts=0,
        policy_version=ctx.policy.version,
    )
    # ledger-sync forgot a closed case: it is announced as at its opening.
    announce = (AnnounceCaseOpened(),) if case.is_closed else ()
    return Decision(
        case=ordinary,
        intents=_cancel_pending(intents, "superseded_by_delinquency"),
        effects=announce,
        timeline=entries(ordinary),
        timers=_stage_timers(ordinary, ctx),
    ).then(_plan_contacts(ordinary, ctx, f"delinquent-{ordinary.stage_epoch}"))
