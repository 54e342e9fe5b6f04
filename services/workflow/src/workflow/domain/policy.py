"""Escalation policy: data, versioned, per product.

A case records the policy version that decided each of its steps, so a later change of
policy never rewrites how an old decision is explained.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum

# The stages cross services (the contract, the notifier): defined once, in the kit.
from collections_kit.vocabulary import BALANCE_TOLERANCE
from collections_kit.vocabulary import Stage as Stage

STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)


def next_stage(stage: Stage) -> Stage | None:
    index = STAGE_ORDER.index(stage)
    return STAGE_ORDER[index + 1] if index + 1 < len(STAGE_ORDER) else None


@dataclass(frozen=True)
class ContactPlan:
    """One contact a stage makes when a case enters it."""

    channel: str  # sms | voice | email | letter
    recipient: str  # debtor | guarantor
    template: str


@dataclass(frozen=True)
class StagePolicy:
    stage: Stage
    # A case escalates into this stage once days past due reach this number.
    min_days_past_due: int
    contacts: tuple[ContactPlan, ...]
    # How long a case may sit in this stage before it escalates (None: no limit).
    max_duration: timedelta | None = None


class Charge(StrEnum):
    """What a borrower may ask to have waived, in the order a lender gives them up."""

    PENALTY_INTEREST = "penalty_interest"
    FEES = "fees"
    PRINCIPAL = "principal"


@dataclass(frozen=True)
class NegotiationTerms:
    """The terms a proposal may have at one level of authority."""

    # The first payment must be at least this share of what is owed (seed 001: 10%).
    min_down_payment_share: Decimal
    # The last payment falls at most this many calendar months after the proposal.
    max_term_months: int
    # Each charge that may be waived, up to this share of what is owed (absent: never).
    waivable: tuple[tuple[Charge, Decimal], ...] = ()

    def waiver_share(self, charge: Charge) -> Decimal:
        return dict(self.waivable).get(charge, Decimal(0))


@dataclass(frozen=True)
class UnreasonableRule:
    """When a proposal counts as "clearly unreasonable" (seed 003) without anyone saying so:
    the policy's judgement, reproducible, instead of a collector's mood."""

    # This many refused proposals within ``period`` fire the trigger.
    refusals: int
    period: timedelta
    # A down payment under this share of the minimum fires it at once.
    below_floor_share: Decimal


@dataclass(frozen=True)
class NegotiationPolicy:
    standard: NegotiationTerms
    # Up to these terms with the agreement of a member of ``approvers`` (token groups).
    approved: NegotiationTerms
    approvers: frozenset[str]
    # Countering is for proposals near the terms: a down payment under this share of the
    # minimum is refused, not countered.
    refuse_below_floor_share: Decimal
    unreasonable: UnreasonableRule
    # Whole policies for jurisdictions that differ from the product's own.
    jurisdictions: tuple[tuple[str, NegotiationPolicy], ...] = ()

    def for_jurisdiction(self, jurisdiction: str) -> NegotiationPolicy:
        return dict(self.jurisdictions).get(jurisdiction, self)


_NEGOTIATION = NegotiationPolicy(
    standard=NegotiationTerms(
        min_down_payment_share=Decimal("0.10"),
        max_term_months=6,
        waivable=((Charge.PENALTY_INTEREST, Decimal("0.10")), (Charge.FEES, Decimal("0.05"))),
    ),
    approved=NegotiationTerms(
        min_down_payment_share=Decimal("0.05"),
        max_term_months=12,
        waivable=(
            (Charge.PENALTY_INTEREST, Decimal("0.25")),
            (Charge.FEES, Decimal("0.10")),
            (Charge.PRINCIPAL, Decimal("0.05")),
        ),
    ),
    approvers=frozenset({"supervisors"}),
    refuse_below_floor_share=Decimal("0.25"),
    unreasonable=UnreasonableRule(
        refusals=3, period=timedelta(days=90), below_floor_share=Decimal("0.10")
    ),
)
DEFAULT_NEGOTIATION = replace(
    _NEGOTIATION,
    # CONC 7.3.4: forbearance in the UK gives a borrower in difficulty more time to pay.
    jurisdictions=(
        ("UK", replace(_NEGOTIATION, standard=replace(_NEGOTIATION.standard, max_term_months=12))),
    ),
)


@dataclass(frozen=True)
class EarlyWarningPolicy:
    """When a risk signal about a current loan opens a pre-delinquency case, and what that
    case does: remind the borrower, and only the borrower, until the signal expires."""

    # A signal scoring at least this opens a case (a score is 0..1).
    threshold: Decimal
    # The borrower is reminded again this long after each reminder while the case lasts.
    reminder_every: timedelta
    # What each reminder sends; every one is to the debtor (checked here and on loading).
    contacts: tuple[ContactPlan, ...]

    def __post_init__(self) -> None:
        if not Decimal(0) <= self.threshold <= 1:
            raise ValueError("early_warning.threshold is a score between 0 and 1")
        if self.reminder_every <= timedelta(0):
            raise ValueError("early_warning.reminder_every_days is at least 1")
        if any(c.recipient != "debtor" for c in self.contacts):
            # A current loan's borrower owes nothing overdue: nobody else may hear of it.
            raise ValueError("early_warning contacts are to the debtor only")


DEFAULT_EARLY_WARNING = EarlyWarningPolicy(
    threshold=Decimal("0.70"),
    reminder_every=timedelta(days=7),
    contacts=(ContactPlan("email", "debtor", "early-warning-offer"),),
)


@dataclass(frozen=True)
class EscalationPolicy:
    version: str
    product: str
    stages: tuple[StagePolicy, ...]
    # Differences smaller than this are rounding, not debt: nobody is chased for cents.
    tolerance: Decimal
    # The formal notice's deadline to respond before recourse to the guarantor.
    notice_response_deadline: timedelta = timedelta(days=14)
    # Unanswered or refused contact attempts that count as "refuses to communicate".
    unanswered_limit: int = 6
    # UK Debt Respite Scheme: breathing space lasts up to 60 days and ends by itself.
    breathing_space: timedelta = timedelta(days=60)
    # A partial repayment steps a pre-legal case back one stage when what is still owed
    # falls to this share of the balance at escalation or less (None: never step back).
    step_back_below_share: Decimal | None = Decimal("0.50")
    # Retrying a balance check the ledger could not answer: base * 2**attempt, capped.
    recheck_base: timedelta = timedelta(minutes=5)
    recheck_max: timedelta = timedelta(hours=6)
    # How proposals are answered (domain/negotiation.py).
    negotiation: NegotiationPolicy = field(default=DEFAULT_NEGOTIATION)
    # Champion-challenger: the variant this policy is ("" when the product has none).
    variant: str = ""
    # Early warning: pre-delinquency cases from risk signals (None: the product opens none).
    early_warning: EarlyWarningPolicy | None = field(default=DEFAULT_EARLY_WARNING)

    def for_stage(self, stage: Stage) -> StagePolicy:
        for policy in self.stages:
            if policy.stage is stage:
                return policy
        raise KeyError(stage)


DEFAULT_POLICY = EscalationPolicy(
    # 2026-12-04: negotiation terms added; every escalation rule is as in 2026-11-01.
    # 2026-12-04.2: early warning added (pre-delinquency cases); nothing else changed.
    version="consumer-loan/2026-12-04.2",
    product="consumer-loan",
    tolerance=BALANCE_TOLERANCE,
    stages=(
        StagePolicy(
            Stage.WARNING,
            1,
            (
                ContactPlan("email", "debtor", "warning-reminder"),
                ContactPlan("sms", "debtor", "warning-reminder"),
            ),
            max_duration=timedelta(days=45),
        ),
        StagePolicy(
            Stage.FORMAL_NOTICE,
            30,
            (
                ContactPlan("letter", "debtor", "formal-notice"),
                ContactPlan("email", "debtor", "formal-notice"),
            ),
            max_duration=timedelta(days=45),
        ),
        StagePolicy(
            Stage.GUARANTOR_RECOURSE,
            60,
            (ContactPlan("letter", "guarantor", "guarantor-notice"),),
            max_duration=timedelta(days=60),
        ),
        # Legal stages contact nobody directly: they emit case events for the legal systems,
        # and they advance by court milestones, never by the calendar.
        StagePolicy(Stage.LITIGATION, 90, ()),
        StagePolicy(Stage.ENFORCEMENT, 180, ()),
    ),
)


# Champion-challenger: a variant's share of new cases, in whole percent.
Shares = tuple[tuple[str, int], ...]


def assign_variant(loan_id: str, shares: Shares) -> str:
    """The variant a new case gets: a pure function of its loan id and the shares.

    blake2b, not ``hash()``: Python salts string hashes per process, and an assignment
    must come out the same on every replica, after every restart, and in a replay.
    The loan id lands in one of 100 buckets, and each variant owns a run of buckets as
    long as its share, in the order the policy lists them."""
    bucket = int.from_bytes(hashlib.blake2b(loan_id.encode(), digest_size=8).digest()) % 100
    cumulative = 0
    for name, share in shares:
        cumulative += share
        if bucket < cumulative:
            return name
    raise ValueError("variant shares must add up to 100")


@dataclass(frozen=True)
class ProductPolicy:
    """A product's policy with its variants: each a whole, validated policy."""

    base: EscalationPolicy
    # (name, share) in the order the file lists them; empty: no champion-challenger.
    shares: Shares = ()
    variants: tuple[tuple[str, EscalationPolicy], ...] = ()

    def for_case(self, loan_id: str, variant: str | None) -> EscalationPolicy:
        """The policy deciding a case: the variant stored on it, for life; a new case
        (``variant`` None) gets the one its loan id is assigned under today's shares.
        A stored variant no longer declared falls back to the base policy."""
        by_name = dict(self.variants)
        if variant is None:
            return by_name[assign_variant(loan_id, self.shares)] if self.shares else self.base
        return by_name.get(variant, self.base)


class PolicyBook:
    """Policies by product; unknown products fall back to the default policy."""

    def __init__(
        self,
        policies: tuple[EscalationPolicy | ProductPolicy, ...] = (DEFAULT_POLICY,),
        default: EscalationPolicy = DEFAULT_POLICY,
    ) -> None:
        products = [p if isinstance(p, ProductPolicy) else ProductPolicy(p) for p in policies]
        self._by_product = {p.base.product: p for p in products}
        self._default = ProductPolicy(default)

    def for_product(self, product: str) -> EscalationPolicy:
        return self._by_product.get(product, self._default).base

    def for_case(self, product: str, loan_id: str, variant: str | None) -> EscalationPolicy:
        """The policy deciding one case (``variant``: the one stored on it, None if new)."""
        return self._by_product.get(product, self._default).for_case(loan_id, variant)
