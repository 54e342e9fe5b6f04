"""Whether to contact now: ``decide(request, context, now, policy) -> Decision``.

Pure: no clock, no database, no network; ``now`` and everything else is given, so the
same inputs always give the same decision, and a replay after a crash decides the same.

The checks run in a fixed order; the first that applies decides, and names its rule:
1. the workflow cancelled the contact (or everything on the loan issued up to then);
2. the ledger confirmation behind the command has expired;
3. re-check just before sending: a repayment that the confirmation may not have seen;
4. the recipient is the guarantor but the case is not at the guarantor stage;
5. no address for the recipient on the channel (or no text in their language);
6. outside the contact window in the borrower's own time zone: wait for the next start.
Stops that make the command itself void (1-3) cancel; stops that need a person to act
(4-5: the workflow's stage, missing data) block, and the workflow decides what next; the
clock alone lifts 6, so it defers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from notifier.domain import templates
from notifier.domain.model import ContactRequest, DispatchContext, Outcome
from notifier.domain.policy import DispatchPolicy
from notifier.domain.window import load_zone, next_allowed, within

RULE_CANCELLATION = "workflow_cancellation"
RULE_CONFIRMATION = "ledger_confirmation_validity"
RULE_RECHECK = "repayment_recheck"
RULE_GUARANTOR = "guarantor_party_stage"
RULE_CONTACT_DETAILS = "contact_details"
RULE_TEMPLATES = "message_templates"
RULE_JURISDICTION = "jurisdiction_policy"


@dataclass(frozen=True)
class Send:
    rule: str
    reason: str = "all_checks_passed"
    outcome: Outcome = "sent"


@dataclass(frozen=True)
class Defer:
    until: datetime
    rule: str
    reason: str = "outside_contact_window"
    outcome: Outcome = "deferred"


@dataclass(frozen=True)
class Block:
    reason: str
    rule: str
    outcome: Outcome = "blocked"


@dataclass(frozen=True)
class Cancel:
    reason: str
    rule: str
    outcome: Outcome = "cancelled"


Decision = Send | Defer | Block | Cancel


def decide(request: ContactRequest, context: DispatchContext, now: datetime,
           policy: DispatchPolicy) -> Decision:
    for cancellation in context.cancellations:
        if cancellation.covers(request):
            return Cancel(cancellation.reason, RULE_CANCELLATION)

    if request.confirmation_valid_until <= now:
        return Cancel("confirmation_expired", RULE_CONFIRMATION)

    # Ledger-sync confirmed against the ledger plus the payments in flight it had seen on
    # loans.repayment.v1 when it answered. We read that topic on our own, at our own pace,
    # and the lending system stamps received_at on its clock, not ours: a repayment stamped
    # a little before confirmed_at may still have been unseen by ledger-sync. The lookback
    # covers that race. Any repayment, even partial, voids the confirmation, because the
    # amount in the message would be wrong; the workflow then asks for a fresh one.
    horizon = request.confirmed_at - policy.recheck_lookback
    for repayment in context.repayments:
        if (not repayment.reversed and repayment.received_at is not None
                and repayment.received_at > horizon):
            return Cancel("repaid_after_confirmation", RULE_RECHECK)

    if request.recipient == "guarantor" and request.stage not in policy.guarantor_stages:
        return Block("guarantor_not_party_at_stage", RULE_GUARANTOR)

    details = context.details
    if details is None or not details.address_for(request.recipient, request.channel):
        return Block("no_contact_details", RULE_CONTACT_DETAILS)
    if not templates.available(request.template, details.language):
        return Block("no_template_for_language", RULE_TEMPLATES)

    rules = policy.for_jurisdiction(request.jurisdiction)
    if rules is None:
        return Block("no_policy_for_jurisdiction", RULE_JURISDICTION)
    zone = load_zone(request.borrower_time_zone)
    if zone is None:
        # Without the borrower's local time no window can be honoured: never guess.
        return Block("unknown_time_zone", rules.window_rule)
    if not within(now, zone, rules.window):
        return Defer(next_allowed(now, zone, rules.window), rules.window_rule)
    return Send(rules.window_rule)
