"""Thin handlers: map the wire message to the domain, decide, save, stage effects.

Each runs inside a transaction (``Tx``): the consumer's, the timer worker's or a REST
request's. The inbox row (or timer row, or idempotency key), the state change and the
outbox rows commit together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from collections_kit import contract as c
from collections_kit.clock import derived_id
from collections_kit.consumer import Handler
from collections_kit.envelope import Envelope
from collections_kit.outbox import Tx
from workflow.adapters.journal import encode_input
from workflow.adapters.placements import PlacementBatch, PlacementRepository
from workflow.adapters.repository import BatchState, CaseRepository
from workflow.adapters.tasks import TaskRepository
from workflow.app.ports import CaseStore, TaskStep, TaskStore
from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain import placement as pl
from workflow.domain import tasks as t
from workflow.domain.model import Case, TimelineEntry
from workflow.domain.policy import PolicyBook

log = logging.getLogger(__name__)


def ids(cause_id: str) -> Callable[[str], str]:
    return lambda label: derived_id(cause_id, label)


@dataclass(frozen=True)
class Item:
    """One input for one loan, with what it names (so the batch loads it up front)."""

    loan_id: str
    event: d.Input
    cause_id: str
    check_id: str | None = None
    intent_id: str | None = None


class Workflow:
    """The one way anything changes a case: lock it, decide, save, publish.

    Inputs are decided one after another, in order, against state held in memory for the
    whole batch; the batch is read in three queries and written in one statement per
    table. A single REST command or timer is a batch of one.
    """

    def __init__(
        self,
        policies: PolicyBook,
        placements: pl.PlacementPolicy | None = None,
        queues: t.QueuePolicy | None = None,
    ) -> None:
        self._policies = policies
        # None: no agencies; nothing is placed.
        self._placements = placements
        # None: no work queues; no task is created (tasks are still withdrawn).
        self._queues = queues

    async def run(
        self,
        tx: Tx,
        loan_id: str,
        event: d.Input,
        cause_id: str,
        *,
        check_id: str | None = None,
        intent_id: str | None = None,
        cases: CaseStore | None = None,
        tasks: TaskStore | None = None,
    ) -> tuple[Case | None, d.Decision]:
        ((before, decision),) = await self.run_batch(
            tx, [Item(loan_id, event, cause_id, check_id, intent_id)], cases=cases, tasks=tasks
        )
        return before, decision

    async def run_batch(
        self,
        tx: Tx,
        items: Sequence[Item],
        *,
        cases: CaseStore | None = None,
        tasks: TaskStore | None = None,
    ) -> list[tuple[Case | None, d.Decision]]:
        """Decide ``items`` in ``tx``: through ``cases`` and ``tasks``, the repositories of
        the unit of work the caller opened, or (a consumed batch) those of the consumer's
        transaction."""
        repo = cases if cases is not None else CaseRepository(tx.conn)
        task_changes: list[t.TaskChanges] = []
        state = await repo.load_for_batch(
            [i.loan_id for i in items],
            [i.check_id for i in items if i.check_id],
            [i.intent_id for i in items if i.intent_id],
        )
        placing = (
            await PlacementRepository(tx.conn).load_for_batch([i.loan_id for i in items])
            if self._placements is not None
            else None
        )
        if placing is not None:
            await PlacementRepository(tx.conn).load_reversible(
                placing,
                [
                    (i.loan_id, i.event.repayment_id)
                    for i in items
                    if isinstance(i.event, m.RepaymentReversed)
                ],
            )
        results = []
        for item in items:
            before = state.cases.get(item.loan_id)
            event = item.event if before else _with_money_seen(state, item)
            known = state.intents.get(before.case_id, {}) if before else {}
            product = before.product if before else getattr(event, "product", "")
            decision = d.decide(
                before,
                list(known.values()),
                event,
                self._policies.for_case(product, item.loan_id, before.variant if before else None),
                tx.now,
                ids(item.cause_id),
            )
            results.append((before, decision))
            if decision.rejected is not None:
                continue
            if before is None and decision.case is not None:
                state.forget(item.loan_id)
            subject = decision.case or before
            if subject is None:
                continue
            # Journalled first: the entries recorded next go into the input's row.
            input_type, payload = encode_input(event)
            state.journal(
                subject, input_type, payload, at=tx.now, actor=tx.actor, cause_id=item.cause_id
            )
            state.record(
                before,
                decision.case,
                decision.intents,
                decision.timeline,
                decision.timers,
                at=tx.now,
                actor=tx.actor,
                cause_id=item.cause_id,
            )
            changes = t.changes_for(before, decision.case, decision.timeline)
            if not changes.empty:
                task_changes.append(replace(changes, cause=_cause_of(decision, item)))
            for n, effect in enumerate(decision.effects):
                tx.publish(
                    _message_for(effect, subject, tx),
                    event_id=derived_id(item.cause_id, f"effect/{n}"),
                    subject=subject.loan_id,
                )
            if placing is not None:
                self._place(tx, item, event, decision.case or subject, state, placing)
        await repo.write_batch(state, tx.now)
        if task_changes:
            await self.apply_task_changes(
                tx, tasks if tasks is not None else TaskRepository(tx.conn), task_changes
            )
        if placing is not None:
            await PlacementRepository(tx.conn).write_batch(placing, tx.now)
        return results

    async def apply_task_changes(
        self, tx: Tx, store: TaskStore, batch: Sequence[t.TaskChanges]
    ) -> list[t.Task]:
        """Withdraw and create the tasks ``batch`` asks for, in its order, in ``tx`` (the
        transaction that applied the decisions): a repaid, held or closed case's tasks end
        with it, a leased one included. Returns the tasks created."""
        withdrawals: list[tuple[str, t.Withdrawal]] = []
        cause_of: dict[str, str] = {}
        created: dict[tuple[str, t.TaskKind], tuple[t.Task, str]] = {}
        for changes in batch:
            case = changes.case
            assert case is not None
            for w in changes.withdraw:
                withdrawals.append((case.case_id, w))
                cause_of[case.case_id] = changes.cause
                # A task made earlier in this batch and ended by it never reaches the table.
                for key in [k for k in created if k[0] == case.case_id]:
                    if w.kinds is None or key[1] in w.kinds:
                        del created[key]
            if self._queues is not None:
                for new in changes.create:
                    task = t.new_task(new, case, self._queues, tx.now, ids(changes.cause))
                    created[(case.case_id, new.kind)] = (task, changes.cause)
        ended = await store.withdraw(withdrawals, tx.now)
        added = await store.add([task for task, _ in created.values()])
        causes = {task.task_id: cause for task, cause in created.values()}
        steps = [
            TaskStep(
                task,
                "task_withdrawn",
                {"reason": task.outcome, "collector": task.collector},
                cause_of[task.case_id],
            )
            for task in ended
        ] + [
            TaskStep(
                task,
                "task_created",
                {"priority": task.priority, "reason": task.reason},
                causes[task.task_id],
            )
            for task in added
        ]
        version = self._queues.version if self._queues is not None else "queues/none"
        await store.record(steps, at=tx.now, actor=tx.actor, policy_version=version)
        return added

    def _place(
        self,
        tx: Tx,
        item: Item,
        event: d.Input,
        case: Case,
        state: BatchState,
        placing: PlacementBatch,
    ) -> None:
        """The agencies' side of the decided input, in its transaction: placed, recalled,
        resumed, commission; on the case timeline and through the same outbox."""
        assert self._placements is not None
        outcome = pl.place(
            case,
            event,
            placing.newest.get(case.loan_id),
            self._placements,
            tx.now,
            ids(item.cause_id),
            reversed_accrual=placing.take_reversible(case.loan_id, event.repayment_id)
            if isinstance(event, m.RepaymentReversed)
            else None,
        )
        if outcome == pl.NOTHING:
            return
        placing.record(outcome)
        entries = tuple(
            TimelineEntry(
                kind=kind,
                cause=d.cause_of(event),
                stage_before=case.stage,
                stage_after=case.stage,
                status_before=case.status,
                status_after=case.status,
                policy_version=self._placements.version,
                detail=detail,
            )
            for kind, detail in outcome.timeline
        )
        state.record(
            case,
            None,
            (),
            entries,
            outcome.timers,
            at=tx.now,
            actor=tx.actor,
            cause_id=item.cause_id,
        )
        for n, notice in enumerate(outcome.notices):
            tx.publish(
                _notice_message(notice, case, tx),
                event_id=derived_id(item.cause_id, f"placement/{n}"),
                subject=case.loan_id,
            )


def _cause_of(decision: d.Decision, item: Item) -> str:
    """The cause the decision's timeline entries name (the item's id if it made none)."""
    return next((e.cause for e in decision.timeline), item.cause_id)


def _with_money_seen(state: BatchState, item: Item) -> d.Input:
    """For a loan without a case: remember its repayments and reversals, and hand what was
    remembered to the overdue report that opens its case (journalled with it)."""
    event = item.event
    match event:
        case m.RepaymentReceived() | m.RepaymentReversed():
            kind = "repayment" if isinstance(event, m.RepaymentReceived) else "reversal"
            state.remember(
                item.loan_id,
                m.MoneySeen(
                    event.event_id,
                    kind,
                    event.repayment_id,
                    event.amount,
                    event.outstanding_after,
                    event.at,
                ),
            )
        case m.OverdueReported() | m.RiskSignalReceived() if item.loan_id in state.money:
            return replace(event, money_seen=state.money[item.loan_id])
    return event


class WorkflowHandlers:
    """Maps each wire message to a domain input; a polled batch is decided together."""

    def __init__(self, workflow: Workflow) -> None:
        self._workflow = workflow

    def routes(self) -> dict[type[c.Message], Handler]:
        async def one(tx: Tx, env: Envelope) -> None:
            await self.batch(tx, [env])

        return dict.fromkeys(
            (
                c.LoanOverdue,
                c.RiskSignal,
                c.RepaymentReceived,
                c.RepaymentReversed,
                c.BalanceConfirmed,
                c.BalanceRefused,
                c.BalanceCorrected,
                c.ContactOutcome,
                c.ContactPermitNoted,
            ),
            one,
        )

    async def batch(self, tx: Tx, envelopes: Sequence[Envelope]) -> None:
        await self._workflow.run_batch(tx, [item_for(env) for env in envelopes])


def item_for(env: Envelope) -> Item:
    data = env.data
    match data:
        case c.LoanOverdue():
            return Item(
                data.loan_id,
                m.OverdueReported(
                    event_id=env.id,
                    loan_id=data.loan_id,
                    borrower_id=data.borrower_id,
                    product=data.product,
                    currency=data.currency,
                    amount_overdue=data.amount_overdue,
                    outstanding=data.outstanding_balance,
                    days_past_due=data.days_past_due,
                    as_of=data.as_of,
                    borrower_time_zone=data.borrower_time_zone,
                    jurisdiction=data.jurisdiction,
                ),
                env.id,
            )
        case c.RiskSignal():
            return Item(
                data.loan_id,
                m.RiskSignalReceived(
                    event_id=env.id,
                    signal_id=data.signal_id,
                    loan_id=data.loan_id,
                    borrower_id=data.borrower_id,
                    product=data.product,
                    kind=data.kind,
                    score=data.score,
                    currency=data.currency,
                    outstanding=data.outstanding_balance,
                    observed_at=data.observed_at,
                    valid_until=data.valid_until,
                    borrower_time_zone=data.borrower_time_zone,
                    jurisdiction=data.jurisdiction,
                ),
                env.id,
            )
        case c.RepaymentReceived():
            # A repayment on a loan we never chased concerns no case: the decision says so.
            return Item(
                data.loan_id,
                m.RepaymentReceived(
                    env.id,
                    data.repayment_id,
                    data.amount,
                    data.outstanding_balance_after,
                    data.received_at,
                ),
                env.id,
            )
        case c.RepaymentReversed():
            return Item(
                data.loan_id,
                m.RepaymentReversed(
                    env.id,
                    data.repayment_id,
                    data.amount,
                    data.outstanding_balance_after,
                    data.reversed_at,
                ),
                env.id,
            )
        case c.BalanceConfirmed():
            return Item(
                data.loan_id,
                m.BalanceConfirmed(
                    env.id,
                    data.check_id,
                    data.confirmation_id,
                    data.confirmed_outstanding,
                    data.ledger_watermark,
                    data.confirmed_at,
                    data.valid_until,
                ),
                env.id,
                check_id=data.check_id,
            )
        case c.BalanceRefused():
            return Item(
                data.loan_id,
                m.BalanceRefused(env.id, data.check_id, data.reason, data.detail),
                env.id,
                check_id=data.check_id,
            )
        case c.BalanceCorrected():
            return Item(
                data.loan_id, m.BalanceCorrected(env.id, data.kind, data.ledger_outstanding), env.id
            )
        case c.ContactOutcome():
            return Item(
                data.loan_id,
                m.ContactOutcomeReported(
                    env.id,
                    data.command_id,
                    data.intent_id,
                    data.channel,
                    data.outcome,
                    data.reason,
                    data.occurred_at,
                ),
                env.id,
                intent_id=data.intent_id,
            )
        case c.ContactPermitNoted():
            return Item(
                data.loan_id,
                m.PermitNoted(
                    env.id,
                    data.kind,
                    data.permit_id,
                    data.person,
                    data.channel,
                    data.actor_kind,
                    data.actor_id,
                    data.reason,
                    data.rule,
                    data.retry_after,
                    data.result,
                    data.confirmation_needed,
                ),
                env.id,
            )
    raise AssertionError(f"the workflow does not consume {type(data).__name__}")


def _notice_message(notice: pl.Notice, case: Case, tx: Tx) -> c.PlacementNotice:
    p = notice.placement
    return c.PlacementNotice(
        kind=notice.kind,
        placement_id=p.placement_id,
        case_id=p.case_id,
        loan_id=p.loan_id,
        borrower_id=case.borrower_id,
        agency=p.agency,
        tier=p.tier,
        reason=notice.reason.value if notice.reason else None,
        stage=case.stage.value,
        days_past_due=case.days_past_due,
        currency=case.currency,
        # An overpaid loan owes nothing: the agency is told zero, not a negative debt.
        outstanding=max(case.outstanding, Decimal(0)),
        placed_until=p.until,
        amount=notice.amount,
        commission=notice.commission,
        occurred_at=tx.now,
    )


def balance_check(check_id: str, case: Case, expected: Decimal, tx: Tx) -> c.BalanceCheckRequested:
    """Ask ledger-sync to confirm ``case``'s balance: before a contact command, and for the
    people who contact the borrower (a leased task: ``d.permit_check_id``)."""
    return c.BalanceCheckRequested(
        check_id=check_id,
        loan_id=case.loan_id,
        currency=case.currency,
        expected_outstanding=expected,
        requested_at=tx.now,
    )


def _message_for(effect: d.Effect, case: Case, tx: Tx) -> c.Message:
    match effect:
        case d.RequestBalanceCheck(intent=intent, expected_outstanding=expected):
            return balance_check(intent.check_id, case, expected, tx)
        case d.RequestPermitCheck(check_id=check_id, expected_outstanding=expected):
            return balance_check(check_id, case, expected, tx)
        case d.IssueContactCommand(intent=intent, confirmation=conf):
            assert intent.command_id is not None
            return c.ContactCommand(
                command_id=intent.command_id,
                intent_id=intent.intent_id,
                case_id=case.case_id,
                loan_id=case.loan_id,
                borrower_id=case.borrower_id,
                recipient=intent.recipient,
                channel=intent.channel,
                stage=intent.stage.value,
                template=intent.template,
                currency=case.currency,
                amount_due=conf.confirmed_outstanding,
                confirmation_id=conf.confirmation_id,
                ledger_watermark=conf.ledger_watermark,
                confirmed_at=conf.confirmed_at,
                confirmation_valid_until=conf.valid_until,
                borrower_time_zone=case.borrower_time_zone,
                jurisdiction=case.jurisdiction,
                issued_at=tx.now,
            )
        case d.CancelContacts(reason=reason):
            return c.ContactCancelled(loan_id=case.loan_id, reason=reason, cancelled_at=tx.now)
        case d.AnnounceCaseOpened():
            return c.CaseOpened(
                case_id=case.case_id,
                loan_id=case.loan_id,
                borrower_id=case.borrower_id,
                stage=case.stage.value,
                policy_version=case.policy_version,
                opened_at=tx.now,
            )
        case d.AnnounceStageChanged(from_stage=old, to_stage=new, cause=cause):
            return c.CaseStageChanged(
                case_id=case.case_id,
                loan_id=case.loan_id,
                from_stage=old.value,
                to_stage=new.value,
                cause=cause,
                policy_version=case.policy_version,
                changed_at=tx.now,
            )
        case d.AnnounceCaseClosed(exit=exit_, cause=cause):
            return c.CaseClosed(
                case_id=case.case_id,
                loan_id=case.loan_id,
                outcome=exit_.value,
                cause=cause,
                closed_at=tx.now,
            )
        case d.AnnounceHeld(hold=hold):
            return c.CaseHeld(
                case_id=case.case_id,
                loan_id=case.loan_id,
                hold_id=hold.hold_id,
                kind=hold.kind.value,
                reason=hold.reason,
                until=hold.until,
                actor=hold.actor,
                held_at=tx.now,
            )
        case d.AnnounceResumed(hold=hold, reason=reason, actor=actor):
            return c.CaseResumed(
                case_id=case.case_id,
                loan_id=case.loan_id,
                hold_id=hold.hold_id,
                reason=reason,
                actor=actor,
                resumed_at=tx.now,
            )
    raise AssertionError(f"unhandled effect {effect!r}")
