"""Turning a verdict into the messages the workflow receives, whichever path reached it."""

from __future__ import annotations

import json
import logging

from collections_kit import contract as c
from collections_kit.clock import derived_id
from collections_kit.outbox import Tx
from ledger_sync.adapters.cases import CasesRepository
from ledger_sync.adapters.repository import LedgerRepository, PreviousAnswer
from ledger_sync.domain.ledger import Confirm, Refuse
from ledger_sync.metrics import BALANCE_CHECK_FAILURES, BALANCE_CHECK_SECONDS, CHECKS_ANSWERED

log = logging.getLogger(__name__)
# Refusals that mean "could not check", not "nothing to collect".
_TECHNICAL_REFUSALS = {"projection_stale", "sequence_gap"}


async def stage_answer(tx: Tx, check: c.BalanceCheckRequested, verdict: Confirm | Refuse,
                       ledger_currency: str | None, *, path: str) -> None:
    """Store the answer to ``check`` and stage it (plus a settled correction) for publishing.

    Event ids derive from the check: answered twice (a replay, or two replicas racing after
    a lease ran out), the check still yields one answer downstream.
    """
    answer: c.BalanceConfirmed | c.BalanceRefused
    cases = CasesRepository(tx.conn)
    if isinstance(verdict, Confirm):
        answer = c.BalanceConfirmed(
            check_id=check.check_id, loan_id=check.loan_id,
            confirmation_id=derived_id(check.check_id, "confirmation"),
            currency=check.currency, confirmed_outstanding=verdict.outstanding,
            ledger_watermark=verdict.watermark, confirmed_at=tx.now,
            valid_until=verdict.valid_until, expected_outstanding=check.expected_outstanding)
        if verdict.mismatch:
            # The ledger's amount is what gets confirmed; the workflow puts the difference on
            # the case timeline (it has both amounts in the confirmation).
            log.info("confirmed amount differs from the expected one beyond tolerance",
                     extra={"check_id": check.check_id, "watermark": verdict.watermark})
        await cases.set_view(check.loan_id, check.currency, verdict.outstanding,
                             "confirmation", tx.now)
    else:
        answer = c.BalanceRefused(
            check_id=check.check_id, loan_id=check.loan_id, reason=verdict.reason,
            detail=verdict.detail, ledger_watermark=verdict.watermark, refused_at=tx.now)
    await LedgerRepository(tx.conn).save_answer(
        check.check_id, check.loan_id,
        "confirmed" if isinstance(answer, c.BalanceConfirmed) else "refused",
        json.loads(answer.model_dump_json()), tx.now)
    # Keyed by the check: a repeated answer is a duplicate the workflow's inbox drops.
    tx.publish(answer, event_id=derived_id(check.check_id, "answer"), subject=check.loan_id)
    CHECKS_ANSWERED.labels(path, "confirmed" if isinstance(verdict, Confirm)
                           else verdict.reason).inc()
    BALANCE_CHECK_SECONDS.labels(path).observe(
        max((tx.now - check.requested_at).total_seconds(), 0.0))
    if isinstance(verdict, Refuse) and verdict.reason in _TECHNICAL_REFUSALS:
        BALANCE_CHECK_FAILURES.labels(verdict.reason).inc()
    if isinstance(verdict, Refuse) and verdict.reason == "nothing_owed":
        assert verdict.outstanding is not None and ledger_currency is not None
        # A settled correction, so the workflow closes the case rather than only dropping
        # this one contact.
        tx.publish(c.BalanceCorrected(
            loan_id=check.loan_id, kind="nothing_owed", currency=ledger_currency,
            ledger_outstanding=verdict.outstanding, ledger_watermark=verdict.watermark,
            corrected_at=tx.now), event_id=derived_id(check.check_id, "correction"),
            subject=check.loan_id)
        await cases.note_correction(check.loan_id, "nothing_owed", verdict.outstanding,
                                    verdict.watermark)
        await cases.set_view(check.loan_id, ledger_currency, verdict.outstanding, "correction",
                             tx.now)


def republish(tx: Tx, check: c.BalanceCheckRequested, previous: PreviousAnswer) -> None:
    """The same check asked again gets the same answer, confirmation id and all."""
    model = c.BalanceConfirmed if previous.answer_type == "confirmed" else c.BalanceRefused
    answer = model.model_validate(previous.payload)
    tx.publish(answer, event_id=derived_id(check.check_id, "answer"), subject=check.loan_id)
