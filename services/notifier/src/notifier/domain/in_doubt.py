"""An attempt whose outcome is unknown: what it is, and what may be done about it.

A dispatcher that dies between handing a message to a channel and recording that it did
leaves the row ``sending``. When its lease runs out nobody knows whether the person got the
message. Sending again "with the same idempotency key" only helps where the other side
dedupes on it for as long as we may retry; an SMTP relay does not (a mailbox may drop a
repeated Message-ID, or may not), and a printed letter is posted twice. So the lease timer
never sends again. It only starts :func:`resolve`, which settles the question where the
channel can answer it, and otherwise records the attempt as *in doubt*:

- the channel can look the message up by its idempotency key (an HTTP provider, the
  development recorder): found means it was handed over (settled as sent, with what the
  provider knows of its delivery); not found means it reached nobody, and the command goes
  back to the dispatcher to be decided afresh (a cancellation may have come meanwhile);
- the lookup itself failed: ask again later (asking sends nothing);
- the channel cannot look anything up (SMTP, letters): in doubt. The attempt keeps
  counting against every cap (the worst case: it reached the person), the command is no
  longer due, the outcome is announced, and only a rule sends again: the channel's
  :class:`InDoubtRule` in the policy (default: never), or an operator's explicit decision.

Pure: no clock, no I/O. The dispatcher does the lookup at the edge and passes its answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from collections_kit.vocabulary import CHANNELS
from notifier.domain.model import ChannelName, DeliveryStatus

REASON_IN_DOUBT = "outcome_unknown_after_handover"
REASON_FOUND = "found_at_provider"
REASON_NOT_FOUND = "not_at_provider"
REASON_LOOKUP_FAILED = "lookup_failed"
REASON_RULE_RESEND = "in_doubt_rule_resend"


@dataclass(frozen=True)
class InDoubtRule:
    """Policy data for one channel: may an attempt in doubt be sent again without a person
    deciding it? Default no: a second e-mail or letter counts against the borrower's caps
    and, for a debt collector, is a contact the person did not need."""

    resend: bool = False
    source: str = ""


def in_doubt_rules_from_mapping(data: Mapping[str, Any]) -> dict[ChannelName, InDoubtRule]:
    """``{"email": {"resend": false, "source": "..."}, ...}`` (a policy file's table)."""
    rules: dict[ChannelName, InDoubtRule] = {}
    for channel, body in data.items():
        if channel not in CHANNELS:
            raise ValueError(f"in_doubt: unknown channel {channel!r}")
        unknown = set(body) - {"resend", "source"}
        if unknown:
            raise ValueError(f"in_doubt.{channel}: unknown keys {sorted(unknown)}")
        if not isinstance(body.get("resend", False), bool):
            raise ValueError(f"in_doubt.{channel}: resend must be true or false")
        rules[channel] = InDoubtRule(
            resend=body.get("resend", False), source=str(body.get("source", ""))
        )
    return rules


# --- what a channel's lookup answered --------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """The provider has the message under our idempotency key."""

    status: DeliveryStatus = "sent"
    provider_ref: str | None = None


@dataclass(frozen=True)
class NotFound:
    """The provider has never seen the key: the message reached nobody."""


@dataclass(frozen=True)
class LookupFailed:
    code: str


# None: the channel cannot look anything up.
LookupAnswer = Found | NotFound | LookupFailed | None


# --- what to do ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settle:
    """Record the attempt as handed over (the provider's delivery status with it)."""

    status: DeliveryStatus
    provider_ref: str | None
    rule: str
    reason: str = REASON_FOUND


@dataclass(frozen=True)
class SendAgain:
    """Back to the dispatcher, decided afresh. ``reached_nobody``: the attempt stops
    counting against the caps (the provider said so); otherwise it keeps counting."""

    rule: str
    reason: str
    reached_nobody: bool


@dataclass(frozen=True)
class LookAgain:
    until: datetime
    rule: str
    reason: str = REASON_LOOKUP_FAILED


@dataclass(frozen=True)
class InDoubt:
    rule: str
    reason: str = REASON_IN_DOUBT
    outcome: str = "in_doubt"


Resolution = Settle | SendAgain | LookAgain | InDoubt


def rule_name(channel: ChannelName) -> str:
    return f"channel.{channel}.in_doubt"


def resolve(
    channel: ChannelName, answer: LookupAnswer, rule: InDoubtRule, *, look_again_at: datetime
) -> Resolution:
    """What to do with an attempt of ``channel`` whose outcome is unknown, given what the
    channel's lookup answered (None: it has none)."""
    name = rule_name(channel)
    match answer:
        case Found(status=status, provider_ref=ref):
            return Settle(status, ref, name)
        case NotFound():
            return SendAgain(name, REASON_NOT_FOUND, reached_nobody=True)
        case LookupFailed():
            # Asking again sends nothing, so a timer may do it.
            return LookAgain(look_again_at, name)
    if rule.resend:
        return SendAgain(name, REASON_RULE_RESEND, reached_nobody=False)
    return InDoubt(name)
