"""Agency placement: which cases go to which agency, when they come back, what it earns.

Pure, like ``decide``: ``place(before, after, event, last, policy, now, new_id)`` looks at a
case after one decided input and at the loan's newest placement, and says what changes for
the agency. The app runs it on the same input, in the same transaction, after ``decide``:
the notices go out through the same outbox as the case change that caused them.

Rules worth knowing (also in docs/agencies.md):
- A case is placed with one agency at a time (the store enforces it as well).
- The agency is chosen from the tier's shares by a hash of the case id and the tier, so
  the choice is stable under replay and spreads cases by share without a counter.
- A placed case is recalled at once, exactly once, when it is repaid, held (``dispute``
  for a disputed debt, ``hold`` otherwise), closed, when it leaves its placement's tier
  (``stage_changed``: escalated to a stage the tier does not take, litigation say;
  ``out_of_tier``: its balance left the band or its days past due fell below the tier's),
  or when the placement expires.
- A case recalled for a hold goes back to the same agency when the hold ends within the
  placement's period (``resumed``); after an expiry it moves on to the next tier.
- A repayment made while placed accrues the agency's commission at its rate, rounded to
  the currency's minor unit (half up, per payment: what the agency's statement shows).
  Its reversal (a bounced payment) takes that commission back, once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Literal

from collections_kit.currencies import minor_units
from workflow.domain import messages as m
from workflow.domain.model import Case, CaseStatus, Exit, HoldKind, Timer, TimerKind
from workflow.domain.policy import Stage

NewId = Callable[[str], str]


class RecallReason(StrEnum):
    REPAID = "repaid"
    HOLD = "hold"
    DISPUTE = "dispute"
    CLOSURE = "closure"
    EXPIRY = "expiry"
    # The case left its placement's tier: its stage is not one the tier takes...
    STAGE_CHANGED = "stage_changed"
    # ...or its balance or days past due no longer fit the tier.
    OUT_OF_TIER = "out_of_tier"


# Recalled for a hold: the case may come back to the same agency when the hold ends.
_HELD = (RecallReason.HOLD, RecallReason.DISPUTE)
# Recalled from an open case that may fit a later tier at once.
_MOVES_ON = (RecallReason.EXPIRY, RecallReason.STAGE_CHANGED, RecallReason.OUT_OF_TIER)


@dataclass(frozen=True)
class AgencyShare:
    agency: str
    # Relative weight among the tier's agencies (60 and 40: six cases in ten, four in ten).
    share: int
    # Contingency commission on what is collected while placed, e.g. 0.25.
    commission_rate: Decimal


@dataclass(frozen=True)
class PlacementTier:
    """Which cases a tier places (primary, secondary...), with whom, for how long."""

    tier: str
    stages: tuple[Stage, ...]
    min_days_past_due: int
    # The balance band: min_balance <= outstanding < max_balance (None: no upper bound).
    min_balance: Decimal
    max_balance: Decimal | None
    period: timedelta
    agencies: tuple[AgencyShare, ...]

    def admits(self, case: Case) -> bool:
        # A pre-delinquency case (early warning) is the borrower's and ours alone: its loan
        # is not overdue, whatever tier might name its stage.
        return (
            case.pre_delinquency is None
            and case.stage in self.stages
            and case.days_past_due >= self.min_days_past_due
            and case.outstanding >= self.min_balance
            and (self.max_balance is None or case.outstanding < self.max_balance)
        )

    def agency_for(self, case_id: str) -> AgencyShare:
        """The agency by share, from a hash of the case id: the same on every replay."""
        total = sum(a.share for a in self.agencies)
        digest = hashlib.sha256(f"{case_id}/{self.tier}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % total
        for agency in self.agencies:
            if point < agency.share:
                return agency
            point -= agency.share
        raise AssertionError("shares are positive")  # pragma: no cover


@dataclass(frozen=True)
class PlacementPolicy:
    version: str
    # In order: a case recalled at expiry moves on to the next tier; after the last, none.
    tiers: tuple[PlacementTier, ...]

    def agencies(self) -> frozenset[str]:
        return frozenset(a.agency for t in self.tiers for a in t.agencies)

    def tier_of(self, placement: Placement) -> PlacementTier | None:
        """The tier a placement was made by, if the policy still has it (same place, same
        name: a reordered or renamed policy is not read as another tier's rules)."""
        if placement.tier_index < len(self.tiers):
            tier = self.tiers[placement.tier_index]
            if tier.tier == placement.tier:
                return tier
        return None


@dataclass(frozen=True)
class Placement:
    placement_id: str
    case_id: str
    loan_id: str
    agency: str
    tier: str
    tier_index: int
    commission_rate: Decimal
    currency: str
    placed_at: datetime
    until: datetime
    # What was owed when it was placed (liquidation rate = collected / placed).
    amount_placed: Decimal
    policy_version: str
    collected: Decimal = Decimal("0")
    commission: Decimal = Decimal("0")
    ended_at: datetime | None = None
    end_reason: RecallReason | None = None

    @property
    def is_active(self) -> bool:
        return self.ended_at is None


# The contract's kinds (collections_kit.contract.PlacementNotice).
NoticeKind = Literal["placed", "recalled", "held", "resumed", "repaid"]


@dataclass(frozen=True)
class Notice:
    """A notice for the agency: placed, recalled, held, resumed or repaid."""

    kind: NoticeKind
    placement: Placement
    reason: RecallReason | None = None
    amount: Decimal | None = None
    commission: Decimal | None = None


# The suffix of the repayment id a commission's reversal is recorded under (once).
REVERSED = "/reversed"


@dataclass(frozen=True)
class Accrual:
    """Commission earned on one repayment made while placed."""

    placement: Placement
    repayment_id: str
    amount: Decimal
    commission: Decimal


@dataclass(frozen=True)
class PlacementOutcome:
    # The placements to save: the one that ended and/or the one that began.
    placements: tuple[Placement, ...] = ()
    notices: tuple[Notice, ...] = ()
    accruals: tuple[Accrual, ...] = ()
    timers: tuple[Timer, ...] = ()
    # (kind, detail) for the case timeline.
    timeline: tuple[tuple[str, dict[str, object]], ...] = ()

    def then(self, other: PlacementOutcome) -> PlacementOutcome:
        return PlacementOutcome(
            self.placements + other.placements,
            self.notices + other.notices,
            self.accruals + other.accruals,
            self.timers + other.timers,
            self.timeline + other.timeline,
        )


NOTHING = PlacementOutcome()


def commission_on(amount: Decimal, rate: Decimal, currency: str) -> Decimal:
    units = minor_units(currency)
    return (amount * rate).quantize(Decimal(1).scaleb(-(units or 0)), rounding=ROUND_HALF_UP)


def liquidation_rate(collected: Decimal, placed: Decimal) -> Decimal | None:
    """The share of what was placed with an agency that it collected: ``collected / placed``,
    rounded half up to four places (0.4321 is 43.21%). None when nothing was placed: no
    rate, rather than a zero that reads as an agency that failed."""
    if placed <= 0:
        return None
    return (collected / placed).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def _detail(p: Placement, **more: object) -> dict[str, object]:
    base: dict[str, object] = {
        "placement_id": p.placement_id,
        "agency": p.agency,
        "tier": p.tier,
    }
    base.update({k: v for k, v in more.items() if v is not None})
    return base


def recall_reason(case: Case) -> RecallReason | None:
    """Why a placed case in this state must come back at once (None: it stays placed)."""
    if case.status is CaseStatus.CLOSED:
        return RecallReason.REPAID if case.exit is Exit.REPAID else RecallReason.CLOSURE
    if case.status is CaseStatus.HELD:
        dispute = case.hold is not None and case.hold.kind is HoldKind.DISPUTE
        return RecallReason.DISPUTE if dispute else RecallReason.HOLD
    return None


def tier_left(case: Case, placement: Placement, policy: PlacementPolicy) -> RecallReason | None:
    """Why a placed case no longer belongs with its placement's tier (None: it does).

    The tier's own rules decide, the ones that placed it: an agency is contracted for the
    cases of its tier only, so a case that escalates past the tier's stages or whose
    balance leaves its band comes back at once instead of at the end of the period. A
    placement whose tier the policy no longer has keeps its period (nothing says what it
    should fit now)."""
    tier = policy.tier_of(placement)
    if tier is None:
        return None
    if case.stage not in tier.stages:
        return RecallReason.STAGE_CHANGED
    if not tier.admits(case):
        return RecallReason.OUT_OF_TIER
    return None


def _recall(active: Placement, reason: RecallReason, now: datetime) -> PlacementOutcome:
    ended = replace(active, ended_at=now, end_reason=reason)
    held = (Notice("held", ended),) if reason in _HELD else ()
    return PlacementOutcome(
        placements=(ended,),
        notices=(*held, Notice("recalled", ended, reason=reason)),
        timeline=(("placement_recalled", _detail(ended, reason=reason.value)),),
    )


def _accrue(active: Placement, event: m.RepaymentReceived, currency: str) -> PlacementOutcome:
    earned = commission_on(event.amount, active.commission_rate, currency)
    paid = replace(
        active, collected=active.collected + event.amount, commission=active.commission + earned
    )
    return PlacementOutcome(
        placements=(paid,),
        notices=(Notice("repaid", paid, amount=event.amount, commission=earned),),
        accruals=(Accrual(paid, event.repayment_id, event.amount, earned),),
        timeline=(
            (
                "placement_commission_accrued",
                _detail(
                    paid,
                    repayment_id=event.repayment_id,
                    amount=str(event.amount),
                    commission=str(earned),
                    rate=str(active.commission_rate),
                ),
            ),
        ),
    )


def _claw_back(accrual: Accrual, newest: Placement | None) -> PlacementOutcome:
    """A repayment that accrued commission was reversed: the agency did not collect it."""
    current = accrual.placement
    if newest is not None and newest.placement_id == current.placement_id:
        current = newest
    back = replace(
        current,
        collected=current.collected - accrual.amount,
        commission=current.commission - accrual.commission,
    )
    return PlacementOutcome(
        placements=(back,),
        accruals=(
            Accrual(back, accrual.repayment_id + REVERSED, -accrual.amount, -accrual.commission),
        ),
        timeline=(
            (
                "placement_commission_reversed",
                _detail(
                    back,
                    repayment_id=accrual.repayment_id,
                    amount=str(accrual.amount),
                    commission=str(accrual.commission),
                ),
            ),
        ),
    )


def _begin(
    case: Case,
    tier_index: int,
    tier: PlacementTier,
    agency: AgencyShare,
    until: datetime,
    kind: Literal["placed", "resumed"],
    policy: PlacementPolicy,
    now: datetime,
    new_id: NewId,
) -> PlacementOutcome:
    placement = Placement(
        placement_id=new_id(f"placement/{case.stage_epoch}/{tier_index}"),
        case_id=case.case_id,
        loan_id=case.loan_id,
        agency=agency.agency,
        tier=tier.tier,
        tier_index=tier_index,
        commission_rate=agency.commission_rate,
        currency=case.currency,
        placed_at=now,
        until=until,
        amount_placed=case.outstanding,
        policy_version=policy.version,
    )
    return PlacementOutcome(
        placements=(placement,),
        notices=(Notice(kind, placement),),
        timers=(Timer(TimerKind.PLACEMENT_EXPIRY, until, placement.placement_id),),
        timeline=(
            (
                "case_placed" if kind == "placed" else "placement_resumed",
                _detail(
                    placement,
                    until=until.isoformat(),
                    commission_rate=str(agency.commission_rate),
                    policy_version=policy.version,
                    # The liquidation rate's denominator (domain/measures.py).
                    amount_placed=str(placement.amount_placed),
                ),
            ),
        ),
    )


def _next_placement(
    case: Case, last: Placement | None, policy: PlacementPolicy, now: datetime, new_id: NewId
) -> PlacementOutcome:
    """A collectable case without a placement: back to its agency after a hold, or placed
    by the first tier it has not been through that admits it."""
    if case.status is not CaseStatus.OPEN:
        return NOTHING
    mine = last if last is not None and last.case_id == case.case_id else None
    if mine is not None and mine.end_reason in _HELD and mine.until > now:
        tier = policy.tier_of(mine)
        share = next((a for a in tier.agencies if a.agency == mine.agency), None) if tier else None
        # Not back into a tier it no longer fits: it would leave it again at once.
        if tier is not None and share is not None and tier.admits(case):
            return _begin(
                case, mine.tier_index, tier, share, mine.until, "resumed", policy, now, new_id
            )
    start = 0
    if mine is not None:
        # An expired or (after its period) held placement moves the case on a tier; one
        # ended by repayment or closure (the case reopened since) starts at its tier again,
        # and so does one that left its tier (that tier admits it again only once it fits).
        done = mine.end_reason is RecallReason.EXPIRY or mine.end_reason in _HELD
        start = mine.tier_index + 1 if done else mine.tier_index
    for index in range(start, len(policy.tiers)):
        tier = policy.tiers[index]
        if tier.admits(case):
            agency = tier.agency_for(case.case_id)
            return _begin(
                case, index, tier, agency, now + tier.period, "placed", policy, now, new_id
            )
    return NOTHING


def place(
    after: Case,
    event: object,
    last: Placement | None,
    policy: PlacementPolicy,
    now: datetime,
    new_id: NewId,
    *,
    reversed_accrual: Accrual | None = None,
) -> PlacementOutcome:
    """What ``event``, decided into ``after``, changes for the agencies.

    ``last`` is the loan's newest placement (active or ended), ``None`` if it never had one;
    ``reversed_accrual``, for a reversal, the commission its repayment accrued (if any, and
    not reversed before).
    """
    clawed = NOTHING
    if isinstance(event, m.RepaymentReversed) and reversed_accrual is not None:
        clawed = _claw_back(reversed_accrual, last)
        if last is not None and last.placement_id == reversed_accrual.placement.placement_id:
            last = clawed.placements[-1]
    return clawed.then(_place(after, event, last, policy, now, new_id))


def _place(
    after: Case,
    event: object,
    last: Placement | None,
    policy: PlacementPolicy,
    now: datetime,
    new_id: NewId,
) -> PlacementOutcome:
    active = last if last is not None and last.is_active else None
    if active is None:
        return _next_placement(after, last, policy, now, new_id)
    outcome = NOTHING
    if isinstance(event, m.RepaymentReceived) and event.amount > 0:
        outcome = _accrue(active, event, after.currency)
        active = outcome.placements[-1]
    reason = recall_reason(after) or tier_left(after, active, policy)
    if (
        reason is None
        and isinstance(event, m.TimerFired)
        and event.kind == TimerKind.PLACEMENT_EXPIRY.value
        and event.token == active.placement_id
    ):
        reason = RecallReason.EXPIRY
    if reason is None:
        return outcome
    recalled = outcome.then(_recall(active, reason, now))
    if reason in _MOVES_ON:
        # Straight on to the next tier that admits it, if the case is still collectable.
        return recalled.then(_next_placement(after, recalled.placements[-1], policy, now, new_id))
    return recalled
