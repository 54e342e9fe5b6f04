"""Contact policy as data: per-jurisdiction rules and the notifier's own safety margins.

Each rule has a stable name (``CN.contact_window``) that every decision records, so an
auditor can tell which rule stopped or allowed a contact, and a later change of the numbers
never rewrites how an old decision is explained. Caps and opt-outs will join here as more
per-jurisdiction rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta


@dataclass(frozen=True)
class ContactWindow:
    """Local wall-clock hours in which contact is allowed: ``start <= t < end``."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("a contact window is local wall-clock time, without a zone")
        # Windows crossing midnight are not needed by any regulator we follow; refusing them
        # keeps the next-allowed-moment arithmetic simple and obviously right.
        if not self.start < self.end:
            raise ValueError("a contact window must start before it ends on the same day")

    def contains(self, wall: time) -> bool:
        return self.start <= wall < self.end


@dataclass(frozen=True)
class JurisdictionPolicy:
    jurisdiction: str
    window: ContactWindow
    # Where the numbers come from, for the audit trail and the reader.
    source: str

    @property
    def window_rule(self) -> str:
        return f"{self.jurisdiction}.contact_window"


CN = JurisdictionPolicy(
    "CN", ContactWindow(time(8, 0), time(22, 0)),
    "NIFA post-loan collection guideline (2024); GB/T 45251-2025; CBA consumer-loan "
    "collection guideline (2026): no contact 22:00-08:00 local time")
US = JurisdictionPolicy(
    "US", ContactWindow(time(8, 0), time(21, 0)),
    "Regulation F, 12 CFR 1006.6(b)(1)(i): 08:00-21:00 in the consumer's local time")
UK = JurisdictionPolicy(
    "UK", ContactWindow(time(8, 0), time(21, 0)),
    "House rule: the FCA sets no hours, so the US hours serve as a reasonable-time bound")

DEFAULT_JURISDICTIONS: tuple[JurisdictionPolicy, ...] = (CN, US, UK)

# The stage in which the guarantor becomes the one to contact (the workflow's stage name).
GUARANTOR_RECOURSE = "guarantor_recourse"


@dataclass(frozen=True)
class DispatchPolicy:
    version: str = "notifier/2026-11-01"
    jurisdictions: Mapping[str, JurisdictionPolicy] = field(
        default_factory=lambda: {p.jurisdiction: p for p in DEFAULT_JURISDICTIONS})
    # How far before the ledger confirmation a repayment still makes the confirmation
    # suspect; see ``decide`` for why the margin exists.
    recheck_lookback: timedelta = timedelta(minutes=10)
    # Stages in which the guarantor is a party we may contact.
    guarantor_stages: frozenset[str] = frozenset({GUARANTOR_RECOURSE})

    @classmethod
    def of(cls, jurisdictions: Iterable[JurisdictionPolicy] = DEFAULT_JURISDICTIONS, *,
           recheck_lookback: timedelta = timedelta(minutes=10)) -> DispatchPolicy:
        return cls(jurisdictions={p.jurisdiction: p for p in jurisdictions},
                   recheck_lookback=recheck_lookback)

    def for_jurisdiction(self, jurisdiction: str) -> JurisdictionPolicy | None:
        return self.jurisdictions.get(jurisdiction)
