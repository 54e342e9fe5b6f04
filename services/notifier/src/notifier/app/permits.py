"""Contact permits: decide one person's contact now, and take its result.

The decision runs in one transaction, like a dispatch pass deciding one command: the
context is loaded by ``DispatchRepository.contexts`` (which takes the per-person and
per-number locks first), decided by the pure engine (``notifier.domain.permits`` over
``decide``), and a grant is counted before the transaction commits. A dispatcher or another
person deciding about the same person waits for it, and then counts it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal, Protocol

from collections_kit import contract as c
from collections_kit.clock import derived_id
from collections_kit.outbox import Tx
from notifier.app.dispatcher import attempts_lookback
from notifier.app.ports import StartPermitUnitOfWork
from notifier.domain.model import Dispatch, DispatchContext, DispatchStatus, person_key
from notifier.domain.permits import (
    ATTEMPT_RESULT,
    CONFIRMATION_NEEDED,
    ConfirmationWait,
    Granted,
    Permit,
    PermitAsk,
    PermitDecision,
    PermitResult,
    Refused,
    ResultCheck,
    anchored,
    asking_for_confirmation,
    check_result,
    decide_permit,
    human_request,
)
from notifier.domain.policy import DispatchPolicy

# The rule that refuses every permit while the notifier's view of repayments lags.
RULE_REPAYMENT_GATE = "repayment_gate"


class Gate(Protocol):
    """What a permit needs of the repayment gate (app.repayment_gate.RepaymentGate)."""

    def is_open(self) -> bool: ...


@dataclass(frozen=True)
class PermitConfig:
    # How long a granted permit lets its holder start the contact.
    ttl: timedelta = timedelta(minutes=5)
    # How long after that the result may still be reported (a call takes its time).
    result_window: timedelta = timedelta(hours=1)
    # How long a ledger confirmation asked for takes, and when it is presumed lost.
    confirmation: ConfirmationWait = field(default_factory=ConfirmationWait)


@dataclass(frozen=True)
class PermitAnswer:
    permit_id: str
    decision: PermitDecision
    asked_at: datetime
    expires_at: datetime | None
    result_by: datetime | None
    # False: nothing was stored (no case to anchor on, or it is closed).
    recorded: bool
    # The ledger confirmation the decision rested on (None when nothing was stored).
    confirmation_id: str | None = None


@dataclass(frozen=True)
class ResultAnswer:
    # "unknown": no permit with this id.
    check: ResultCheck | Literal["unknown"]
    permit: Permit | None


ActorKindSource = Literal["token", "body"]
# Nothing known of the loan: no context to load.
_NO_CONTEXT = DispatchContext()


class PermitService:
    def __init__(
        self,
        *,
        uow: StartPermitUnitOfWork,
        policy: DispatchPolicy,
        config: PermitConfig,
        gate: Gate | None = None,
    ) -> None:
        self._uow = uow
        self._policy = policy
        self._config = config
        # None only where a test decides without the Kafka lane (the gate reads offsets).
        self._gate = gate

    async def ask(self, ask: PermitAsk, *, kind_from: ActorKindSource) -> PermitAnswer:
        permit_id = f"permit-{uuid.uuid4().hex}"
        policy, config = self._policy, self._config
        async with self._uow() as work:
            now = work.now
            command = await work.permits.anchor(ask.loan_id)
            expires_at, result_by = now + config.ttl, now + config.ttl + config.result_window
            if command is None:
                decision = decide_permit(
                    ask, None, _NO_CONTEXT, permit_id=permit_id, now=now, policy=policy
                )
                return PermitAnswer(permit_id, decision, now, None, None, recorded=False)
            confirmations = await work.permits.confirmations(ask.loan_id)
            # The command's confirmation, or a fresher one (a lease's, a refusal's request).
            anchor = anchored(command, confirmations)
            request = human_request(anchor, ask, permit_id)
            person = person_key(request.borrower_id, request.recipient)
            await work.permits.settle_unreported(person, now=now)
            probe = Dispatch(request, DispatchStatus.PENDING, now, attempts=0, decision_seq=0)
            contexts = await work.dispatches.contexts(
                [probe],
                repayments_since=anchor.confirmed_at - policy.recheck_lookback,
                attempts_since=now - attempts_lookback(policy),
            )
            decision = decide_permit(
                ask,
                anchor,
                contexts.for_dispatch(probe),
                permit_id=permit_id,
                now=now,
                policy=policy,
                confirmations=confirmations,
                wait=config.confirmation,
            )
            if isinstance(decision, Refused) and decision.reason == "case_closed":
                # Bad input rather than a decision: nothing is stored (the caller gets a
                # problem document).
                return PermitAnswer(permit_id, decision, now, None, None, recorded=False)
            if (
                isinstance(decision, Granted)
                and self._gate is not None
                and not self._gate.is_open()
            ):
                # As the dispatcher holds its passes: a repayment may be on its way here.
                decision = Refused("repayments_lagging", RULE_REPAYMENT_GATE, "view_lagging")
            needed = isinstance(decision, Refused) and decision.detail == CONFIRMATION_NEEDED
            if isinstance(decision, Refused) and needed:
                # Nobody has asked for a confirmation since the last one lapsed: this
                # refusal does (the workflow asks ledger-sync, as for a leased task), and
                # says when to ask again.
                await work.permits.confirmation_asked(ask.loan_id, now=now)
                decision = asking_for_confirmation(decision, now, config.confirmation)
            await work.permits.record(
                permit_id,
                ask,
                decision,
                actor_kind_from=kind_from,
                anchor=anchor,
                person=person,
                number=contexts.number_of(probe),
                policy_version=policy.version,
                now=now,
                expires_at=expires_at,
                result_by=result_by,
            )
            _note(
                work.tx,
                ask,
                permit_id,
                "granted" if isinstance(decision, Granted) else "refused",
                reason=decision.reason if isinstance(decision, Refused) else GRANTED_REASON,
                rule=decision.rule,
                retry_after=decision.retry_after if isinstance(decision, Refused) else None,
                confirmation_needed=needed,
            )
            await work.commit()
        granted = not isinstance(decision, Refused)
        return PermitAnswer(
            permit_id,
            decision,
            now,
            expires_at if granted else None,
            result_by if granted else None,
            recorded=True,
            confirmation_id=anchor.confirmation_id,
        )

    async def result(self, permit_id: str, actor_id: str, result: PermitResult) -> ResultAnswer:
        """Record the holder's report once; ``check`` says what was done or why not."""
        async with self._uow() as work:
            permit = await work.permits.get(permit_id, lock=True)
            if permit is None:
                return ResultAnswer("unknown", None)
            check = check_result(permit, actor_id, result, work.now)
            if check == "record":
                await work.permits.record_result(
                    permit_id, result, ATTEMPT_RESULT[result], now=work.now
                )
                the_ask = PermitAsk(
                    permit.loan_id,
                    permit.recipient,
                    permit.channel,
                    permit.actor_kind,
                    permit.actor_id,
                )
                _note(
                    work.tx,
                    the_ask,
                    permit_id,
                    "result",
                    reason=permit.reason,
                    rule=permit.rule,
                    result=result,
                )
                await work.commit()
                permit = replace(permit, result=result, result_at=work.now)
        return ResultAnswer(check, permit)

    async def of_loan(self, loan_id: str) -> Sequence[Permit]:
        async with self._uow() as work:
            return await work.permits.of_loan(loan_id)

    async def summary(self) -> list[tuple[str, str, str, int]]:
        async with self._uow() as work:
            return await work.permits.summary()


GRANTED_REASON = "all_checks_passed"


def _note(
    tx: Tx,
    ask: PermitAsk,
    permit_id: str,
    kind: Literal["granted", "refused", "result"],
    *,
    reason: str,
    rule: str,
    retry_after: datetime | None = None,
    result: PermitResult | None = None,
    confirmation_needed: bool = False,
) -> None:
    """The permit's step for the case timeline, through the outbox in the permit's own
    transaction (ids and codes only: the workflow consumes the contact outcomes' topic)."""
    tx.publish(
        c.ContactPermitNoted(
            kind=kind,
            permit_id=permit_id,
            loan_id=ask.loan_id,
            person=ask.recipient,
            channel=ask.channel,
            actor_kind=ask.actor_kind,
            actor_id=ask.actor_id,
            reason=reason,
            rule=rule,
            retry_after=retry_after,
            result=result,
            confirmation_needed=confirmation_needed,
            occurred_at=tx.now,
        ),
        event_id=derived_id(permit_id, kind),
        subject=ask.loan_id,
    )
