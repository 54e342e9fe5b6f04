"""The names and numbers the services share, defined once, stdlib only.

The contract (:mod:`collections_kit.contract`) puts them on the wire and each service's
pure domain uses the same definitions, so renaming a stage or changing a default is one
edit, not one per service.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Literal, get_args


class Stage(StrEnum):
    """The stages of a case, in escalation order (the order of the members)."""

    WARNING = "warning"
    FORMAL_NOTICE = "formal_notice"
    GUARANTOR_RECOURSE = "guarantor_recourse"
    LITIGATION = "litigation"
    ENFORCEMENT = "enforcement"


# The channels a contact goes out on, and the parties it may be for.
Channel = Literal["sms", "voice", "email", "letter"]
CHANNELS: tuple[Channel, ...] = get_args(Channel)
Recipient = Literal["debtor", "guarantor"]
RECIPIENTS: tuple[Recipient, ...] = get_args(Recipient)

# A balance differing by at most this is rounding, not debt: nobody is chased for cents.
# The default of the workflow's escalation policy and of ledger-sync's balance checks.
BALANCE_TOLERANCE = Decimal("1.00")
