"""A borrower's proposal judged by the product's negotiation policy: accepted, countered
or refused (operations.md, "Negotiation").

Pure: no clock (``now`` is given), no I/O. ``decide`` calls :func:`problems` and
:func:`evaluate` for a :class:`~workflow.domain.messages.SubmitProposal` and turns the
answer into the case's steps: an accepted proposal becomes the instalment plan exactly as
an arrangement does; a refused one counts towards the policy's "unreasonable proposal"
rule (:func:`count_refusal`), which then fires the trigger by itself.

What the terms measure:
- the *floor*: the smallest down payment, the policy's share of what is owed now (before
  any waiver), rounded up to the currency's minor unit;
- the *term*: from the day of the proposal to the day of its last payment, in calendar
  months (a plan made on 31 August may run to 28 February, six months later);
- a *waiver*: each charge up to the policy's share of what is owed.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Decimal
from enum import StrEnum

from collections_kit.currencies import minor_units
from workflow.domain import messages as m
from workflow.domain.policy import Charge, NegotiationPolicy, NegotiationTerms

Location = tuple[str | int, ...]


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    COUNTERED = "countered"
    REFUSED = "refused"


@dataclass(frozen=True)
class Breach:
    """One rule of the policy a proposal does not meet, and by how much."""

    rule: str  # min_down_payment | max_term | waiver.<charge> | refuse_below_floor | ...
    detail: str


@dataclass(frozen=True)
class Answer:
    verdict: Verdict
    # The rules the proposal does not meet (empty when accepted).
    breaches: tuple[Breach, ...] = ()
    # The nearest terms the policy accepts, computed from the proposal (countered only).
    counter: m.SubmitProposal | None = None
    # Accepted on the approvers' terms, by a member of their groups.
    approved: bool = False
    # Countered, but within the approvers' terms: one of them may accept it as it is.
    approvable: bool = False
    # The rule that makes this very proposal unreasonable, when it does by itself.
    unreasonable: str | None = None
    # The floor the applicable terms set, for the timeline.
    floor: Decimal = Decimal(0)


def unit_of(currency: str) -> Decimal:
    """The currency's smallest amount: 0.01 CNY, 1 JPY (no minor unit: 0.000001)."""
    units = minor_units(currency)
    return Decimal(1).scaleb(-(units if units is not None else 6))


def add_months(day: date, months: int) -> date:
    """The same day ``months`` calendar months later, or that month's last day."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _payments(p: m.SubmitProposal) -> tuple[m.InstalmentTerms, ...]:
    return (p.down_payment, *p.instalments)


def waived(p: m.SubmitProposal, charge: Charge) -> Decimal:
    amount: Decimal = getattr(p.waivers, charge.value)
    return amount


def problems(
    p: m.SubmitProposal, outstanding: Decimal, currency: str
) -> list[tuple[Location, str]]:
    """What makes a proposal malformed, by the field it is in (a 422, nothing recorded).

    Dates before today are the caller's to check: "today" is the borrower's, in their time
    zone (the REST route does it as for arrangements)."""
    found: list[tuple[Location, str]] = []
    if p.down_payment.amount < 0:
        found.append((("down_payment", "amount"), "must not be negative"))
    for i, instalment in enumerate(p.instalments):
        if instalment.amount <= 0:
            found.append((("instalments", i, "amount"), "must be more than zero"))
    for charge in Charge:
        if waived(p, charge) < 0:
            found.append((("waivers", charge.value), "must not be negative"))
    for i, (before, after) in enumerate(zip(_payments(p), p.instalments, strict=False)):
        if after.due_at <= before.due_at:
            what = "the down payment" if i == 0 else "the instalment before it"
            found.append((("instalments", i, "due_at"), f"must be later than {what}"))
    if not p.instalments and p.down_payment.amount <= 0:
        found.append((("down_payment", "amount"), "a proposal without instalments pays now"))
    if found:
        return found
    paid = sum((x.amount for x in _payments(p)), Decimal(0))
    owed = outstanding - p.waivers.total
    if abs(paid - owed) >= unit_of(currency):
        found.append(
            (
                ("instalments",),
                f"the down payment and instalments add up to {paid}, but what is owed "
                f"({outstanding}) less the waivers ({p.waivers.total}) is {owed}",
            )
        )
    return found


def floor_of(outstanding: Decimal, terms: NegotiationTerms, currency: str) -> Decimal:
    unit = unit_of(currency)
    return (max(outstanding, Decimal(0)) * terms.min_down_payment_share).quantize(
        unit, rounding=ROUND_UP
    )


def _waiver_limit(
    outstanding: Decimal, terms: NegotiationTerms, charge: Charge, unit: Decimal
) -> Decimal:
    return (max(outstanding, Decimal(0)) * terms.waiver_share(charge)).quantize(
        unit, rounding=ROUND_DOWN
    )


def breaches(
    p: m.SubmitProposal,
    outstanding: Decimal,
    currency: str,
    terms: NegotiationTerms,
    now: datetime,
) -> tuple[Breach, ...]:
    """The rules of ``terms`` that ``p`` does not meet."""
    unit = unit_of(currency)
    found = []
    floor = floor_of(outstanding, terms, currency)
    if p.down_payment.amount < floor:
        found.append(
            Breach(
                "min_down_payment",
                f"down payment {p.down_payment.amount} is below the minimum {floor} "
                f"({terms.min_down_payment_share} of {outstanding} owed)",
            )
        )
    last_day = add_months(now.date(), terms.max_term_months)
    last = _payments(p)[-1].due_at
    if last.date() > last_day:
        found.append(
            Breach(
                "max_term",
                f"the last payment on {last.date()} is after {last_day} "
                f"({terms.max_term_months} months)",
            )
        )
    for charge in Charge:
        asked = waived(p, charge)
        limit = _waiver_limit(outstanding, terms, charge, unit)
        if asked > limit:
            found.append(
                Breach(
                    f"waiver.{charge.value}",
                    f"waiving {asked} of {charge.value} is more than the {limit} allowed "
                    f"({terms.waiver_share(charge)} of {outstanding} owed)"
                    if limit
                    else f"{charge.value} is not waived",
                )
            )
    return tuple(found)


def evaluate(
    p: m.SubmitProposal,
    outstanding: Decimal,
    currency: str,
    jurisdiction: str,
    policy: NegotiationPolicy,
    now: datetime,
) -> Answer:
    """Accept ``p`` if it meets the terms its proposer may agree to; else counter with the
    nearest terms that do, unless it is too far below the floor to negotiate from."""
    policy = policy.for_jurisdiction(jurisdiction)
    approver = not policy.approvers.isdisjoint(p.groups)
    terms = policy.approved if approver else policy.standard
    floor = floor_of(outstanding, terms, currency)
    broken = breaches(p, outstanding, currency, terms, now)
    if not broken:
        # On the approvers' terms only if the standard ones would not have done.
        approved = approver and bool(breaches(p, outstanding, currency, policy.standard, now))
        return Answer(Verdict.ACCEPTED, approved=approved, floor=floor)
    down = p.down_payment.amount
    rule = policy.unreasonable
    if down < floor * rule.below_floor_share:
        why = (
            f"down payment {down} is under {rule.below_floor_share} of the minimum {floor}: "
            "unreasonable by itself"
        )
        return Answer(
            Verdict.REFUSED,
            (*broken, Breach("unreasonable.below_floor_share", why)),
            unreasonable=why,
            floor=floor,
        )
    if down < floor * policy.refuse_below_floor_share:
        return Answer(
            Verdict.REFUSED,
            (
                *broken,
                Breach(
                    "refuse_below_floor_share",
                    f"down payment {down} is under {policy.refuse_below_floor_share} of "
                    f"the minimum {floor}: too far to counter",
                ),
            ),
            floor=floor,
        )
    return Answer(
        Verdict.COUNTERED,
        broken,
        counter=counter(p, outstanding, currency, terms, now),
        approvable=not approver
        and bool(policy.approvers)
        and not breaches(p, outstanding, currency, policy.approved, now),
        floor=floor,
    )


def counter(
    p: m.SubmitProposal,
    outstanding: Decimal,
    currency: str,
    terms: NegotiationTerms,
    now: datetime,
) -> m.SubmitProposal:
    """The nearest terms ``terms`` accept, from ``p``: each waiver cut to what is allowed,
    the down payment raised to the floor, and what is left spread evenly over the proposed
    instalment dates that fall within the term (or one payment at its end)."""
    unit = unit_of(currency)
    waivers = m.Waivers(
        **{c.value: min(waived(p, c), _waiver_limit(outstanding, terms, c, unit)) for c in Charge}
    )
    owed = (outstanding - waivers.total).quantize(unit, rounding=ROUND_HALF_UP)
    down_amount = min(max(p.down_payment.amount, floor_of(outstanding, terms, currency)), owed)
    last_day = add_months(now.date(), terms.max_term_months)
    # The term's last day, at the hour of the proposal: later than now whatever the term.
    term_end = datetime.combine(last_day, time(), tzinfo=now.tzinfo) + timedelta(
        hours=now.hour, minutes=now.minute
    )
    down_at = min(p.down_payment.due_at, term_end)
    dates = [i.due_at for i in p.instalments if i.due_at.date() <= last_day and i.due_at > down_at]
    rest = owed - down_amount
    if rest > 0 and not dates and term_end > down_at:
        dates = [term_end]
    if rest > 0 and not dates:
        down_amount, rest = owed, Decimal(0)
    # No instalment smaller than the currency's unit: fewer, later dates instead.
    count = min(len(dates), int(rest / unit))
    dates = dates[len(dates) - count :] if count else []
    each = (rest / count).quantize(unit, rounding=ROUND_DOWN) if count else Decimal(0)
    amounts = [each] * (count - 1) + [rest - each * (count - 1)] if count else []
    return replace(
        p,
        down_payment=m.InstalmentTerms(down_at, down_amount),
        instalments=tuple(m.InstalmentTerms(d, a) for d, a in zip(dates, amounts, strict=True)),
        waivers=waivers,
    )


def count_refusal(
    refused: tuple[datetime, ...], policy: NegotiationPolicy, jurisdiction: str, now: datetime
) -> tuple[tuple[datetime, ...], str | None]:
    """The refusals within the policy's period, this one included, and the rule that
    fires when they reach its count (None: not yet)."""
    rule = policy.for_jurisdiction(jurisdiction).unreasonable
    recent = (*(at for at in refused if at > now - rule.period), now)
    if len(recent) >= rule.refusals:
        return recent, (
            f"{len(recent)} proposals refused within {rule.period.days} days "
            f"(the policy's limit is {rule.refusals})"
        )
    return recent, None


def terms_detail(p: m.SubmitProposal) -> dict[str, object]:
    """A proposal's terms as the timeline shows them."""
    return {
        "down_payment": {
            "due_at": p.down_payment.due_at.isoformat(),
            "amount": str(p.down_payment.amount),
        },
        "instalments": [
            {"due_at": i.due_at.isoformat(), "amount": str(i.amount)} for i in p.instalments
        ],
        "waivers": {c.value: str(waived(p, c)) for c in Charge if waived(p, c)},
    }
