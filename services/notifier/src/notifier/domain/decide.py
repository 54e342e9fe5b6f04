"""Whether to contact now: ``decide(request, context, now, policy) -> Decision``.

Pure: no clock, no database, no network; ``now`` and everything else is given, so the
same inputs always give the same decision, and a replay after a crash decides the same.

The checks run in a fixed order; the first that applies decides, and names its rule:
1. the workflow cancelled the contact (or everything on the loan issued up to then);
2. the case is on hold, or was held after the command was issued (the workflow issues
   fresh commands on resume), or closed;
3. the ledger confirmation behind the command has expired;
4. re-check just before sending: a repayment that the confirmation may not have seen;
5. the recipient is not a party we may contact with this text: the guarantor before the
   guarantor stage, or a text written for the other party;
6. the person asked for no contact at all, or opted out of this channel;
7. no address for the recipient on the channel (or no text in their language);
8. no policy for the jurisdiction, or no known time zone for the borrower;
9. a validation notice must go out first (Reg F): a letter or e-mail becomes the notice,
   other channels wait for it;
10. a frequency cap or a quiet period: wait until it frees;
11. outside the contact window in the borrower's own time zone: wait for the next start.
Stops that make the command itself void (1-4) cancel; stops that need a person to act
(5-8: the workflow's stage, the person's wishes, missing data) block, and the workflow
decides what next; the clock alone lifts 9-11, so they defer, never drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from notifier.domain import templates
from notifier.domain.caps import binding_limit
from notifier.domain.model import (
    PHONE_CHANNELS,
    ContactRequest,
    DispatchContext,
    Outcome,
    Repayment,
    number_key,
)
from notifier.domain.policy import DispatchPolicy, JurisdictionPolicy
from notifier.domain.window import load_zone, next_allowed, within

RULE_CANCELLATION = "workflow_cancellation"
RULE_HOLD = "case_hold"
RULE_CLOSED = "case_closed"
RULE_CONFIRMATION = "ledger_confirmation_validity"
RULE_RECHECK = "repayment_recheck"
REPAID_AFTER_CONFIRMATION = "repaid_after_confirmation"
RULE_GUARANTOR = "guarantor_party_stage"
RULE_PARTY = "recipient_party"
RULE_DO_NOT_CONTACT = "do_not_contact"
RULE_OPT_OUT = "channel_opt_out"
RULE_CONTACT_DETAILS = "contact_details"
RULE_TEMPLATES = "message_templates"
RULE_JURISDICTION = "jurisdiction_policy"


@dataclass(frozen=True)
class Send:
    rule: str
    reason: str = "all_checks_passed"
    outcome: Outcome = "sent"
    # Set when the contact goes out as another text than commanded: the validation notice.
    template: str | None = None

    @property
    def validation_notice(self) -> bool:
        return self.template is not None


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


def decide(
    request: ContactRequest, context: DispatchContext, now: datetime, policy: DispatchPolicy
) -> Decision:
    stop = _voided(request, context, now, policy)
    if stop is not None:
        return stop
    block = _not_allowed(request, context, policy)
    if block is not None:
        return block

    rules = policy.for_jurisdiction(request.jurisdiction)
    if rules is None:
        return Block("no_policy_for_jurisdiction", RULE_JURISDICTION)
    zone = load_zone(request.borrower_time_zone)
    if zone is None:
        # Without the borrower's local time no window can be honoured: never guess.
        return Block("unknown_time_zone", rules.window_rule)

    def lawful(moment: datetime) -> datetime:
        """The first moment from ``moment`` on that the contact window allows."""
        if request.channel not in rules.window_channels:
            return moment
        return next_allowed(moment, zone, rules.window)

    send = Send(rules.window_rule)
    notice = rules.validation_notice
    if notice is not None and request.recipient == "debtor" and context.validation != "sent":
        rule = rules.rule(notice.name)
        # A person cannot carry the notice (it is a text of its own): their contact waits
        # for it like any other channel's.
        if (
            context.validation == "in_flight"
            or request.channel not in notice.channels
            or request.template is None
        ):
            return Defer(lawful(now + notice.recheck), rule, "awaiting_validation_notice")
        assert context.details is not None  # checked in _not_allowed
        if not templates.available(notice.template, context.details.language):
            return Block("no_template_for_language", RULE_TEMPLATES)
        send = Send(rule, "validation_notice", template=notice.template)

    address = (
        context.details.address_for(request.recipient, request.channel) if context.details else None
    )
    number = number_key(address) if address and request.channel in PHONE_CHANNELS else None
    limit = binding_limit(request, rules, context.attempts, now=now, zone=zone, number=number)
    if limit is not None:
        return Defer(lawful(limit.until), limit.rule, limit.reason)

    if request.channel in rules.window_channels and not within(now, zone, rules.window):
        return Defer(next_allowed(now, zone, rules.window), rules.window_rule)
    return send


def _voided(
    request: ContactRequest, context: DispatchContext, now: datetime, policy: DispatchPolicy
) -> Cancel | None:
    for cancellation in context.cancellations:
        if cancellation.covers(request):
            return Cancel(cancellation.reason, RULE_CANCELLATION)
    for closure in context.closures:
        if closure.covers(request):
            return Cancel(f"case_closed_{closure.outcome}", RULE_CLOSED)
    for hold in context.holds:
        if hold.covers(request, now):
            return Cancel(f"case_held_{hold.kind}", RULE_HOLD)

    if request.confirmation_valid_until <= now:
        return Cancel("confirmation_expired", RULE_CONFIRMATION)

    # Ledger-sync confirmed against the ledger plus the payments in flight it had seen on
    # loans.repayment.v1 when it answered. We read that topic on our own, at our own pace,
    # and the lending system stamps received_at on its clock, not ours: a repayment stamped
    # a little before confirmed_at may still have been unseen by ledger-sync. The lookback
    # covers that race. Any repayment, even partial, voids the confirmation, because the
    # amount in the message would be wrong; the workflow then asks for a fresh one.
    if any(voids_confirmation(r, request, policy) for r in context.repayments):
        return Cancel(REPAID_AFTER_CONFIRMATION, RULE_RECHECK)
    return None


def voids_confirmation(
    repayment: Repayment, request: ContactRequest, policy: DispatchPolicy
) -> bool:
    """Whether ``repayment`` may be one the command's ledger confirmation did not see."""
    return (
        not repayment.reversed
        and repayment.received_at is not None
        and repayment.received_at > request.confirmed_at - policy.recheck_lookback
    )


def _not_allowed(
    request: ContactRequest, context: DispatchContext, policy: DispatchPolicy
) -> Block | None:
    if request.recipient == "guarantor" and request.stage not in policy.guarantor_stages:
        return Block("guarantor_not_party_at_stage", RULE_GUARANTOR)

    prefs = context.preferences
    if prefs.do_not_contact:
        return Block("do_not_contact", RULE_DO_NOT_CONTACT)
    if request.channel in prefs.opted_out:
        return Block(f"opted_out_{request.channel}", RULE_OPT_OUT)

    details = context.details
    if details is None or not details.address_for(request.recipient, request.channel):
        return Block("no_contact_details", RULE_CONTACT_DETAILS)
    if request.template is None:
        return None  # a person speaks: no text to check
    if not templates.available(request.template, details.language):
        return Block("no_template_for_language", RULE_TEMPLATES)
    if templates.audience(request.template, details.language) != request.recipient:
        # A debtor's reminder to the guarantor (or the other way round) would tell one
        # party what is meant for the other.
        return Block("template_not_for_recipient", RULE_PARTY)
    return None


def validation_dispute_by(
    sent_at: datetime, zone_key: str, rules: JurisdictionPolicy
) -> datetime | None:
    """The end of the dispute period for a validation notice sent at ``sent_at``."""
    notice = rules.validation_notice
    zone = load_zone(zone_key)
    if notice is None or zone is None:
        return None
    return sent_at.astimezone(zone) + timedelta(days=notice.dispute_days)
