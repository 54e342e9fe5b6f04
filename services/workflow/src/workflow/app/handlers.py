"""Thin handlers: map the wire message to the domain, decide, save, stage effects.

Each runs inside the consumer's transaction (``Tx``): the inbox row, the state change and
the outbox rows commit together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from collections_kit import contract as c
from collections_kit.clock import derived_id
from collections_kit.consumer import Handler
from collections_kit.envelope import Envelope
from collections_kit.outbox import Tx
from workflow.adapters.repository import CaseRepository
from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain.model import Case
from workflow.domain.policy import PolicyBook

log = logging.getLogger(__name__)


def _ids(cause_id: str) -> Callable[[str], str]:
    return lambda label: derived_id(cause_id, label)


class WorkflowHandlers:
    def __init__(self, policies: PolicyBook) -> None:
        self._policies = policies

    def routes(self) -> dict[type[c.Message], Handler]:
        return {
            c.LoanOverdue: self.overdue,
            c.RepaymentReceived: self.repayment,
            c.RepaymentReversed: self.reversal,
            c.BalanceConfirmed: self.confirmed,
            c.BalanceRefused: self.refused,
            c.ContactOutcome: self.outcome,
        }

    async def overdue(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.LoanOverdue)
        repo = CaseRepository(tx.conn)
        case = await repo.get(data.loan_id, lock=True)
        pending = await repo.pending_intents(data.loan_id) if case else []
        event = m.OverdueReported(
            event_id=env.id, loan_id=data.loan_id, borrower_id=data.borrower_id,
            product=data.product, currency=data.currency, amount_overdue=data.amount_overdue,
            outstanding=data.outstanding_balance, days_past_due=data.days_past_due,
            as_of=data.as_of, borrower_time_zone=data.borrower_time_zone,
            jurisdiction=data.jurisdiction,
        )
        policy = self._policies.for_product(data.product)
        decision = d.on_overdue(case, pending, event, policy, tx.now, _ids(env.id))
        await apply(tx, repo, case, decision, env.id)

    async def repayment(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.RepaymentReceived)
        repo = CaseRepository(tx.conn)
        case = await repo.get(data.loan_id, lock=True)
        if case is None:
            return  # a repayment on a loan we never chased concerns no case
        event = m.RepaymentReceived(env.id, data.repayment_id, data.amount,
                                    data.outstanding_balance_after, data.received_at)
        decision = d.on_repayment(case, await repo.pending_intents(data.loan_id), event,
                                  self._policies.for_product(case.product), tx.now)
        await apply(tx, repo, case, decision, env.id)

    async def reversal(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.RepaymentReversed)
        repo = CaseRepository(tx.conn)
        case = await repo.get(data.loan_id, lock=True)
        if case is None:
            return
        event = m.RepaymentReversed(env.id, data.repayment_id, data.amount,
                                    data.outstanding_balance_after, data.reversed_at)
        decision = d.on_reversal(case, event, self._policies.for_product(case.product),
                                 tx.now, _ids(env.id))
        await apply(tx, repo, case, decision, env.id)

    async def confirmed(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.BalanceConfirmed)
        repo = CaseRepository(tx.conn)
        case = await repo.get(data.loan_id, lock=True)
        intent = await repo.intent(data.check_id)
        if case is None or intent is None:
            log.warning("confirmation for unknown check", extra={"check_id": data.check_id})
            return
        event = m.BalanceConfirmed(env.id, data.check_id, data.confirmation_id,
                                   data.confirmed_outstanding, data.ledger_watermark,
                                   data.confirmed_at, data.valid_until)
        decision = d.on_balance_confirmed(case, intent, event,
                                          self._policies.for_product(case.product), tx.now,
                                          _ids(env.id))
        await apply(tx, repo, case, decision, env.id)

    async def refused(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.BalanceRefused)
        repo = CaseRepository(tx.conn)
        case = await repo.get(data.loan_id, lock=True)
        intent = await repo.intent(data.check_id)
        if case is None or intent is None:
            log.warning("refusal for unknown check", extra={"check_id": data.check_id})
            return
        event = m.BalanceRefused(env.id, data.check_id, data.reason, data.detail)
        decision = d.on_balance_refused(case, intent, await repo.pending_intents(data.loan_id),
                                        event, self._policies.for_product(case.product), tx.now)
        await apply(tx, repo, case, decision, env.id)

    async def outcome(self, tx: Tx, env: Envelope) -> None:
        data = env.data
        assert isinstance(data, c.ContactOutcome)
        repo = CaseRepository(tx.conn)
        case = await repo.get(data.loan_id)
        if case is None:
            return
        event = m.ContactOutcomeReported(env.id, data.command_id, data.intent_id, data.channel,
                                         data.outcome, data.reason)
        decision = d.on_contact_outcome(case, event, self._policies.for_product(case.product))
        await apply(tx, repo, case, decision, env.id)


async def apply(tx: Tx, repo: CaseRepository, before: Case | None, decision: d.Decision,
                cause_id: str) -> None:
    """Persist a decision and stage the messages its effects call for."""
    subject = decision.case or before
    if subject is None:
        return
    await repo.save(decision.case, decision.intents, decision.timeline, subject, at=tx.now,
                    actor=tx.actor)
    for n, effect in enumerate(decision.effects):
        event_id = derived_id(cause_id, f"effect/{n}")
        message = _message_for(effect, subject, tx)
        tx.publish(message, event_id=event_id, subject=subject.loan_id)


def _message_for(effect: d.Effect, case: Case, tx: Tx) -> c.Message:
    match effect:
        case d.RequestBalanceCheck(intent=intent, expected_outstanding=expected):
            return c.BalanceCheckRequested(
                check_id=intent.intent_id, loan_id=case.loan_id, currency=case.currency,
                expected_outstanding=expected, requested_at=tx.now)
        case d.IssueContactCommand(intent=intent, confirmation=conf):
            assert intent.command_id is not None
            return c.ContactCommand(
                command_id=intent.command_id, intent_id=intent.intent_id, case_id=case.case_id,
                loan_id=case.loan_id, borrower_id=case.borrower_id,
                recipient=intent.recipient,
                channel=intent.channel,
                stage=intent.stage.value, template=intent.template, currency=case.currency,
                amount_due=conf.confirmed_outstanding, confirmation_id=conf.confirmation_id,
                ledger_watermark=conf.ledger_watermark, confirmed_at=conf.confirmed_at,
                confirmation_valid_until=conf.valid_until,
                borrower_time_zone=case.borrower_time_zone,
                jurisdiction=case.jurisdiction,
                issued_at=tx.now)
        case d.CancelContacts(reason=reason):
            return c.ContactCancelled(loan_id=case.loan_id, reason=reason,
                                      cancelled_at=tx.now)
        case d.AnnounceCaseOpened():
            return c.CaseOpened(case_id=case.case_id, loan_id=case.loan_id,
                                borrower_id=case.borrower_id, stage=case.stage.value,
                                policy_version=case.policy_version, opened_at=tx.now)
        case d.AnnounceStageChanged(from_stage=old, to_stage=new, cause=cause):
            return c.CaseStageChanged(case_id=case.case_id, loan_id=case.loan_id,
                                      from_stage=old.value, to_stage=new.value, cause=cause,
                                      policy_version=case.policy_version, changed_at=tx.now)
        case d.AnnounceCaseClosed(exit=exit_, cause=cause):
            return c.CaseClosed(case_id=case.case_id, loan_id=case.loan_id,
                                outcome=exit_.value, cause=cause, closed_at=tx.now)
    raise AssertionError(f"unhandled effect {effect!r}")
