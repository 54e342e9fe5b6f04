"""Every decision is stored and announced together, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from collections_kit import contract as c
from collections_kit.clock import derived_id
from collections_kit.outbox import Tx, flush
from notifier.adapters.repository import DecisionRecord, DispatchRepository
from notifier.app.ports import SentRecords
from notifier.domain.model import DeliveryStatus, Dispatch, DispatchStatus, Outcome

STATUS_OF: dict[Outcome, DispatchStatus] = {
    "sent": DispatchStatus.SENT,
    "deferred": DispatchStatus.DEFERRED,
    "blocked": DispatchStatus.BLOCKED,
    "cancelled": DispatchStatus.CANCELLED,
    "failed": DispatchStatus.FAILED,
    "in_doubt": DispatchStatus.IN_DOUBT,
}


async def record_decision(
    tx: Tx,
    repo: DispatchRepository,
    dispatch: Dispatch,
    *,
    outcome: Outcome,
    reason: str,
    rule: str,
    policy_version: str,
    cause_id: str | None = None,
    due_at: datetime | None = None,
    error: str | None = None,
) -> None:
    """Store the decision and stage its ``ContactOutcome``.

    The event id is derived, never random: from the causing event when there is one (a
    replay of it yields the same id), else from the command and the decision's number,
    which only advances when the transaction commits.
    """
    seq = await repo.record(
        DecisionRecord(
            dispatch=dispatch,
            decision=outcome,
            reason=reason,
            rule=rule,
            policy_version=policy_version,
            at=tx.now,
            due_at=due_at,
        ),
        status=STATUS_OF[outcome],
        error=error,
    )
    event_id = (
        derived_id(cause_id, f"outcome/{dispatch.command_id}")
        if cause_id
        else derived_id(dispatch.command_id, f"decision/{seq}")
    )
    _announce(tx, dispatch, outcome, reason, rule, event_id)


async def record_cancellations(
    tx: Tx,
    repo: DispatchRepository,
    dispatches: Sequence[Dispatch],
    *,
    reason: str,
    rule: str,
    policy_version: str,
    cause_id: str,
) -> None:
    """``record_decision(outcome="cancelled", cause_id=...)`` for each of ``dispatches``
    (none of them in flight): the same rows and the same events (ids included), the
    decisions written in the statement that writes the outbox row announcing them (with
    whatever else the transaction has staged so far). Cancelling is on the path of every
    suppression; one round trip for both instead of one per decision and one for the row."""
    if not dispatches:
        return
    for dispatch in dispatches:
        _announce(
            tx,
            dispatch,
            "cancelled",
            reason,
            rule,
            derived_id(cause_id, f"outcome/{dispatch.command_id}"),
        )
    records = [
        DecisionRecord(
            dispatch=dispatch,
            decision="cancelled",
            reason=reason,
            rule=rule,
            policy_version=policy_version,
            at=tx.now,
        )
        for dispatch in dispatches
    ]
    await flush(tx, along=repo.decisions(records, status=DispatchStatus.CANCELLED))


def _announce(
    tx: Tx, dispatch: Dispatch, outcome: str, reason: str, rule: str, event_id: str
) -> None:
    request = dispatch.request
    tx.publish(
        c.ContactOutcome(
            command_id=request.command_id,
            intent_id=request.intent_id,
            loan_id=request.loan_id,
            channel=request.channel,
            outcome=outcome,
            reason=reason,
            rule=rule,
            occurred_at=tx.now,
        ),
        event_id=event_id,
        subject=request.loan_id,
    )


async def record_sent_many(
    tx: Tx,
    repo: SentRecords,
    sent: Sequence[tuple[Dispatch, str, str, DeliveryStatus, str | None]],
    *,
    policy_version: str,
) -> None:
    """``record_decision(outcome="sent")`` for many dispatches that were ``sending``, with
    the attempt settled: ``(dispatch, reason, rule, delivery status, provider ref)`` each.
    The same rows and the same events (ids included) as one by one, in three statements."""
    records = [
        (
            DecisionRecord(
                dispatch=d,
                decision="sent",
                reason=reason,
                rule=rule,
                policy_version=policy_version,
                at=tx.now,
            ),
            status,
            ref,
        )
        for d, reason, rule, status, ref in sent
    ]
    seqs = await repo.record_sent_many(records)
    for (record, _, _), seq in zip(records, seqs, strict=True):
        _announce(
            tx,
            record.dispatch,
            "sent",
            record.reason,
            record.rule,
            derived_id(record.dispatch.command_id, f"decision/{seq}"),
        )


async def announce_delivery(
    tx: Tx, dispatch: Dispatch, status: DeliveryStatus | Literal["failed"]
) -> None:
    """What the channel reported beyond "handed over": delivered, answered, unanswered, or
    (by a delivery receipt) failed after all.

    Not a decision (the decision was to send), so it is not in the audit trail's decisions;
    the attempt row keeps it for the caps, and the workflow hears it here.
    """
    if status == "sent":
        return
    request = dispatch.request
    tx.publish(
        c.ContactOutcome(
            command_id=request.command_id,
            intent_id=request.intent_id,
            loan_id=request.loan_id,
            channel=request.channel,
            outcome=status,
            reason=f"provider_{status}",
            rule=f"channel.{request.channel}",
            occurred_at=tx.now,
        ),
        event_id=derived_id(dispatch.command_id, f"delivery/{status}"),
        subject=request.loan_id,
    )
