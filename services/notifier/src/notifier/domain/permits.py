"""Contact permits: may a person (a collector, an agency) contact this party now?

Not a second rule book: a permit is decided by :func:`notifier.domain.decide.decide`, the
function every automated contact goes through, on a request built from the workflow's
latest contact command for the loan (its anchor: the case, the borrower's jurisdiction and
time zone, the stage, and the ledger confirmation the contact rests on). Only the channel,
the party and the text differ: a person speaks, so there is no template.

What ``decide`` would do with an automated contact, a permit answers at once: a send is a
grant; anything else (cancel, block, defer) is a refusal, named by a short reason code a
collector's screen can show and by the rule that decided, as in the contact audit trail.
A granted permit counts as an attempt in flight, the worst case for every cap, until its
result is recorded: two people asking at once cannot both squeeze under one cap.

The ledger confirmation a permit rests on is the anchor command's, or a fresher one: the
workflow asks ledger-sync for one when a collector leases a task (and when a permit is
refused for want of one), and the notifier reads the answers (``ConfirmationView``). A
fresher confirmation replaces only the anchor's confirmation; ``decide`` then checks it
exactly as it checks a command's: unexpired, and no repayment since voids it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from notifier.domain.decide import (
    RULE_CANCELLATION,
    RULE_CLOSED,
    RULE_CONFIRMATION,
    RULE_CONTACT_DETAILS,
    RULE_DO_NOT_CONTACT,
    RULE_GUARANTOR,
    RULE_HOLD,
    RULE_JURISDICTION,
    RULE_OPT_OUT,
    RULE_RECHECK,
    Block,
    Cancel,
    Decision,
    Defer,
    Send,
    decide,
)
from notifier.domain.model import (
    ActorKind,
    AttemptResult,
    ChannelName,
    ContactRequest,
    DispatchContext,
    Recipient,
)
from notifier.domain.policy import DispatchPolicy

# The rule that refuses a permit for a loan the notifier has no contact command for: no
# case it knows of, so nothing to anchor the checks on.
RULE_CASE = "case_known"

# What a person reports after the call or message.
PermitResult = Literal["connected", "unanswered", "conversation"]
# How each counts in the caps: "connected" counts as a connected call (CN) but starts no
# quiet period; "conversation" does both (Reg F's week of quiet).
ATTEMPT_RESULT: dict[PermitResult, AttemptResult] = {
    "connected": "connected",
    "unanswered": "unanswered",
    "conversation": "answered",
}

# The reasons a permit is refused, for a person to read (the rule says which law or rule).
RefusalReason = Literal[
    "case_unknown",
    "case_closed",
    "hold",
    "repaid",
    "balance_unconfirmed",
    "contact_cancelled",
    "not_a_party",
    "do_not_contact",
    "opted_out",
    "no_contact_details",
    "no_policy",
    "validation_notice_first",
    "cap_reached",
    "quiet_period",
    "call_in_progress",
    "outside_hours",
    # Not the engine's: the notifier's view of repayments lags (app.repayment_gate).
    "repayments_lagging",
]


@dataclass(frozen=True)
class PermitAsk:
    """Who wants to contact whom about which loan, on which channel."""

    loan_id: str
    recipient: Recipient
    channel: ChannelName
    actor_kind: ActorKind
    actor_id: str


@dataclass(frozen=True)
class Granted:
    rule: str


@dataclass(frozen=True)
class Refused:
    reason: RefusalReason
    rule: str
    # What the engine itself said (``case_closed_repaid``, ``frequency_cap``...).
    detail: str
    # When the clock alone lifts the refusal: the next window start, the cap freeing.
    retry_after: datetime | None = None


PermitDecision = Granted | Refused


@dataclass(frozen=True)
class LedgerConfirmation:
    """A ledger-sync confirmation of a loan's balance (``BalanceConfirmed``)."""

    confirmation_id: str
    ledger_watermark: int
    confirmed_outstanding: Decimal
    confirmed_at: datetime
    valid_until: datetime


@dataclass(frozen=True)
class CheckRequested:
    """The workflow asked ledger-sync to confirm a loan's balance (``BalanceCheckRequested``)."""

    loan_id: str
    check_id: str
    requested_at: datetime


@dataclass(frozen=True)
class CheckAnswered:
    """Ledger-sync's answer to a check: a confirmation, or None for a refusal."""

    loan_id: str
    check_id: str
    confirmation: LedgerConfirmation | None


@dataclass(frozen=True)
class ConfirmationView:
    """What the notifier has read of one loan's balance checks and their answers."""

    # The newest confirmation (by confirmed_at), whichever check asked for it.
    latest: LedgerConfirmation | None = None
    # When the newest check still without an answer was asked for (None: none waits).
    pending_since: datetime | None = None


NO_CONFIRMATIONS = ConfirmationView()


@dataclass(frozen=True)
class ConfirmationWait:
    """How long a confirmation asked for takes to arrive, and when to stop waiting."""

    # What a person is told to wait before asking again (the round trip through the
    # workflow, ledger-sync and back takes about a second on a healthy system).
    expect: timedelta = timedelta(seconds=3)
    # A check unanswered for longer is presumed lost (refused, or a service down): a
    # refusal then asks for another one rather than promising one.
    give_up: timedelta = timedelta(seconds=60)


def anchored(anchor: ContactRequest, view: ConfirmationView) -> ContactRequest:
    """``anchor`` resting on the freshest confirmation known for its loan.

    Only the confirmation changes (its id, watermark, amount, time and validity): the case,
    stage, time zone and the command's issue time stay the command's, so a workflow
    cancellation that covers the command still covers a person's contact.
    """
    fresh = view.latest
    if fresh is None or fresh.confirmed_at <= anchor.confirmed_at:
        return anchor
    return replace(
        anchor,
        confirmation_id=fresh.confirmation_id,
        ledger_watermark=fresh.ledger_watermark,
        amount_due=fresh.confirmed_outstanding,
        confirmed_at=fresh.confirmed_at,
        confirmation_valid_until=fresh.valid_until,
    )


def confirmation_on_its_way(
    view: ConfirmationView, now: datetime, wait: ConfirmationWait
) -> datetime | None:
    """When to ask again, if a confirmation has been asked for and may still come."""
    since = view.pending_since
    if since is None or since <= now - wait.give_up:
        return None
    return max(now, since) + wait.expect


# The workflow's cancellation reasons (ContactCancelled.reason), as permit refusals.
_CANCELLED: dict[str, RefusalReason] = {
    "repaid": "repaid",
    "held": "hold",
    "settled": "case_closed",
    "closed": "case_closed",
    "written_off": "case_closed",
}
_CANCEL_RULES: dict[str, RefusalReason] = {
    RULE_CLOSED: "case_closed",
    RULE_HOLD: "hold",
    RULE_RECHECK: "repaid",
    RULE_CONFIRMATION: "balance_unconfirmed",
}
_BLOCK_RULES: dict[str, RefusalReason] = {
    RULE_GUARANTOR: "not_a_party",
    RULE_DO_NOT_CONTACT: "do_not_contact",
    RULE_OPT_OUT: "opted_out",
    RULE_CONTACT_DETAILS: "no_contact_details",
    RULE_JURISDICTION: "no_policy",
}
_DEFER_REASONS: dict[str, RefusalReason] = {
    "outside_contact_window": "outside_hours",
    "frequency_cap": "cap_reached",
    "attempt_in_flight": "cap_reached",
    "quiet_after_conversation": "quiet_period",
    "call_in_progress": "call_in_progress",
    "awaiting_validation_notice": "validation_notice_first",
}


def human_request(anchor: ContactRequest, ask: PermitAsk, permit_id: str) -> ContactRequest:
    """The contact a person asks for, as the engine sees it: the anchor command's case,
    confirmation and time, another party and channel, no text, and the permit's own id
    (so its attempt is told apart from every command's)."""
    return replace(
        anchor,
        command_id=permit_id,
        intent_id=permit_id,
        recipient=ask.recipient,
        channel=ask.channel,
        template=None,
    )


def judge(decision: Decision) -> PermitDecision:
    """What ``decide``'s answer means for a person waiting to call."""
    match decision:
        case Send(validation_notice=True):
            # Cannot happen without a template (decide defers a person instead); refused
            # all the same, so a change there can never let a person carry a notice.
            return Refused("validation_notice_first", decision.rule, decision.reason)
        case Send():
            return Granted(decision.rule)
        case Defer():
            reason = _DEFER_REASONS.get(decision.reason, "cap_reached")
            return Refused(reason, decision.rule, decision.reason, decision.until)
        case Cancel():
            if decision.rule == RULE_CANCELLATION:
                return Refused(
                    _CANCELLED.get(decision.reason, "contact_cancelled"),
                    decision.rule,
                    decision.reason,
                )
            return Refused(
                _CANCEL_RULES.get(decision.rule, "contact_cancelled"),
                decision.rule,
                decision.reason,
            )
        case Block():
            return Refused(
                _BLOCK_RULES.get(decision.rule, "no_policy"), decision.rule, decision.reason
            )
    raise AssertionError(f"unknown decision {decision!r}")  # pragma: no cover


def decide_permit(
    ask: PermitAsk,
    anchor: ContactRequest | None,
    context: DispatchContext,
    *,
    permit_id: str,
    now: datetime,
    policy: DispatchPolicy,
    confirmations: ConfirmationView = NO_CONFIRMATIONS,
    wait: ConfirmationWait = ConfirmationWait(),
) -> PermitDecision:
    """Grant or refuse ``ask``, on ``anchor`` (the loan's latest contact command, None if
    the notifier has none) resting on the freshest of its loan's ``confirmations``, and
    ``context`` (loaded as the dispatcher loads it).

    Refused for want of a valid confirmation, the answer says when to ask again if one is
    on its way (``retry_after``); if none is, its detail says one must be asked for
    (``confirmation_needed``: the app asks the workflow for one)."""
    if anchor is None:
        return Refused("case_unknown", RULE_CASE, "no_contact_command_for_loan")
    request = human_request(anchored(anchor, confirmations), ask, permit_id)
    decision = judge(decide(request, context, now, policy))
    if isinstance(decision, Refused) and decision.reason == "balance_unconfirmed":
        retry = confirmation_on_its_way(confirmations, now, wait)
        if retry is None:
            return replace(decision, detail=CONFIRMATION_NEEDED)
        return replace(decision, detail=CONFIRMATION_ON_ITS_WAY, retry_after=retry)
    return decision


# The details of a ``balance_unconfirmed`` refusal: a confirmation has been asked for and
# may still come (with ``retry_after``), or none has and one must be; ``asked``: none had,
# and this refusal asked the workflow for one (with ``retry_after``).
CONFIRMATION_ON_ITS_WAY = "confirmation_requested"
CONFIRMATION_NEEDED = "confirmation_needed"
CONFIRMATION_ASKED = "confirmation_asked"


def asking_for_confirmation(refused: Refused, now: datetime, wait: ConfirmationWait) -> Refused:
    """``refused`` once a confirmation has been asked for on its account: on its way now."""
    return replace(refused, detail=CONFIRMATION_ASKED, retry_after=now + wait.expect)


@dataclass(frozen=True)
class Permit:
    """A permit as stored: what was asked, what was decided, and any result reported."""

    permit_id: str
    loan_id: str
    recipient: Recipient
    channel: ChannelName
    actor_kind: ActorKind
    actor_id: str
    decision: Literal["granted", "refused"]
    reason: str
    rule: str
    asked_at: datetime
    expires_at: datetime | None = None
    # Until when its holder may report the result (the call may outlast the permit).
    result_by: datetime | None = None
    result: PermitResult | None = None
    result_at: datetime | None = None
    # Where the actor's kind came from: the token, or the body (a delegate's).
    actor_from: str = "token"
    # Refused: what happens next (``confirmation_requested``...) and when to ask again.
    detail: str = ""
    retry_after: datetime | None = None
    # The ledger confirmation the decision rested on: the command's or a fresher one.
    confirmation_id: str | None = None


# What to do with a reported result.
ResultCheck = Literal["record", "replay", "not_yours", "not_granted", "expired", "conflict"]


def check_result(permit: Permit, actor_id: str, result: PermitResult, now: datetime) -> ResultCheck:
    """Whether ``actor_id`` may report ``result`` for ``permit`` now.

    Only the permit's holder reports its result; once, so a retried post counts once
    (the same result again is a replay; another one is a conflict, never a second count).
    A result later than ``result_by`` is refused: the attempt has counted as unknown, the
    worst case, since then.
    """
    if permit.actor_id != actor_id:
        return "not_yours"
    if permit.decision != "granted":
        return "not_granted"
    if permit.result is not None:
        return "replay" if permit.result == result else "conflict"
    if permit.result_by is None or now > permit.result_by:
        return "expired"
    return "record"
