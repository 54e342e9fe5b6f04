"""The case lifecycle as data: every (phase, trigger) pair has exactly one rule.

``TRANSITIONS`` is the single source of truth: ``decide`` consults it, the docs render it
(``make contracts`` writes docs/lifecycle.md with a mermaid diagram), and a test walks
every pair. A *phase* is where a case is for the purpose of deciding: one of the five open
stages, ``arranged`` (an active promise or plan: a grace period), ``held``, or one of the
four exits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from workflow.domain.policy import Stage


class Phase(StrEnum):
    # The five stages, by their one definition (an Enum cannot extend another's members).
    WARNING = Stage.WARNING.value
    FORMAL_NOTICE = Stage.FORMAL_NOTICE.value
    GUARANTOR_RECOURSE = Stage.GUARANTOR_RECOURSE.value
    LITIGATION = Stage.LITIGATION.value
    ENFORCEMENT = Stage.ENFORCEMENT.value
    # Early warning: opened by a risk signal on a loan that is still current.
    PRE_DELINQUENCY = "pre_delinquency"
    ARRANGED = "arranged"
    HELD = "held"
    REPAID = "repaid"
    SETTLED = "settled"
    WRITTEN_OFF = "written_off"
    CLOSED = "closed"


PRE_LEGAL = (Phase.WARNING, Phase.FORMAL_NOTICE, Phase.GUARANTOR_RECOURSE)
EXITS = (Phase.REPAID, Phase.SETTLED, Phase.WRITTEN_OFF, Phase.CLOSED)


class Trigger(StrEnum):
    # From events and timers
    DPD_THRESHOLD = "dpd_threshold"  # an overdue report reached the next stage's threshold
    STAGE_TIME_LIMIT = "stage_time_limit"  # timer: the stage lasted as long as policy allows
    NOTICE_DEADLINE = "notice_deadline"  # timer: the formal notice went unanswered
    ARRANGEMENT_BROKEN = "arrangement_broken"  # timer: a promise or instalment not covered
    PROMISE_KEPT = "promise_kept"
    PLAN_COMPLETED = "plan_completed"
    REFUSED_TO_COMMUNICATE = "refused_to_communicate"  # unanswered contacts reached the limit
    FULL_REPAYMENT = "full_repayment"
    PARTIAL_REPAYMENT = "partial_repayment"
    REPAYMENT_REVERSED = "repayment_reversed"
    LEDGER_NOTHING_OWED = "ledger_nothing_owed"
    HOLD_EXPIRED = "hold_expired"  # timer: breathing space (or a dated hold) ran its length
    SIGNAL_EXPIRED = "signal_expired"  # timer: a pre-delinquency case's risk signal expired
    FELL_OVERDUE = "fell_overdue"  # an overdue report for a pre-delinquency case's loan
    # From people, through the REST API
    FRAUD_SUSPECTED = "fraud_suspected"
    PROPOSAL_UNREASONABLE = "proposal_unreasonable"
    MANUAL_ESCALATION = "manual_escalation"
    LEGAL_MILESTONE = "legal_milestone"
    ENFORCEMENT_APPLIED = "enforcement_applied"
    HOLD = "hold"
    RESUME = "resume"
    ARRANGEMENT_REQUESTED = "arrangement_requested"
    SETTLE = "settle"
    WRITE_OFF = "write_off"
    CLOSE = "close"


class Rule(StrEnum):
    ADVANCE = "advance"  # to the next stage
    TO_LITIGATION = "to_litigation"
    TO_ENFORCEMENT = "to_enforcement"  # only with a judgment on record
    END_ARRANGEMENT = "end_arrangement"  # the grace period ends; the stage stays
    BREAK_ARRANGEMENT = "break_arrangement"  # ends it and advances (pre-legal) or stays
    STAY = "stay"  # state data changes (balance, milestones), the phase does not
    CLOSE_REPAID = "close_repaid"
    CLOSE_SETTLED = "close_settled"
    CLOSE_WRITTEN_OFF = "close_written_off"
    CLOSE_CLOSED = "close_closed"
    HOLD = "hold"
    RESUME = "resume"  # back to the stage, contacts re-confirmed first
    REOPEN = "reopen"  # a repaid case whose payment bounced
    # A pre-delinquency case becomes an ordinary one at warning, the same case, its history
    # kept (one that ended expired or repaid is reopened so).
    TO_COLLECTION = "to_collection"
    ARRANGE = "arrange"
    IGNORE = "ignore"  # recorded on the timeline, nothing changes (stale or irrelevant)
    REJECT = "reject"  # refused: an API caller gets 409 with the reason


@dataclass(frozen=True)
class Transition:
    rule: Rule
    why: str = ""


def _rules(default: Transition, **overrides: Transition) -> dict[Phase, Transition]:
    table = dict.fromkeys(Phase, default)
    for phase, transition in overrides.items():
        table[Phase(phase)] = transition
    return table


_STAY = Transition(Rule.STAY)
_IGNORE_CLOSED = Transition(Rule.IGNORE, "the case is closed")
_REJECT_CLOSED = Transition(Rule.REJECT, "the case is closed")
_IGNORE_HELD = Transition(Rule.IGNORE, "the case is on hold: nothing escalates")
_IGNORE_GRACE = Transition(Rule.IGNORE, "an arrangement is running: grace period")
_REJECT_HELD = Transition(Rule.REJECT, "the case is on hold: resume it first")
_STALE = Transition(Rule.IGNORE, "stale: the case moved on since this was scheduled")
_COURT = Transition(Rule.STAY, "legal stages advance by court milestones only")
# Early warning: the loan is current, so nothing a pre-delinquency case sees escalates it.
_IGNORE_PRE = Transition(Rule.IGNORE, "pre-delinquency: the loan is not overdue, nothing escalates")
_REJECT_PRE = Transition(Rule.REJECT, "pre-delinquency: the loan is not overdue, nothing escalates")


def _exits(transition: Transition) -> dict[str, Transition]:
    return {p.value: transition for p in EXITS}


_BY_TRIGGER: dict[Trigger, dict[Phase, Transition]] = {
    Trigger.DPD_THRESHOLD: _rules(
        Transition(Rule.ADVANCE),
        pre_delinquency=_IGNORE_PRE,
        litigation=_COURT,
        enforcement=_COURT,
        arranged=_IGNORE_GRACE,
        held=_IGNORE_HELD,
        **_exits(_IGNORE_CLOSED),
    ),
    Trigger.STAGE_TIME_LIMIT: _rules(
        Transition(Rule.ADVANCE),
        pre_delinquency=_IGNORE_PRE,
        litigation=_COURT,
        enforcement=_COURT,
        arranged=_IGNORE_GRACE,
        held=_IGNORE_HELD,
        **_exits(_STALE),
    ),
    Trigger.NOTICE_DEADLINE: _rules(
        _STALE,
        formal_notice=Transition(Rule.ADVANCE, "no answer to the formal notice"),
        arranged=_IGNORE_GRACE,
        held=_IGNORE_HELD,
    ),
    # A pre-delinquency case's plan ends as any plan does, but breaking it advances nothing.
    Trigger.ARRANGEMENT_BROKEN: _rules(
        _STALE,
        arranged=Transition(Rule.BREAK_ARRANGEMENT),
        pre_delinquency=Transition(Rule.BREAK_ARRANGEMENT, "the loan is not overdue: it stays"),
    ),
    Trigger.PROMISE_KEPT: _rules(
        _STALE,
        arranged=Transition(Rule.END_ARRANGEMENT),
        pre_delinquency=Transition(Rule.END_ARRANGEMENT),
    ),
    Trigger.PLAN_COMPLETED: _rules(
        _STALE,
        arranged=Transition(Rule.CLOSE_SETTLED),
        pre_delinquency=Transition(Rule.CLOSE_SETTLED),
    ),
    Trigger.REFUSED_TO_COMMUNICATE: _rules(
        Transition(Rule.TO_LITIGATION, "refuses to communicate"),
        pre_delinquency=_IGNORE_PRE,
        litigation=_STAY,
        enforcement=_STAY,
        arranged=_IGNORE_GRACE,
        held=_IGNORE_HELD,
        **_exits(_IGNORE_CLOSED),
    ),
    Trigger.FULL_REPAYMENT: _rules(Transition(Rule.CLOSE_REPAID), **_exits(_IGNORE_CLOSED)),
    Trigger.LEDGER_NOTHING_OWED: _rules(Transition(Rule.CLOSE_REPAID), **_exits(_IGNORE_CLOSED)),
    Trigger.PARTIAL_REPAYMENT: _rules(_STAY, **_exits(_IGNORE_CLOSED)),
    Trigger.REPAYMENT_REVERSED: _rules(
        _STAY,
        repaid=Transition(Rule.REOPEN, "the payment that closed it bounced"),
        settled=_IGNORE_CLOSED,
        written_off=_IGNORE_CLOSED,
        closed=_IGNORE_CLOSED,
    ),
    Trigger.HOLD_EXPIRED: _rules(_STALE, held=Transition(Rule.RESUME, "hold expired")),
    # The timer is current only while the case is pre-delinquent (held or not).
    Trigger.SIGNAL_EXPIRED: _rules(
        _STALE,
        pre_delinquency=Transition(Rule.CLOSE_CLOSED, "the risk signal expired"),
        held=Transition(Rule.CLOSE_CLOSED, "the risk signal expired"),
    ),
    # Reached only for a case opened by a risk signal (decide routes the report there).
    Trigger.FELL_OVERDUE: _rules(
        Transition(Rule.IGNORE, "not a pre-delinquency case"),
        pre_delinquency=Transition(Rule.TO_COLLECTION, "the loan fell overdue"),
        held=Transition(Rule.TO_COLLECTION, "the loan fell overdue (the hold stays)"),
        repaid=Transition(Rule.TO_COLLECTION, "the loan fell overdue again"),
        closed=Transition(Rule.TO_COLLECTION, "the loan fell overdue after the signal expired"),
        settled=_IGNORE_CLOSED,
        written_off=_IGNORE_CLOSED,
    ),
    Trigger.FRAUD_SUSPECTED: _rules(
        Transition(Rule.TO_LITIGATION, "suspected fraud goes straight to litigation"),
        pre_delinquency=_REJECT_PRE,
        litigation=_STAY,
        enforcement=_STAY,
        held=_REJECT_HELD,
        **_exits(_REJECT_CLOSED),
    ),
    Trigger.PROPOSAL_UNREASONABLE: _rules(
        Transition(Rule.TO_LITIGATION, "the borrower's proposal is unreasonable"),
        pre_delinquency=_REJECT_PRE,
        litigation=_STAY,
        enforcement=_STAY,
        arranged=Transition(Rule.REJECT, "an arrangement was agreed; break it first"),
        held=_REJECT_HELD,
        **_exits(_REJECT_CLOSED),
    ),
    Trigger.MANUAL_ESCALATION: _rules(
        Transition(Rule.ADVANCE, "escalated by an operator"),
        pre_delinquency=_REJECT_PRE,
        litigation=Transition(Rule.REJECT, "enforcement needs a judgment: record it"),
        enforcement=Transition(Rule.REJECT, "enforcement is the last stage"),
        arranged=Transition(Rule.REJECT, "an arrangement is running"),
        held=_REJECT_HELD,
        **_exits(_REJECT_CLOSED),
    ),
    Trigger.LEGAL_MILESTONE: _rules(
        Transition(Rule.REJECT, "legal milestones belong to the litigation stage"), litigation=_STAY
    ),
    Trigger.ENFORCEMENT_APPLIED: _rules(
        Transition(Rule.REJECT, "enforcement follows litigation"),
        litigation=Transition(Rule.TO_ENFORCEMENT, "judgment not honoured"),
    ),
    Trigger.HOLD: _rules(
        Transition(Rule.HOLD),
        held=Transition(Rule.REJECT, "already on hold"),
        **_exits(_REJECT_CLOSED),
    ),
    Trigger.RESUME: _rules(
        Transition(Rule.REJECT, "the case is not on hold"), held=Transition(Rule.RESUME)
    ),
    Trigger.ARRANGEMENT_REQUESTED: _rules(
        Transition(Rule.ARRANGE),
        arranged=Transition(Rule.REJECT, "one arrangement at a time"),
        held=_REJECT_HELD,
        **_exits(_REJECT_CLOSED),
    ),
    Trigger.SETTLE: _rules(Transition(Rule.CLOSE_SETTLED), **_exits(_REJECT_CLOSED)),
    Trigger.WRITE_OFF: _rules(Transition(Rule.CLOSE_WRITTEN_OFF), **_exits(_REJECT_CLOSED)),
    Trigger.CLOSE: _rules(Transition(Rule.CLOSE_CLOSED), **_exits(_REJECT_CLOSED)),
}

TRANSITIONS: Mapping[tuple[Phase, Trigger], Transition] = {
    (phase, trigger): rules[phase] for trigger, rules in _BY_TRIGGER.items() for phase in Phase
}


def transition(phase: Phase, trigger: Trigger) -> Transition:
    return TRANSITIONS[(phase, trigger)]


def mermaid() -> str:
    """The phase changes of the table as a mermaid state diagram (docs)."""
    lines = [
        "stateDiagram-v2",
        "    [*] --> warning: overdue report",
        "    [*] --> pre_delinquency: risk signal",
    ]
    seen: set[str] = set()
    order = list(Stage)
    for (phase, trigger), t in TRANSITIONS.items():
        target: str | None = None
        if phase is Phase.PRE_DELINQUENCY and t.rule in (
            Rule.BREAK_ARRANGEMENT,
            Rule.END_ARRANGEMENT,
        ):
            continue  # its plan ends, the case stays pre-delinquent
        if t.rule is Rule.ADVANCE and phase.value in [s.value for s in order[:-1]]:
            target = order[[s.value for s in order].index(phase.value) + 1].value
        elif t.rule is Rule.TO_LITIGATION and phase is not Phase.LITIGATION:
            target = Phase.LITIGATION.value
        elif t.rule is Rule.TO_ENFORCEMENT:
            target = Phase.ENFORCEMENT.value
        elif t.rule is Rule.BREAK_ARRANGEMENT:
            target = "stage_after_arrangement"
        elif t.rule.value.startswith("close_"):
            target = t.rule.value.removeprefix("close_")
        elif t.rule in (Rule.HOLD, Rule.ARRANGE):
            target = "held" if t.rule is Rule.HOLD else "arranged"
        elif t.rule in (Rule.RESUME, Rule.END_ARRANGEMENT) or t.rule is Rule.REOPEN:
            target = "stage_before"
        elif t.rule is Rule.TO_COLLECTION:
            target = Phase.WARNING.value
        if target is None:
            continue
        line = f"    {phase.value} --> {target}: {trigger.value}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    for exit_ in EXITS:
        lines.append(f"    {exit_.value} --> [*]")
    return "\n".join(lines) + "\n"
