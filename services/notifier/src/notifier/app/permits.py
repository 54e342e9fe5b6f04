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
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, Protocol

from notifier.app.dispatcher import attempts_lookback
from notifier.app.ports import StartPermitUnitOfWork
from notifier.domain.model import Dispatch, DispatchContext, DispatchStatus, person_key
from notifier.domain.permits import (
    ATTEMPT_RESULT,
    Granted,
    Permit,
    PermitAsk,
    PermitDecision,
    PermitResult,
    Refused,
    ResultCheck,
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


@dataclass(frozen=True)
class PermitAnswer:
    permit_id: str
    decision: PermitDecision
    asked_at: datetime
    expires_at: datetime | None
    result_by: datetime | None
    # False: nothing was stored (no case to anchor on, or it is closed).
    recorded: bool


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
            anchor = await work.permits.anchor(ask.loan_id)
            expires_at, result_by = now + config.ttl, now + config.ttl + config.result_window
            if anchor is None:
                decision = decide_permit(
                    ask, None, _NO_CONTEXT, permit_id=permit_id, now=now, policy=policy
                )
                return PermitAnswer(permit_id, decision, now, None, None, recorded=False)
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
            await work.commit()
        granted = not isinstance(decision, Refused)
        return PermitAnswer(
            permit_id,
            decision,
            now,
            expires_at if granted else None,
            result_by if granted else None,
            recorded=True,
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
                await work.commit()
                permit = replace(permit, result=result, result_at=work.now)
        return ResultAnswer(check, permit)

    async def of_loan(self, loan_id: str) -> Sequence[Permit]:
        async with self._uow() as work:
            return await work.permits.of_loan(loan_id)

    async def summary(self) -> list[tuple[str, str, str, int]]:
        async with self._uow() as work:
            return await work.permits.summary()
