"""The measures collection managers read (KPIs), computed from what the cases recorded.

Pure: ``measure(histories, start, end, group_by)`` reads each case's timeline as stored
(:class:`Recorded` entries, in the order they were written) and nothing else: no counter
that a restart resets, no clock. The period is ``[start, end)``: an entry counts in it when
``start <= at < end``. The definitions are written out once, in docs/measures.md; the
API's field descriptions (``entrypoints/kpis.py``) repeat them in short.

Grouping. By ``variant``, ``product`` or ``jurisdiction`` a case belongs to one group for
life (its row's values). By ``stage`` a thing counted belongs to the stage the case was in
when it happened (a contact made in formal notice counts for formal notice); a case is in
every stage group it was exposed to in the period.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from workflow.domain.policy import STAGE_ORDER

# The measures' names, in the order the API lists them (agreed with the dashboards).
MEASURES = (
    "roll_rate",
    "cure_rate",
    "promise_kept_rate",
    "right_party_contact_rate",
    "contacts_per_cure",
    "days_to_cure",
    "liquidation_rate",
)
STAGES: tuple[str, ...] = tuple(s.value for s in STAGE_ORDER)
# A case can roll forward out of every stage but the last.
ROLLING_STAGES: tuple[str, ...] = STAGES[:-1]
# Exits that are a cure: the debt was repaid, or paid as agreed (a completed plan, a
# settlement). Written off and closed are not.
CURED_EXITS = frozenset({"repaid", "settled"})
# Entries by which a case enters a stage (opened in warning, escalated, stepped back).
ENTERING = frozenset({"case_opened", "stage_changed", "stage_stepped_back"})
# A collector's results that mean the borrower themself was reached.
RIGHT_PARTY_RESULTS = frozenset(
    {
        "right_party_contact",
        "promise_to_pay",
        "refused_to_pay",
        "refused_to_communicate",
        "dispute_raised",
        "hardship_declared",
    }
)
# The notifier's decisions not to send (now or at all), and the workflow's own (the ledger
# could not confirm the balance): a contact withheld, with its reason code.
SUPPRESSED = frozenset({"contact_blocked", "contact_cancelled", "contact_deferred"})
WORKFLOW_SUPPRESSED = "contact_suppressed"
# Contacts cancelled by the workflow before any command left (a closure or a hold while
# they waited for the ledger): named on the entry that did it.
CANCELLED_PENDING = "contacts_cancelled"
# A pre-delinquency phase (early warning, the loan not overdue) starts and ends with these
# entries; the ordinary case's case_opened follows its end.
PRE_DELINQUENCY_STARTS = frozenset({"pre_delinquency_opened", "pre_delinquency_reopened"})
PRE_DELINQUENCY_END = "pre_delinquency_ended"
_DAY = Decimal(86_400)


class GroupBy(StrEnum):
    VARIANT = "variant"
    STAGE = "stage"
    PRODUCT = "product"
    JURISDICTION = "jurisdiction"


@dataclass(frozen=True)
class Recorded:
    """A timeline entry as stored: when, what, the stage and status either side, detail."""

    at: datetime
    kind: str
    stage_before: str | None
    stage_after: str | None
    status_before: str | None
    status_after: str | None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseHistory:
    case_id: str
    product: str
    jurisdiction: str
    variant: str
    # In the order written.
    entries: tuple[Recorded, ...]


@dataclass(frozen=True)
class Ratio:
    """A measure with what it is made of: ``value`` is None when nothing was there to
    measure (a denominator of 0), never a 0 that reads as a failure."""

    numerator: Decimal
    denominator: Decimal

    @property
    def value(self) -> float | None:
        if self.denominator == 0:
            return None
        return float(self.numerator / self.denominator)


@dataclass(frozen=True)
class GroupMeasures:
    group: str
    cases: int
    measures: Mapping[str, Ratio]
    roll_rates_by_stage: Mapping[str, Ratio]
    stage_funnel: Mapping[str, int]
    suppressed_contacts: Mapping[str, int]


@dataclass
class _Tally:
    """One group's counts, as the walk over the cases finds them."""

    cases: set[str] = field(default_factory=set)
    exposed: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    rolled: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    entered: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    cohort: set[str] = field(default_factory=set)
    cures: int = 0
    cure_days: Decimal = Decimal(0)
    cohort_contacts: int = 0
    promises_due: int = 0
    promises_kept: int = 0
    calls: int = 0
    right_party: int = 0
    placed: Decimal = Decimal(0)
    collected: Decimal = Decimal(0)
    suppressed: defaultdict[str, set[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(set)
    )


@dataclass
class _Placed:
    """A placement begun in the period, with what was collected under it since."""

    group: str
    amount: Decimal
    collected: Decimal = Decimal(0)


def _days(span: timedelta) -> Decimal:
    seconds = Decimal(span.days * 86_400 + span.seconds) + Decimal(span.microseconds) / 10**6
    return seconds / _DAY


def _amount(detail: Mapping[str, Any], key: str) -> Decimal:
    value = detail.get(key)
    return Decimal(str(value)) if value is not None else Decimal(0)


def _enters(e: Recorded) -> bool:
    """Does ``e`` move the case into a stage (opened in warning, escalated, stepped back)?"""
    return e.kind in ENTERING and e.stage_after is not None and e.stage_after != e.stage_before


def _joins(e: Recorded, group_by: GroupBy) -> bool:
    """Does ``e`` start the case's time in its group: its opening (a case's variant,
    product and jurisdiction are its own for life), or by stage its entering one?"""
    return _enters(e) and (e.kind == "case_opened" or group_by is GroupBy.STAGE)


def _is_contact_attempt(e: Recorded) -> bool:
    """A contact tried: an automated one handed to its channel (sent, or in doubt), a
    collector's call or message with its result, an agency's reported permit result."""
    return e.kind in ("contact_sent", "contact_in_doubt", "task_result_recorded") or _agency_result(
        e
    )


def _agency_result(e: Recorded) -> bool:
    return e.kind == "permit_result" and e.detail.get("actor_kind") == "agency"


def _is_call(e: Recorded) -> bool:
    """An attempt whose result says who was reached: a call (automated voice, a
    collector's, an agency's)."""
    if e.kind in ("contact_sent", "contact_in_doubt"):
        return e.detail.get("channel") == "voice"
    return e.kind == "task_result_recorded" or _agency_result(e)


def _reached_borrower(e: Recorded, recipients: Mapping[str, str]) -> bool:
    """Did this entry record a right-party contact: the borrower themself reached?"""
    if e.kind == "task_result_recorded":
        return (
            e.detail.get("result") in RIGHT_PARTY_RESULTS
            and e.detail.get("task_kind") != "guarantor_contact"
        )
    if e.kind == "contact_answered":
        # An automated call answered (a collector's results are counted by their task
        # entry: the answered outcome they also write has no intent).
        intent = e.detail.get("intent_id") or ""
        return bool(intent) and recipients.get(intent) == "debtor"
    if _agency_result(e):
        return e.detail.get("person") == "debtor" and e.detail.get("result") == "conversation"
    return False


class _CaseWalk:
    """One case's timeline, in time order, into the groups' tallies."""

    def __init__(
        self, h: CaseHistory, start: datetime, group_by: GroupBy, tallies: _Tallies
    ) -> None:
        self.case = h.case_id
        self.start = start
        self.group_by = group_by
        self.tallies = tallies
        self.fixed = {
            GroupBy.VARIANT: h.variant,
            GroupBy.PRODUCT: h.product,
            GroupBy.JURISDICTION: h.jurisdiction,
        }.get(group_by)
        self.stage: str | None = None
        self.status: str | None = None
        self.recipients: dict[str, str] = {}
        # The running arrangement: [id, instalments, how many judged at their due date].
        self.running: list[Any] | None = None
        self.placed: _Placed | None = None
        self.episodes: list[_Placed] = []
        self.contacts: defaultdict[str, int] = defaultdict(int)
        # The groups the case entered in the period, and when it last entered each.
        self.cohort: set[str] = set()
        self.last_entry: dict[str, datetime] = {}
        self.closed: tuple[str, str | None, datetime] | None = None  # (exit, group, at)
        # In a pre-delinquency phase (early warning): nothing counts.
        self.pre_delinquent = False

    def key(self, stage: str | None) -> str | None:
        return self.fixed if self.group_by is not GroupBy.STAGE else stage

    def exposed_at_start(self) -> None:
        """The case as it was at the period's start: exposed to its stage if not closed."""
        g = self.key(self.stage)
        if self.pre_delinquent:
            return
        if self.status not in (None, "closed") and self.stage is not None and g is not None:
            self.tallies[g].cases.add(self.case)
            self.tallies[g].exposed[self.stage].add(self.case)

    def count(self, e: Recorded, g: str) -> None:
        """What ``e``, an entry of the period, counts for group ``g`` (and the group it
        moves the case into)."""
        case, t, detail = self.case, self.tallies[g], e.detail
        after = self.key(e.stage_after)
        open_after = e.status_after not in (None, "closed")
        if e.stage_after is not None and open_after and after is not None:
            self.tallies[after].cases.add(case)
            self.tallies[after].exposed[e.stage_after].add(case)
        if _enters(e) and after is not None:
            self.tallies[after].entered[str(e.stage_after)].add(case)
            if _joins(e, self.group_by):
                self.cohort.add(after)
        if _rolls(e):
            t.rolled[str(e.stage_before)].add(case)
        if _is_contact_attempt(e):
            self.contacts[g] += 1
        if _is_call(e):
            t.calls += 1
        if _reached_borrower(e, self.recipients):
            t.right_party += 1
        if e.kind in SUPPRESSED or e.kind == WORKFLOW_SUPPRESSED:
            reason = str(detail.get("reason") or "unspecified")
            t.suppressed[reason].add(
                (case, str(detail.get("command_id") or detail.get("intent_id") or ""))
            )
        for intent in detail.get(CANCELLED_PENDING) or ():
            reason = str(detail.get("exit") or _CANCELLED_BY.get(e.kind, e.kind))
            t.suppressed[reason].add((case, str(intent)))

    def follow(self, e: Recorded, g: str | None, in_period: bool) -> None:
        """Keep what later entries need: recipients, arrangement, placement, closure, the
        stage and status."""
        detail = e.detail
        if e.kind == "contact_intent_recorded":
            self.recipients[str(detail.get("intent_id", ""))] = str(detail.get("recipient", ""))
        joined = self.key(e.stage_after) if _joins(e, self.group_by) else None
        if joined is not None:
            self.last_entry[joined] = e.at
        counted = self.tallies[g] if in_period and g is not None else None
        self.running = _judge(e, self.running, counted)
        if e.kind == "case_placed":
            self.placed = None
            if in_period and g is not None:
                self.placed = _Placed(g, _amount(detail, "amount_placed"))
                self.episodes.append(self.placed)
        elif self.placed is not None and e.kind == "placement_commission_accrued":
            self.placed.collected += _amount(detail, "amount")
        elif self.placed is not None and e.kind == "placement_commission_reversed":
            self.placed.collected -= _amount(detail, "amount")
        if e.kind == "case_closed" and not self.pre_delinquent:
            self.closed = (str(detail.get("exit", "")), g, e.at)
        elif e.kind == "case_reopened":
            self.closed = None
        if e.stage_after is not None:
            self.stage = e.stage_after
        if e.status_after is not None:
            self.status = e.status_after

    def finish(self) -> None:
        """What is known at the period's end: the cohort, its contacts and cures, the
        placements' collections."""
        for g in self.cohort:
            self.tallies[g].cohort.add(self.case)
            self.tallies[g].cohort_contacts += self.contacts.get(g, 0)
        if self.status == "closed" and self.closed is not None:
            exit_, closed_in, at = self.closed
            if exit_ in CURED_EXITS and closed_in is not None and closed_in in self.cohort:
                self.tallies[closed_in].cures += 1
                self.tallies[closed_in].cure_days += _days(at - self.last_entry[closed_in])
        for p in self.episodes:
            self.tallies[p.group].placed += p.amount
            self.tallies[p.group].collected += p.collected


def _rolls(e: Recorded) -> bool:
    """Does ``e`` move the case from a stage to a later one?"""
    return (
        e.stage_before in ROLLING_STAGES
        and e.stage_after in STAGES
        and STAGES.index(str(e.stage_after)) > STAGES.index(str(e.stage_before))
    )


def _walk(
    h: CaseHistory, start: datetime, end: datetime, group_by: GroupBy, tallies: _Tallies
) -> None:
    walk = _CaseWalk(h, start, group_by, tallies)
    seen_start = False
    for e in sorted(h.entries, key=lambda x: x.at):
        if e.at >= end:
            break
        if not seen_start and e.at >= start:
            walk.exposed_at_start()
            seen_start = True
        if e.kind in PRE_DELINQUENCY_STARTS:
            walk.pre_delinquent = True
            walk.closed = None
        g = walk.key(e.stage_before or walk.stage or e.stage_after)
        # Early warning: a case counts from its collections opening (the case_opened
        # after pre_delinquency_ended), never for what it did before its loan was overdue.
        in_period = e.at >= start and not walk.pre_delinquent
        if in_period and g is not None:
            walk.count(e, g)
        walk.follow(e, g, in_period)
        if e.kind == PRE_DELINQUENCY_END:
            walk.pre_delinquent = False
    if not seen_start:
        walk.exposed_at_start()
    walk.finish()


# What a pending contact cancelled by the workflow was cancelled for, by the entry (a
# closure names its exit).
_CANCELLED_BY = {"case_held": "held"}


def _judge(e: Recorded, running: list[Any] | None, t: _Tally | None) -> list[Any] | None:
    """Follow the running arrangement through ``e``; count what it judged into ``t`` (None:
    outside the period). An instalment is judged at its due date by its timer
    (``instalment_kept``, or ``arrangement_broken``), or, when the whole arrangement is
    fulfilled before (kept, completed, or the debt repaid in full), then: each instalment
    not judged yet is kept. One cancelled first (a hold, a stage change, another closure)
    is never judged."""

    def count(due: int, kept: int) -> None:
        if t is not None:
            t.promises_due += due
            t.promises_kept += kept

    d = e.detail
    if e.kind == "arrangement_recorded":
        return [d.get("arrangement_id"), int(d.get("instalments", 1)), 0]
    if running is None:
        return None
    if e.kind == "instalment_kept" and d.get("arrangement_id") == running[0]:
        count(1, 1)
        return [running[0], running[1], running[2] + 1]
    if e.kind == "arrangement_broken":
        count(1, 0)
        return None
    left = max(running[1] - running[2], 0)
    if e.kind == "arrangement_kept":
        count(left, left)
        return None
    if e.kind == "case_closed":
        if d.get("exit") == "repaid" or d.get("trigger") == "plan_completed":
            count(left, left)
        return None
    if e.kind in ("stage_changed", "case_held", PRE_DELINQUENCY_END):
        return None
    return running


class _Tallies(defaultdict[str, _Tally]):
    def __init__(self) -> None:
        super().__init__(_Tally)


def _ratio(numerator: Decimal | int, denominator: Decimal | int) -> Ratio:
    return Ratio(Decimal(numerator), Decimal(denominator))


def measure(
    histories: Iterable[CaseHistory], start: datetime, end: datetime, group_by: GroupBy
) -> list[GroupMeasures]:
    """The measures of the period ``[start, end)`` per group, groups in name order."""
    measurement = Measurement(start, end, group_by)
    measurement.add(histories)
    return measurement.groups()


class Measurement:
    """The measures of ``[start, end)``, taken case by case: a caller reads the timelines a
    page at a time (each case's whole history in one page) and adds each page, so memory
    holds a page, not the portfolio."""

    def __init__(self, start: datetime, end: datetime, group_by: GroupBy) -> None:
        self.start, self.end, self.group_by = start, end, group_by
        self._tallies = _Tallies()

    def add(self, histories: Iterable[CaseHistory]) -> None:
        for h in histories:
            _walk(h, self.start, self.end, self.group_by, self._tallies)

    def groups(self) -> list[GroupMeasures]:
        return _assemble(self._tallies, self.group_by)


def _assemble(tallies: _Tallies, group_by: GroupBy) -> list[GroupMeasures]:
    out = []
    for group in sorted(tallies):
        t = tallies[group]
        stages = (group,) if group_by is GroupBy.STAGE else STAGES
        rolling = tuple(s for s in stages if s in ROLLING_STAGES)
        rolls = {s: _ratio(len(t.rolled[s]), len(t.exposed[s])) for s in rolling}
        out.append(
            GroupMeasures(
                group=group,
                cases=len(t.cases),
                measures={
                    "roll_rate": _ratio(
                        sum(len(t.rolled[s]) for s in rolling),
                        sum(len(t.exposed[s]) for s in rolling),
                    ),
                    "cure_rate": _ratio(t.cures, len(t.cohort)),
                    "promise_kept_rate": _ratio(t.promises_kept, t.promises_due),
                    "right_party_contact_rate": _ratio(t.right_party, t.calls),
                    "contacts_per_cure": _ratio(t.cohort_contacts, t.cures),
                    "days_to_cure": _ratio(t.cure_days, t.cures),
                    "liquidation_rate": _ratio(t.collected, t.placed),
                },
                roll_rates_by_stage=rolls,
                stage_funnel={s: len(t.entered[s]) for s in stages},
                suppressed_contacts={r: len(c) for r, c in sorted(t.suppressed.items())},
            )
        )
    return out
