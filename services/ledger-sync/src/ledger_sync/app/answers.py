"""Turning a verdict into the messages the workflow receives, whichever path reached it."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from collections_kit import contract as c
from collections_kit.clock import derived_id
from collections_kit.outbox import Tx
from ledger_sync.adapters.repository import PreviousAnswer
from ledger_sync.app.ports import Answers, CaseViews
from ledger_sync.domain.ledger import Confirm, Refuse
from ledger_sync.metrics import BALANCE_CHECK_FAILURES, BALANCE_CHECK_SECONDS, CHECKS_ANSWERED

log = logging.getLogger(__name__)
# Refusals that mean "could not check", not "nothing to collect".
_TECHNICAL_REFUSALS = {"projection_stale", "sequence_gap"}


async def stage_answer(
    tx: Tx,
    ledger: Answers,
    cases: CaseViews,
    check: c.BalanceCheckRequested,
    verdict: Confirm | Refuse,
    ledger_currency: str | None,
    *,
    path: str,
) -> None:
    """Store the answer to ``check`` and stage it (plus a settled correction) for publishing.

    Event ids derive from the check: answered twice (a replay, or two replicas racing after
    a lease ran out), the check still yields one answer downstream.
    """
    if isinstance(verdict, Confirm):
        await stage_confirmations(tx, ledger, [(check, verdict)], path=path)
        return
    answer = c.BalanceRefused(
        check_id=check.check_id,
        loan_id=check.loan_id,
        reason=verdict.reason,
        detail=verdict.detail,
        ledger_watermark=verdict.watermark,
        refused_at=tx.now,
    )
    # The figure the collections side holds from here: a refusal leaves it with what it
    # expected, a settled correction (nothing_owed, below) gives it the ledger's.
    figure = (check.currency, check.expected_outstanding)
    if verdict.reason == "nothing_owed":
        assert verdict.outstanding is not None
        assert ledger_currency is not None
        figure = (ledger_currency, verdict.outstanding)
    await ledger.save_answer(
        check.check_id,
        check.loan_id,
        "refused",
        json.loads(answer.model_dump_json()),
        tx.now,
        figure,
    )
    _publish(tx, check, answer, path, verdict.reason)
    if verdict.reason in _TECHNICAL_REFUSALS:
        BALANCE_CHECK_FAILURES.labels(verdict.reason).inc()
    if verdict.reason == "nothing_owed":
        assert verdict.outstanding is not None
        assert ledger_currency is not None
        # A settled correction, so the workflow closes the case rather than only dropping
        # this one contact.
        tx.publish(
            c.BalanceCorrected(
                loan_id=check.loan_id,
                kind="nothing_owed",
                currency=ledger_currency,
                ledger_outstanding=verdict.outstanding,
                ledger_watermark=verdict.watermark,
                corrected_at=tx.now,
            ),
            event_id=derived_id(check.check_id, "correction"),
            subject=check.loan_id,
        )
        await cases.note_correction(
            check.loan_id, "nothing_owed", verdict.outstanding, verdict.watermark
        )


async def stage_confirmations(
    tx: Tx,
    ledger: Answers,
    confirmed: Sequence[tuple[c.BalanceCheckRequested, Confirm]],
    *,
    path: str,
) -> None:
    """``stage_answer`` for confirmations of distinct loans, in one write for all of them:
    the answers are stored, each with the ledger's amount as the collections side's
    figure."""
    answers = []
    for check, verdict in confirmed:
        answers.append(
            c.BalanceConfirmed(
                check_id=check.check_id,
                loan_id=check.loan_id,
                confirmation_id=derived_id(check.check_id, "confirmation"),
                currency=check.currency,
                confirmed_outstanding=verdict.outstanding,
                ledger_watermark=verdict.watermark,
                confirmed_at=tx.now,
                valid_until=verdict.valid_until,
                expected_outstanding=check.expected_outstanding,
            )
        )
        if verdict.mismatch:
            # The ledger's amount is what gets confirmed; the workflow puts the difference on
            # the case timeline (it has both amounts in the confirmation).
            log.info(
                "confirmed amount differs from the expected one beyond tolerance",
                extra={"check_id": check.check_id, "watermark": verdict.watermark},
            )
    await ledger.save_answers(
        [
            (
                answer.check_id,
                answer.loan_id,
                "confirmed",
                json.loads(answer.model_dump_json()),
                (answer.currency, answer.confirmed_outstanding),
            )
            for answer in answers
        ],
        tx.now,
    )
    for (check, _), answer in zip(confirmed, answers, strict=True):
        _publish(tx, check, answer, path, "confirmed")


def _publish(
    tx: Tx,
    check: c.BalanceCheckRequested,
    answer: c.BalanceConfirmed | c.BalanceRefused,
    path: str,
    outcome: str,
) -> None:
    # Keyed by the check: a repeated answer is a duplicate the workflow's inbox drops.
    tx.publish(answer, event_id=derived_id(check.check_id, "answer"), subject=check.loan_id)
    CHECKS_ANSWERED.labels(path, outcome).inc()
    BALANCE_CHECK_SECONDS.labels(path).observe(
        max((tx.now - check.requested_at).total_seconds(), 0.0)
    )


def republish(tx: Tx, check: c.BalanceCheckRequested, previous: PreviousAnswer) -> None:
    """The same check asked again gets the same answer, confirmation id and all."""
    model = c.BalanceConfirmed if previous.answer_type == "confirmed" else c.BalanceRefused
    answer = model.model_validate(previous.payload)
    tx.publish(answer, event_id=derived_id(check.check_id, "answer"), subject=check.loan_id)
