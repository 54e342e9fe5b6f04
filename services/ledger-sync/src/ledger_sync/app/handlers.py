"""Ledger-sync's handlers: keep the projection, answer balance checks, track open cases.

Each runs inside the consumer's transaction (``Tx``). None of them talks HTTP: a check the
projection cannot answer (stale, see ``domain.ledger.staleness``) is queued for the
:class:`~ledger_sync.app.verifier.StaleCheckResolver`, which asks the ledger's API outside
any transaction and answers then.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from collections_kit import contract as c
from collections_kit.consumer import Handler
from collections_kit.envelope import Envelope
from collections_kit.outbox import Tx
from ledger_sync.adapters.cases import CasesRepository
from ledger_sync.adapters.repository import LedgerRepository
from ledger_sync.app.answers import republish, stage_answer, stage_confirmations
from ledger_sync.domain.ledger import (
    CheckPolicy,
    Confirm,
    FreshnessPolicy,
    Posting,
    answer_check,
    apply_posting,
    staleness,
)

# What the ledger and the lender say about a loan's money: the consumer loop applies these
# first in each poll, so a balance check is answered after all of them. Records of
# different topics carry no order between them on Kafka, and a fetch that waits to fill
# gathers a loan's disbursement and the workflow's first check of it into one poll, in
# either order: answered first, the check was refused as an unknown loan (or confirmed
# with a repayment in flight unseen).
MONEY_FACTS: tuple[type[c.Message], ...] = (
    c.LedgerPostingBooked,
    c.RepaymentReceived,
    c.RepaymentReversed,
)


class LedgerSyncHandlers:
    def __init__(
        self,
        policy: CheckPolicy,
        freshness: FreshnessPolicy | None = None,
        *,
        ledger_api: bool = False,
        on_enqueued: Callable[[], None] | None = None,
    ) -> None:
        self._policy = policy
        self._freshness = freshness or FreshnessPolicy()
        # With no ledger API there is nobody to ask: stale checks are refused at once.
        self._ledger_api = ledger_api
        self._on_enqueued = on_enqueued

    def routes(self) -> dict[type[c.Message], Handler]:
        return {
            c.LedgerPostingBooked: self.posting,
            c.RepaymentReceived: self.repayment,
            c.RepaymentReversed: self.reversal,
            c.BalanceCheckRequested: self.check,
            c.CaseOpened: self.case_opened,
            c.CaseClosed: self.case_closed,
            # The rest of the case topic (stage changes, holds) says nothing about whether a
            # case is open: the consumer loop counts and skips it, unclaimed.
        }

    async def posting(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.LedgerPostingBooked)
        repo = LedgerRepository(tx.conn)
        current = await repo.lock_projection(data.loan_id)
        posting = Posting(
            data.posting_id,
            data.loan_id,
            data.sequence,
            data.kind,
            data.currency,
            data.amount,
            data.booked_at,
            data.repayment_id,
        )
        result = apply_posting(current, await repo.buffered(data.loan_id), posting, tx.now)
        await repo.save_projection(result.projection, result.applied, result.still_buffered)

    async def repayment(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.RepaymentReceived)
        await LedgerRepository(tx.conn).record_repayment(
            data.repayment_id, data.loan_id, data.amount, data.received_at
        )

    async def reversal(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.RepaymentReversed)
        await LedgerRepository(tx.conn).record_reversal(data.repayment_id, data.loan_id)

    async def batch(self, tx: Tx, envelopes: Sequence[Envelope]) -> None:
        """A polled batch, in its order, one message at a time, except that a run of
        balance checks, or of case openings, for distinct loans (the workflow's daily run
        opens cases and asks for balances by the thousand) is handled together. A message
        of another kind, or for a loan already in the run, ends the run first; messages of
        different loans touch different rows: the outcome is exactly that of one at a time.

        The consumer loop hands the poll over with its money facts first (``MONEY_FACTS``):
        a check is answered on everything the poll knows."""
        routes = self.routes()
        run: dict[str, c.BalanceCheckRequested | c.CaseOpened] = {}

        async def flush() -> None:
            items = list(run.values())
            run.clear()
            if not items:
                return
            if isinstance(items[0], c.BalanceCheckRequested):
                await self._checks(tx, [i for i in items if isinstance(i, c.BalanceCheckRequested)])
            else:
                await CasesRepository(tx.conn).cases_opened(
                    [
                        (i.loan_id, i.case_id, i.opened_at)
                        for i in items
                        if isinstance(i, c.CaseOpened)
                    ]
                )

        for env in envelopes:
            data = env.data
            if isinstance(data, c.BalanceCheckRequested | c.CaseOpened):
                if data.loan_id in run or (
                    run and type(next(iter(run.values()))) is not type(data)
                ):
                    await flush()
                run[data.loan_id] = data
                continue
            await flush()
            await routes[type(data)](tx, env)
        await flush()

    async def check(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.BalanceCheckRequested)
        await self._checks(tx, [data])

    async def _checks(self, tx: Tx, checks: Sequence[c.BalanceCheckRequested]) -> None:
        """Answer balance checks of distinct loans: one read for all of them, then each is
        republished, queued for the ledger's API, refused, or confirmed (together)."""
        repo = LedgerRepository(tx.conn)
        contexts = await repo.check_contexts([(d.loan_id, d.check_id) for d in checks])
        confirmed: list[tuple[c.BalanceCheckRequested, Confirm]] = []
        for data, context in zip(checks, contexts, strict=True):
            if context.previous is not None:
                republish(tx, data, context.previous)
                continue
            projection, has_gap = context.projection, context.has_gap
            if self._ledger_api and (
                context.has_pending
                or staleness(projection, has_gap, tx.now, self._freshness) is not None
            ):
                # Behind an earlier waiting check for the loan too: one loan's answers keep
                # their order and all rest on the same refreshed projection. (The waiting
                # check's expectation is the collections side's figure meanwhile: the
                # collections_views view reads it from the queue.)
                await repo.enqueue_check(
                    data.check_id, data.loan_id, json.loads(data.model_dump_json()), tx.now
                )
                if self._on_enqueued is not None:
                    self._on_enqueued()
                continue
            verdict = answer_check(
                projection,
                has_gap,
                context.money_in_flight,
                data.expected_outstanding,
                tx.now,
                self._policy,
                currency=data.currency,
            )
            if isinstance(verdict, Confirm):
                confirmed.append((data, verdict))  # a confirmation records the ledger's amount
                continue
            await stage_answer(
                tx,
                repo,
                CasesRepository(tx.conn),
                data,
                verdict,
                projection.currency if projection else None,
                path="projection",
            )
        if confirmed:
            await stage_confirmations(tx, repo, confirmed, path="projection")

    async def case_opened(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.CaseOpened)
        await CasesRepository(tx.conn).case_opened(data.loan_id, data.case_id, data.opened_at)

    async def case_closed(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.CaseClosed)
        await CasesRepository(tx.conn).case_closed(data.loan_id, data.case_id)
