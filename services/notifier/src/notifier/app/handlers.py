"""Thin handlers: map the wire message to the domain and store it.

Each runs inside the consumer's transaction (``Tx``). None of them calls anything outside
the database: a command is only stored here; the dispatcher decides and sends it later, so
a slow provider can never hold a Kafka partition back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from collections_kit import contract as c
from collections_kit.consumer import Handler
from collections_kit.envelope import Envelope
from collections_kit.outbox import Tx
from notifier.adapters.agency_placements import AgencyPlacementRepository
from notifier.adapters.permits import PermitRepository
from notifier.adapters.repository import DispatchRepository
from notifier.app.audit import record_cancellations
from notifier.domain.decide import (
    REPAID_AFTER_CONFIRMATION,
    RULE_CANCELLATION,
    RULE_CLOSED,
    RULE_HOLD,
    RULE_RECHECK,
    voids_confirmation,
)
from notifier.domain.model import Cancellation, Closure, ContactRequest, Dispatch
from notifier.domain.permits import CheckAnswered, CheckRequested, LedgerConfirmation
from notifier.domain.policy import DispatchPolicy

log = logging.getLogger(__name__)

# A loan's balance checks and their answers: stored a run at a time (see batch).
_CHECKS = (c.BalanceCheckRequested, c.BalanceConfirmed, c.BalanceRefused)


def to_request(data: c.ContactCommand) -> ContactRequest:
    return ContactRequest(
        command_id=data.command_id,
        intent_id=data.intent_id,
        case_id=data.case_id,
        loan_id=data.loan_id,
        borrower_id=data.borrower_id,
        recipient=data.recipient,
        channel=data.channel,
        stage=data.stage,
        template=data.template,
        currency=data.currency,
        amount_due=data.amount_due,
        confirmation_id=data.confirmation_id,
        ledger_watermark=data.ledger_watermark,
        confirmed_at=data.confirmed_at,
        confirmation_valid_until=data.confirmation_valid_until,
        borrower_time_zone=data.borrower_time_zone,
        jurisdiction=data.jurisdiction,
        issued_at=data.issued_at,
    )


class NotifierHandlers:
    def __init__(self, policy: DispatchPolicy) -> None:
        self._policy = policy
        # Set when a handler stored a new command (taken by ``new_commands``): only those
        # give the dispatcher something to do now; waking it after every batch (case
        # events, repayments) cost two empty transactions each under a steady trickle.
        self._stored = False

    def new_commands(self) -> bool:
        """Whether commands were stored since the last call (a rolled-back batch may also
        say yes: one needless look, never a missed one)."""
        stored, self._stored = self._stored, False
        return stored

    def routes(self) -> dict[type[c.Message], Handler]:
        return {
            c.ContactCommand: self.command,
            c.ContactCancelled: self.cancelled,
            c.RepaymentReceived: self.repayment,
            c.RepaymentReversed: self.reversal,
            c.CaseHeld: self.held,
            c.CaseResumed: self.resumed,
            # The other case events (opened, stage changed) are skipped by the consumer loop:
            # a command carries its stage.
            c.CaseClosed: self.closed,
            c.PlacementNotice: self.placement,
            # The loans' balance checks and their answers: what a contact permit rests on.
            c.BalanceCheckRequested: self.check_fact,
            c.BalanceConfirmed: self.check_fact,
            c.BalanceRefused: self.check_fact,
        }

    async def batch(self, tx: Tx, envelopes: Sequence[Envelope]) -> None:
        """A polled batch in its order, one message at a time, except for two kinds of run,
        each stored in one statement: contact commands (the first of two copies wins, as
        one at a time) and the loans' balance checks and answers (what a permit rests on;
        their own table, which nothing else in a batch reads or writes). Any other message
        ends both runs first."""
        routes = self.routes()
        run: list[Envelope] = []
        checks: list[Envelope] = []
        for env in envelopes:
            if isinstance(env.data, c.ContactCommand):
                run.append(env)
                continue
            if isinstance(env.data, _CHECKS):
                checks.append(env)
                continue
            await self._commands(tx, run)
            await self._checks(tx, checks)
            await routes[type(env.data)](tx, env)
        await self._commands(tx, run)
        await self._checks(tx, checks)

    async def command(self, tx: Tx, env: Envelope) -> None:
        await self._commands(tx, [env])

    async def _commands(self, tx: Tx, run: list[Envelope]) -> None:
        if not run:
            return
        commands = [env.data for env in run if isinstance(env.data, c.ContactCommand)]
        added = await DispatchRepository(tx.conn).add_many(
            [to_request(data) for data in commands], now=tx.now
        )
        self._stored = self._stored or bool(added)
        # Debug: every command's fate is logged at info when it is decided (sent, deferred,
        # cancelled, blocked); three info lines per contact were 9% of the notifier's time
        # in the pipeline benchmark.
        if log.isEnabledFor(logging.DEBUG):
            for env, data in zip(run, commands, strict=True):
                stored = data.command_id in added
                added.discard(data.command_id)  # a second copy in the run is a known one
                log.debug(
                    "contact command stored" if stored else "contact command known already",
                    extra={
                        "command_id": data.command_id,
                        "loan_id": data.loan_id,
                        "channel": data.channel,
                        "event_id": env.id,
                    },
                )
        run.clear()

    async def cancelled(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.ContactCancelled)
        repo = DispatchRepository(tx.conn)
        cancellation = Cancellation(data.reason, data.cancelled_at, data.command_id)
        # Remembered first, so a command issued before it but arriving after it is also
        # stopped (the dispatcher checks the mark before anything else).
        await repo.remember_cancellation(data.loan_id, cancellation, now=tx.now)
        await self._cancel(
            tx,
            env,
            data.loan_id,
            await repo.cancellable(data.loan_id),
            cancellation.covers,
            reason=data.reason,
            rule=RULE_CANCELLATION,
            message="contact cancelled by the workflow",
            detail={"reason": data.reason},
        )

    async def repayment(self, tx: Tx, env: Envelope) -> None:
        """A repayment stops the loan's waiting commands now.

        Each was built on a ledger confirmation that may not have seen this money, and the
        dispatcher would refuse it for that reason when its turn came (the recheck rule);
        deciding it here, on the same rule, stops a deferred or queued command one hop after
        the repayment instead of waiting for the dispatcher or the workflow's cancellation.
        """
        data = env.data
        assert isinstance(data, c.RepaymentReceived)
        repo = DispatchRepository(tx.conn)
        # The loan's waiting commands come back with the stored repayment (one round trip).
        repayment, waiting = await repo.record_repayment(
            repayment_id=data.repayment_id,
            loan_id=data.loan_id,
            currency=data.currency,
            amount=data.amount,
            received_at=data.received_at,
            now=tx.now,
        )
        await self._cancel(
            tx,
            env,
            data.loan_id,
            waiting,
            lambda request: voids_confirmation(repayment, request, self._policy),
            reason=REPAID_AFTER_CONFIRMATION,
            rule=RULE_RECHECK,
            message="contact cancelled: repaid after confirmation",
        )

    async def reversal(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.RepaymentReversed)
        await DispatchRepository(tx.conn).reverse_repayment(
            repayment_id=data.repayment_id,
            loan_id=data.loan_id,
            currency=data.currency,
            amount=data.amount,
            reversed_at=data.reversed_at,
            now=tx.now,
        )

    async def held(self, tx: Tx, env: Envelope) -> None:
        """A hold stops everything: pending and deferred commands are cancelled now.

        Cancelled rather than parked: the workflow re-confirms the balance on resume and
        issues fresh commands, so an old one must never go out after the hold, with an
        amount that may no longer be right. Commands arriving later that were issued before
        the hold ended are stopped by the dispatcher, which sees the hold too.
        """
        data = env.data
        assert isinstance(data, c.CaseHeld)
        repo = DispatchRepository(tx.conn)
        hold = await repo.hold(
            hold_id=data.hold_id,
            loan_id=data.loan_id,
            case_id=data.case_id,
            kind=data.kind,
            held_at=data.held_at,
            until=data.until,
            now=tx.now,
        )
        at = max(tx.now, data.held_at)
        await self._cancel(
            tx,
            env,
            data.loan_id,
            await repo.cancellable(data.loan_id),
            lambda request: hold.covers(request, at),
            reason=f"case_held_{data.kind}",
            rule=RULE_HOLD,
            message="contact cancelled: case held",
            detail={"kind": data.kind},
        )
        log.info(
            "case held", extra={"loan_id": data.loan_id, "hold_id": data.hold_id, "kind": data.kind}
        )

    async def resumed(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.CaseResumed)
        await DispatchRepository(tx.conn).resume(
            hold_id=data.hold_id,
            loan_id=data.loan_id,
            case_id=data.case_id,
            resumed_at=data.resumed_at,
            now=tx.now,
        )
        log.info("case resumed", extra={"loan_id": data.loan_id, "hold_id": data.hold_id})

    async def placement(self, tx: Tx, env: Envelope) -> None:
        """Which agency may read a borrower's contact details: the one a case of theirs is
        placed with now (held and repaid notices change nothing here; a recall follows)."""
        data = env.data
        assert isinstance(data, c.PlacementNotice)
        repo = AgencyPlacementRepository(tx.conn)
        if data.kind in ("placed", "resumed"):
            await repo.placed(
                loan_id=data.loan_id,
                borrower_id=data.borrower_id,
                agency=data.agency,
                placement_id=data.placement_id,
                now=tx.now,
            )
        elif data.kind == "recalled":
            await repo.recalled(loan_id=data.loan_id, placement_id=data.placement_id, now=tx.now)

    async def check_fact(self, tx: Tx, env: Envelope) -> None:
        """A balance check the workflow asked for, or ledger-sync's answer to one: what a
        person's permit rests on (a fresh confirmation; decide checks it as a command's:
        unexpired, no repayment since) and whether one is on its way (a person refused for
        want of one is told when to ask again)."""
        await self._checks(tx, [env])

    async def _checks(self, tx: Tx, run: list[Envelope]) -> None:
        """A run of checks and answers, in order: the two kinds change different columns
        of a loan's row, so the checks go in one statement and the answers in another."""
        if not run:
            return
        requested: list[CheckRequested] = []
        answered: list[CheckAnswered] = []
        for env in run:
            data = env.data
            if isinstance(data, c.BalanceCheckRequested):
                requested.append(CheckRequested(data.loan_id, data.check_id, data.requested_at))
            elif isinstance(data, c.BalanceConfirmed):
                confirmation = LedgerConfirmation(
                    data.confirmation_id,
                    data.ledger_watermark,
                    data.confirmed_outstanding,
                    data.confirmed_at,
                    data.valid_until,
                )
                answered.append(CheckAnswered(data.loan_id, data.check_id, confirmation))
            elif isinstance(data, c.BalanceRefused):
                answered.append(CheckAnswered(data.loan_id, data.check_id, None))
        repo = PermitRepository(tx.conn)
        if requested:
            await repo.checks_requested(requested, now=tx.now)
        if answered:
            await repo.checks_answered(answered, now=tx.now)
        run.clear()

    async def closed(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.CaseClosed)
        repo = DispatchRepository(tx.conn)
        await repo.close_case(
            case_id=data.case_id,
            loan_id=data.loan_id,
            outcome=data.outcome,
            closed_at=data.closed_at,
        )
        closure = Closure(data.outcome, data.closed_at)
        await self._cancel(
            tx,
            env,
            data.loan_id,
            await repo.cancellable(data.loan_id),
            closure.covers,
            reason=f"case_closed_{data.outcome}",
            rule=RULE_CLOSED,
            message="contact cancelled: case closed",
            detail={"outcome": data.outcome},
        )

    async def _cancel(
        self,
        tx: Tx,
        env: Envelope,
        loan_id: str,
        waiting: list[Dispatch],
        covers: Callable[[ContactRequest], bool],
        *,
        reason: str,
        rule: str,
        message: str,
        detail: dict[str, str] | None = None,
    ) -> None:
        """Cancel, audited and announced, each of the loan's ``waiting`` commands (not yet
        handed to a channel, locked against the dispatcher) that ``covers`` says the news
        stops."""
        stopped = [dispatch for dispatch in waiting if covers(dispatch.request)]
        await record_cancellations(
            tx,
            DispatchRepository(tx.conn),
            stopped,
            reason=reason,
            rule=rule,
            policy_version=self._policy.version,
            cause_id=env.id,
        )
        for dispatch in stopped:
            log.info(
                message,
                extra={"command_id": dispatch.command_id, "loan_id": loan_id, **(detail or {})},
            )
