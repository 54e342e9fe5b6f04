"""Ledger-sync's handlers: keep the projection, answer balance checks."""

from __future__ import annotations

import json

from collections_kit import contract as c
from collections_kit.clock import derived_id
from collections_kit.consumer import Handler
from collections_kit.envelope import Envelope
from collections_kit.outbox import Tx
from ledger_sync.adapters.repository import LedgerRepository
from ledger_sync.domain.ledger import CheckPolicy, Confirm, Posting, answer_check, apply_posting


class LedgerSyncHandlers:
    def __init__(self, policy: CheckPolicy) -> None:
        self._policy = policy

    def routes(self) -> dict[type[c.Message], Handler]:
        return {
            c.LedgerPostingBooked: self.posting,
            c.RepaymentReceived: self.repayment,
            c.RepaymentReversed: self.reversal,
            c.BalanceCheckRequested: self.check,
        }

    async def posting(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.LedgerPostingBooked)
        repo = LedgerRepository(tx.conn)
        current = await repo.projection(data.loan_id, lock=True)
        posting = Posting(data.posting_id, data.loan_id, data.sequence, data.kind,
                          data.currency, data.amount, data.booked_at, data.repayment_id)
        result = apply_posting(current, await repo.buffered(data.loan_id), posting, tx.now)
        await repo.save_projection(result.projection, result.applied, result.still_buffered)

    async def repayment(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.RepaymentReceived)
        await LedgerRepository(tx.conn).record_repayment(
            data.repayment_id, data.loan_id, data.amount, data.received_at)

    async def reversal(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.RepaymentReversed)
        await LedgerRepository(tx.conn).record_reversal(data.repayment_id, data.loan_id)

    async def check(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.BalanceCheckRequested)
        repo = LedgerRepository(tx.conn)
        projection = await repo.projection(data.loan_id, lock=True)
        previous = await repo.answer(data.check_id)
        answer: c.BalanceConfirmed | c.BalanceRefused
        if previous is not None:
            # The same check asked again gets the same answer, confirmation id and all.
            model = c.BalanceConfirmed if previous.answer_type == "confirmed" else c.BalanceRefused
            answer = model.model_validate(previous.payload)
        else:
            verdict = answer_check(projection, await repo.has_gap(data.loan_id),
                                   await repo.money_in_flight(data.loan_id),
                                   data.expected_outstanding, tx.now, self._policy)
            if isinstance(verdict, Confirm):
                answer = c.BalanceConfirmed(
                    check_id=data.check_id, loan_id=data.loan_id,
                    confirmation_id=derived_id(data.check_id, "confirmation"),
                    currency=data.currency,
                    confirmed_outstanding=verdict.outstanding,
                    ledger_watermark=verdict.watermark, confirmed_at=tx.now,
                    valid_until=verdict.valid_until,
                    expected_outstanding=data.expected_outstanding)
            else:
                answer = c.BalanceRefused(
                    check_id=data.check_id, loan_id=data.loan_id, reason=verdict.reason,
                    detail=verdict.detail, ledger_watermark=verdict.watermark, refused_at=tx.now)
            await repo.save_answer(
                data.check_id, data.loan_id,
                "confirmed" if isinstance(answer, c.BalanceConfirmed) else "refused",
                json.loads(answer.model_dump_json()), tx.now)
        # Keyed by the check: a repeated answer is a duplicate the workflow's inbox drops.
        tx.publish(answer, event_id=derived_id(data.check_id, "answer"), subject=data.loan_id)
