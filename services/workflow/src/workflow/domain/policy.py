"""Escalation policy: data, versioned, per product.

A case records the policy version that decided each of its steps, so a later change of
policy never rewrites how an old decision is explained.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum


class Stage(StrEnum):
    WARNING = "warning"
    FORMAL_NOTICE = "formal_notice"
    GUARANTOR_RECOURSE = "guarantor_recourse"
    LITIGATION = "litigation"
    ENFORCEMENT = "enforcement"


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


@dataclass(frozen=True)
class EscalationPolicy:
    version: str
    product: str
    stages: tuple[StagePolicy, ...]
    # Differences smaller than this are rounding, not debt: nobody is chased for cents.
    tolerance: Decimal

    def for_stage(self, stage: Stage) -> StagePolicy:
        for policy in self.stages:
            if policy.stage is stage:
                return policy
        raise KeyError(stage)


DEFAULT_POLICY = EscalationPolicy(
    version="consumer-loan/2026-11-01",
    product="consumer-loan",
    tolerance=Decimal("1.00"),
    stages=(
        StagePolicy(Stage.WARNING, 1, (
            ContactPlan("email", "debtor", "warning-reminder"),
            ContactPlan("sms", "debtor", "warning-reminder"),
        )),
        StagePolicy(Stage.FORMAL_NOTICE, 30, (
            ContactPlan("letter", "debtor", "formal-notice"),
            ContactPlan("email", "debtor", "formal-notice"),
        )),
        StagePolicy(Stage.GUARANTOR_RECOURSE, 60, (
            ContactPlan("letter", "guarantor", "guarantor-notice"),
        )),
        # Legal stages contact nobody directly: they emit case events for the legal systems.
        StagePolicy(Stage.LITIGATION, 90, ()),
        StagePolicy(Stage.ENFORCEMENT, 180, ()),
    ),
)


class PolicyBook:
    """Policies by product; unknown products fall back to the default policy."""

    def __init__(self, policies: tuple[EscalationPolicy, ...] = (DEFAULT_POLICY,),
                 default: EscalationPolicy = DEFAULT_POLICY) -> None:
        self._by_product = {p.product: p for p in policies}
        self._default = default

    def for_product(self, product: str) -> EscalationPolicy:
        return self._by_product.get(product, self._default)
