"""The dispatcher: takes due commands, decides, and hands the sendable ones to a channel.

One pass:
1. In one transaction: claim due rows (row locks, skipping locked rows, so two replicas
   never take the same row), lock the people and phone numbers they would reach (advisory locks,
   so two replicas never both squeeze under one frequency cap), load their context, run the
   pure ``decide`` for each. Cancel, block and defer are stored and announced right there;
   a send is marked ``sending`` with a lease and counted as a pending attempt. Commit, so
   the mark and the count are durable before anything leaves the building.
2. Outside any transaction: call the channel, bounded by a timeout shorter than the lease
   (otherwise another replica could take the row over while the call still runs).
3. In a new transaction per row: ``sent`` (with the attempt's result: delivered, answered,
   unanswered), or ``failed`` (permanent error or attempts used up), or back to ``pending``
   after a backoff when the channel surely did not take it; each final state stored and
   announced. A call cut off mid-way (timeout, dropped connection) leaves the row
   ``sending``, as a crash would. A validation notice sent wakes
   the contacts that waited for it.

A crash between 1 and 3 leaves the row ``sending``, and nobody knows whether the person got
the message. It is never simply sent again when its lease runs out (an SMTP relay or a
print run does not dedupe, and a provider keeps idempotency keys for a while only; a second
contact counts against the person's caps). The lease only brings the row to
``_resolve_unsettled``, which asks the channel by the idempotency key (the command id)
where it can (HTTP providers, the recorder): found is recorded as sent, with what the
provider knows of the delivery; not found reached nobody and is decided afresh. A channel
that cannot be asked (SMTP, letters) leaves the attempt *in doubt*: it keeps counting
against every cap, is recorded, counted and announced as ``in_doubt``, and is sent again
only by a rule (the policy's per-channel ``in_doubt`` rule, default never), never by a
timer; a delivery receipt that proves the hand-over settles it as sent. See
notifier.domain.in_doubt. The fault hook ``after_channel_handover`` kills the process
exactly there, for the tests and the chaos run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import Counter as PromCounter

from collections_kit.clock import Clock
from collections_kit.faults import crash_point
from collections_kit.outbox import Tx
from collections_kit.worker import PollingWorker, RunsOnAPollingWorker
from notifier.adapters.repository import DispatchRepository
from notifier.app.audit import announce_delivery, record_decision, record_sent_many
from notifier.app.ports import (
    BatchChannel,
    Channel,
    Delivery,
    LookupChannel,
    OutgoingMessage,
    SendError,
    StartDispatchUnitOfWork,
)
from notifier.app.repayment_gate import RepaymentGate
from notifier.domain import templates
from notifier.domain.decide import Defer, Send, decide, validation_dispute_by
from notifier.domain.in_doubt import (
    InDoubt,
    LookAgain,
    LookupAnswer,
    LookupFailed,
    SendAgain,
    Settle,
    resolve,
)
from notifier.domain.model import (
    Attempt,
    ChannelName,
    ContactDetails,
    Dispatch,
    DispatchStatus,
    person_key,
)
from notifier.domain.policy import DispatchPolicy
from notifier.domain.window import load_zone

log = logging.getLogger(__name__)

DECISIONS = PromCounter(
    "notifier_contact_decisions_total",
    "Decisions the dispatcher took on contact commands",
    ["decision", "reason"],
)

# Decisions made between two yields to the event loop in a dispatch pass.
_YIELD_EVERY = 50


@dataclass(frozen=True)
class DispatcherConfig:
    opt_out_url: str
    # Who the texts say is writing (the validation notice must name the collector).
    collector_name: str = "The lender"
    batch: int = 100
    concurrency: int = 10
    sending_lease: timedelta = timedelta(seconds=120)
    max_attempts: int = 5
    retry_backoff: timedelta = timedelta(seconds=30)
    safety_poll_s: float = 1.0

    @property
    def send_timeout_s(self) -> float:
        # Half the lease: the call is over, one way or the other, long before another
        # replica may consider the row abandoned.
        return self.sending_lease.total_seconds() / 2


@dataclass(frozen=True)
class _Planned:
    dispatch: Dispatch
    attempt: int
    decision: Send
    message: OutgoingMessage
    # For a validation notice: the end of the dispute period it states.
    dispute_by: datetime | None = None


@dataclass(frozen=True)
class _Sent:
    """What the channel made of a planned send (``error`` None: handed over)."""

    planned: _Planned
    error: SendError | None
    delivery: Delivery | None


def attempts_lookback(policy: DispatchPolicy) -> timedelta:
    """How far back attempts can matter to any cap or quiet period (plus a day's margin
    for a local calendar day that started before ``now - 24h``)."""
    days = [1]
    for rules in policy.jurisdictions.values():
        days += [cap.days for cap in rules.caps] + [q.days for q in rules.quiet_periods]
    return timedelta(days=max(days) + 1)


class Dispatcher(RunsOnAPollingWorker):
    def __init__(
        self,
        *,
        uow: StartDispatchUnitOfWork,
        policy: DispatchPolicy,
        channels: Mapping[ChannelName, Channel],
        clock: Clock,
        config: DispatcherConfig,
        gate: RepaymentGate | None = None,
    ) -> None:
        self._uow = uow
        # None only where a test drives passes itself (``dispatch_once``).
        self._gate = gate
        self._policy = policy
        self._channels = channels
        self._clock = clock
        self._config = config
        # A full batch claimed means more may be due right now; otherwise idle until the
        # earliest due row, at most the safety poll. Error text may quote addresses.
        self._worker = PollingWorker(
            "dispatcher pass",
            self._dispatch_round,
            interval_s=config.safety_poll_s,
            idle_for=self._next_due_in,
            quote_errors=False,
        )

    async def _dispatch_round(self) -> bool:
        if self._gate is not None and not self._gate.is_open():
            # Held, not failed: a pass now could contact a borrower whose repayment
            # is not applied yet. Due rows stay pending (see app.repayment_gate). The
            # gate is asked again at once when it opens, or after the safety poll.
            await self._gate.opened(self._worker.stopping, within=self._config.safety_poll_s)
            return True
        return await self.dispatch_once() >= self._config.batch

    async def _next_due_in(self) -> float | None:
        """Seconds until the earliest due row (None: nothing waits)."""
        async with self._uow() as uow:
            due = await uow.dispatches.next_due()
        return None if due is None else (due - self._clock.now()).total_seconds()

    async def dispatch_once(self) -> int:
        """One pass; returns how many rows were claimed."""
        planned, unsettled, claimed = await self._decide_due()
        if unsettled:
            await self._resolve_unsettled(unsettled)
        if planned:
            sent = await self._deliver_all(planned)
            if any(one.error is None for one in sent):
                # Handed over, not yet recorded: the window a crash leaves in doubt.
                crash_point("after_channel_handover")
            await self._finish_all(sent)
        return claimed

    async def _resolve_unsettled(self, unsettled: Sequence[Dispatch]) -> None:
        """Rows whose lease ran out mid-send: ask each channel that can be asked whether it
        has the message, then record what ``resolve`` makes of the answer (their leases
        were extended for this in the claiming transaction)."""
        answers = await asyncio.gather(*(self._look_up(d) for d in unsettled))
        outcomes: list[tuple[str, str]] = []
        woken = False
        async with self._uow() as uow:
            tx, repo, now = uow.tx, uow.dispatches, uow.now
            owned = await repo.lock_sending_many([(d.command_id, d.attempts) for d in unsettled])
            for dispatch, answer in zip(unsettled, answers, strict=True):
                current = owned.get(dispatch.command_id)
                if current is None:
                    continue  # settled meanwhile (a receipt, another replica)
                request = current.request
                resolution = resolve(
                    request.channel,
                    answer,
                    self._policy.in_doubt_rule(request.channel),
                    look_again_at=now + self._config.retry_backoff,
                )
                ids = {
                    "command_id": current.command_id,
                    "loan_id": request.loan_id,
                    "channel": request.channel,
                    "resolution": type(resolution).__name__,
                    "reason": resolution.reason,
                }
                match resolution:
                    case Settle():
                        woken = await self._settle_found(tx, repo, current, resolution) or woken
                        outcomes.append(("sent", resolution.reason))
                    case SendAgain():
                        await repo.settle_attempt(
                            current.command_id,
                            now=now,
                            result="failed" if resolution.reached_nobody else "unknown",
                        )
                        if resolution.reached_nobody:
                            await repo.validation_notice_failed(current)
                        await repo.retry_later(
                            current, now=now, due_at=now, error=resolution.reason
                        )
                    case LookAgain():
                        await repo.extend_lease(
                            [current.command_id], now=now, until=resolution.until
                        )
                    case InDoubt():
                        # A validation notice in doubt is not proven sent: the next letter
                        # or e-mail carries it (other contacts would wait for it forever).
                        await repo.validation_notice_failed(current)
                        await record_decision(
                            tx,
                            repo,
                            current,
                            outcome="in_doubt",
                            reason=resolution.reason,
                            rule=resolution.rule,
                            policy_version=self._policy.version,
                        )
                        outcomes.append(("in_doubt", resolution.reason))
                log.warning(
                    "sending lease expired; outcome of the last attempt resolved", extra=ids
                )
            await uow.commit()
        for outcome in outcomes:
            DECISIONS.labels(*outcome).inc()
        if woken:
            self.wake()

    async def _look_up(self, dispatch: Dispatch) -> LookupAnswer:
        channel = self._channels[dispatch.request.channel]
        if not isinstance(channel, LookupChannel):
            return None
        try:
            async with asyncio.timeout(self._config.send_timeout_s):
                return await channel.lookup(dispatch.command_id, dispatch.request.channel)
        except SendError as exc:
            return LookupFailed(exc.code)
        except TimeoutError:
            return LookupFailed("channel_timeout")
        except Exception as exc:
            return LookupFailed(f"channel_error:{type(exc).__name__}")

    async def _settle_found(
        self, tx: Tx, repo: DispatchRepository, current: Dispatch, found: Settle
    ) -> bool:
        """The provider has it: recorded as sent, as if the first pass had finished. A
        validation notice it carried is out; returns whether waiting contacts woke."""
        await record_sent_many(
            tx,
            repo,
            [(current, found.reason, found.rule, found.status, found.provider_ref)],
            policy_version=self._policy.version,
        )
        await announce_delivery(tx, current, found.status)
        request = current.request
        rules = self._policy.for_jurisdiction(request.jurisdiction)
        if (
            rules is None
            or rules.validation_notice is None
            or not await repo.notice_in_flight(current.command_id)
        ):
            return False
        return bool(
            await repo.validation_notice_sent(
                current,
                now=tx.now,
                dispute_by=validation_dispute_by(tx.now, request.borrower_time_zone, rules),
                wake_rule=rules.rule(rules.validation_notice.name),
            )
        )

    async def _deliver_all(self, planned: Sequence[_Planned]) -> list[_Sent]:
        """Each channel's share of the pass: in one call where the channel takes many,
        otherwise message by message, at most ``concurrency`` calls at a time."""
        gate = asyncio.Semaphore(self._config.concurrency)
        by_channel: dict[ChannelName, list[_Planned]] = defaultdict(list)
        for p in planned:
            by_channel[p.message.channel].append(p)

        async def deliver(p: _Planned) -> list[_Sent]:
            async with gate:
                return [await self._deliver(p)]

        calls = []
        for name, share in by_channel.items():
            channel = self._channels[name]
            if isinstance(channel, BatchChannel):
                calls.append(self._deliver_many(channel, share))
            else:
                calls += [deliver(p) for p in share]
        return [one for sent in await asyncio.gather(*calls) for one in sent]

    async def _deliver_many(self, channel: BatchChannel, share: Sequence[_Planned]) -> list[_Sent]:
        try:
            async with asyncio.timeout(self._config.send_timeout_s):
                outcomes = await channel.send_many([p.message for p in share])
        except TimeoutError:
            outcomes = [SendError("channel_timeout", permanent=False, outcome_unknown=True)] * len(
                share
            )
        except Exception as exc:
            outcomes = [
                SendError(
                    f"channel_error:{type(exc).__name__}", permanent=False, outcome_unknown=True
                )
            ] * len(share)
        if len(outcomes) != len(share):  # a broken adapter: what it sent is not known
            outcomes = [
                SendError("channel_error:outcome_count", permanent=False, outcome_unknown=True)
            ] * len(share)
        return [
            _Sent(p, o, None) if isinstance(o, SendError) else _Sent(p, None, o)
            for p, o in zip(share, outcomes, strict=True)
        ]

    async def _decide_due(self) -> tuple[list[_Planned], list[Dispatch], int]:
        """Claim due rows and decide them; returns the sends planned, the rows whose
        outcome is unknown (a lease ran out mid-send: ``_resolve_unsettled``) and how many
        rows were claimed."""
        config, policy = self._config, self._policy
        outcomes: Counter[tuple[str, str]] = Counter()
        async with self._uow() as uow:
            tx, repo, now = uow.tx, uow.dispatches, uow.now
            claimed = await repo.claim_due(now, config.batch)
            # Never decided (and so never sent) again from here: see the module docstring.
            unsettled = [d for d in claimed if d.status is DispatchStatus.SENDING]
            await repo.extend_lease(
                [d.command_id for d in unsettled], now=now, until=now + config.sending_lease
            )
            batch = [d for d in claimed if d.status is not DispatchStatus.SENDING]
            if not batch:
                await uow.commit()  # the leases extended
                return [], unsettled, len(claimed)
            since = min(d.request.confirmed_at for d in batch) - policy.recheck_lookback
            contexts = await repo.contexts(
                batch, repayments_since=since, attempts_since=now - attempts_lookback(policy)
            )
            planned: list[_Planned] = []
            marks: list[tuple[Dispatch, str | None]] = []
            lease_until = now + config.sending_lease
            for n, dispatch in enumerate(batch):
                if n and n % _YIELD_EVERY == 0:
                    # Deciding is CPU only: let the consumer loop's transactions (a
                    # repayment's cancellations among them) move between chunks of a pass.
                    await asyncio.sleep(0)
                ids = {"command_id": dispatch.command_id, "loan_id": dispatch.request.loan_id}
                context = contexts.for_dispatch(dispatch)
                decision = decide(dispatch.request, context, now, policy)
                if isinstance(decision, Send) and dispatch.attempts >= config.max_attempts:
                    # Every attempt counts, those that failed and those resolved as never
                    # received: a channel that fails every time must end somewhere.
                    await record_decision(
                        tx,
                        repo,
                        dispatch,
                        outcome="failed",
                        reason="attempts_exhausted",
                        rule=f"channel.{dispatch.request.channel}",
                        policy_version=policy.version,
                    )
                    outcomes["failed", "attempts_exhausted"] += 1
                    continue
                if isinstance(decision, Send):
                    assert context.details is not None  # decide sends only with an address
                    number = contexts.number_of(dispatch)
                    if decision.validation_notice:
                        attempt = await repo.mark_sending(
                            dispatch,
                            now=now,
                            lease_until=lease_until,
                            number=number,
                            validation_notice=True,
                        )
                    else:
                        # Written with the others after the loop, in this transaction: what
                        # the loop reads of this pass's sends is in ``contexts``.
                        marks.append((dispatch, number))
                        attempt = dispatch.attempts + 1
                    # The next command in this batch for the same person sees this one.
                    request = dispatch.request
                    contexts.note_attempt(
                        Attempt(
                            command_id=request.command_id,
                            loan_id=request.loan_id,
                            person=person_key(request.borrower_id, request.recipient),
                            channel=request.channel,
                            at=now,
                            result="pending",
                            number=number,
                            settles_by=lease_until,
                        )
                    )
                    if decision.validation_notice:
                        contexts.note_validation_in_flight(dispatch)
                    planned.append(self._plan(dispatch, attempt, decision, context.details, now))
                    continue
                await record_decision(
                    tx,
                    repo,
                    dispatch,
                    outcome=decision.outcome,
                    reason=decision.reason,
                    rule=decision.rule,
                    policy_version=policy.version,
                    due_at=decision.until if isinstance(decision, Defer) else None,
                )
                outcomes[decision.outcome, decision.reason] += 1
                log.info(
                    "contact %s",
                    decision.outcome,
                    extra={**ids, "reason": decision.reason, "rule": decision.rule},
                )
            await repo.mark_sending_many(marks, now=now, lease_until=lease_until)
            await uow.commit()
        for (outcome, reason), n in outcomes.items():
            DECISIONS.labels(outcome, reason).inc(n)
        return planned, unsettled, len(claimed)

    def _plan(
        self,
        dispatch: Dispatch,
        attempt: int,
        decision: Send,
        details: ContactDetails,
        now: datetime,
    ) -> _Planned:
        request = dispatch.request
        zone = load_zone(request.borrower_time_zone)
        assert zone is not None  # decide sends only with a known zone
        local_now = now.astimezone(zone)
        dispute_by = None
        if decision.validation_notice:
            rules = self._policy.for_jurisdiction(request.jurisdiction)
            assert rules is not None
            assert rules.validation_notice is not None
            dispute_by = local_now + timedelta(days=rules.validation_notice.dispute_days)
        party = details.party(request.recipient)
        address = details.address_for(request.recipient, request.channel)
        assert party is not None
        assert address is not None
        template = decision.template or request.template
        assert template is not None  # a workflow command always names its text
        text = templates.render(
            template,
            details.language,
            channel=request.channel,
            loan_id=request.loan_id,
            amount=request.amount_due,
            currency=request.currency,
            opt_out_url=self._config.opt_out_url,
            name=party.name,
            dispute_by=dispute_by.date() if dispute_by else None,
            collector=self._config.collector_name,
        )
        message = OutgoingMessage(
            command_id=request.command_id,
            loan_id=request.loan_id,
            channel=request.channel,
            recipient=request.recipient,
            language=details.language,
            template=template,
            address=address,
            subject=text.subject,
            body=text.body,
            name=party.name,
            dated=local_now.date(),
        )
        return _Planned(dispatch, attempt, decision, message, dispute_by)

    async def _deliver(self, planned: _Planned) -> _Sent:
        channel = planned.message.channel
        error: SendError | None = None
        delivery = Delivery()
        try:
            async with asyncio.timeout(self._config.send_timeout_s):
                delivery = await self._channels[channel].send(planned.message)
        except SendError as exc:
            error = exc
        except TimeoutError:
            # Cut mid-call: the channel may have the message.
            error = SendError("channel_timeout", permanent=False, outcome_unknown=True)
        except Exception as exc:
            # Unknown failure, unknown outcome: its text is not ours to log, its kind is.
            error = SendError(
                f"channel_error:{type(exc).__name__}", permanent=False, outcome_unknown=True
            )
        return _Sent(planned, error, delivery)

    async def _finish_all(self, sent: Sequence[_Sent]) -> None:
        """Record a pass's sends in one transaction: one commit (one WAL flush) for the
        whole pass instead of one per contact, which is what bounded the notifier's rate.

        Until that commit the rows stay ``sending``: a crash before it brings them back
        when their lease runs out, to be resolved, not sent again (``_resolve_unsettled``). If the
        batch fails for a reason other than the database, each row is recorded on its own,
        so one bad row cannot hold back the others."""
        try:
            await self._finish_batch(sent)
            return
        except Exception as exc:
            if len(sent) == 1:
                self._finish_failed(sent[0], exc)
                return
            log.warning(
                "recording a pass's sends together failed; one by one",
                extra={"error": type(exc).__name__, "rows": len(sent)},
            )
        for one in sent:
            try:
                await self._finish_batch([one])
            except Exception as exc:
                self._finish_failed(one, exc)

    @staticmethod
    def _finish_failed(sent: _Sent, exc: Exception) -> None:
        # The row stays ``sending``; its lease brings it back.
        log.error(
            "finishing a send failed",
            extra={"command_id": sent.planned.dispatch.command_id, "error": type(exc).__name__},
        )

    async def _finish_batch(self, sent: Sequence[_Sent]) -> None:
        outcomes: list[tuple[str, str]] = []
        woken = False
        async with self._uow() as uow:
            tx, repo, now = uow.tx, uow.dispatches, uow.now
            owned = await repo.lock_sending_many(
                [(one.planned.dispatch.command_id, one.planned.attempt) for one in sent]
            )
            # Sends handed over are recorded for all rows at once; failures one by one.
            handed: list[tuple[_Sent, Dispatch, Delivery]] = []
            for one in sent:
                planned = one.planned
                current = owned.get(planned.dispatch.command_id)
                if current is None:
                    log.warning(
                        "lease lost before the send finished; the new owner decides",
                        extra={
                            "command_id": planned.dispatch.command_id,
                            "loan_id": planned.dispatch.request.loan_id,
                            "attempt": planned.attempt,
                        },
                    )
                    continue
                if one.error is None:
                    handed.append((one, current, one.delivery or Delivery()))
                    continue
                outcome = await self._failed(tx, repo, one, one.error, current)
                if outcome is not None:
                    outcomes.append(outcome)
            await record_sent_many(
                tx,
                repo,
                [
                    (
                        current,
                        one.planned.decision.reason,
                        one.planned.decision.rule,
                        delivery.status,
                        delivery.provider_ref,
                    )
                    for one, current, delivery in handed
                ],
                policy_version=self._policy.version,
            )
            for one, current, delivery in handed:
                planned = one.planned
                await announce_delivery(tx, current, delivery.status)
                if planned.decision.validation_notice:
                    woken = (
                        bool(
                            await repo.validation_notice_sent(
                                current,
                                now=now,
                                dispute_by=planned.dispute_by,
                                wake_rule=planned.decision.rule,
                            )
                        )
                        or woken
                    )
                outcomes.append(("sent", planned.decision.reason))
                log.info(
                    "contact sent",
                    extra={
                        "command_id": current.command_id,
                        "loan_id": current.request.loan_id,
                        "channel": current.request.channel,
                        "attempt": planned.attempt,
                        "delivery": delivery.status,
                    },
                )
            await uow.commit()
        for outcome in outcomes:
            DECISIONS.labels(*outcome).inc()
        if woken:
            self.wake()

    async def _failed(
        self, tx: Tx, repo: DispatchRepository, sent: _Sent, error: SendError, current: Dispatch
    ) -> tuple[str, str] | None:
        """A send the channel did not take, its row locked and still owned by this attempt,
        in the pass's transaction: failed for good (the decision counted), or retried later."""
        config, policy, now = self._config, self._policy, tx.now
        planned = sent.planned
        ids = {
            "command_id": planned.dispatch.command_id,
            "loan_id": planned.dispatch.request.loan_id,
            "channel": planned.message.channel,
            "attempt": planned.attempt,
        }
        if error.outcome_unknown:
            # As after a crash mid-send: the row stays "sending" (its attempt counting as in
            # flight) until its lease runs out, then _resolve_unsettled asks the channel
            # or records it in doubt. Sending again now could reach the person twice.
            log.warning(
                "send outcome unknown; settled when its lease runs out",
                extra={**ids, "error": error.code},
            )
            return None
        # A refusal reached nobody; anything else may have, and keeps counting.
        await repo.settle_attempt(
            current.command_id, result="failed" if error.permanent else "unknown", now=now
        )
        if planned.decision.validation_notice:
            await repo.validation_notice_failed(current)
        if error.permanent or planned.attempt >= config.max_attempts:
            await record_decision(
                tx,
                repo,
                current,
                outcome="failed",
                reason=error.code,
                rule=f"channel.{planned.message.channel}",
                policy_version=policy.version,
                error=error.code,
            )
            log.warning("contact failed", extra={**ids, "error": error.code})
            return "failed", error.code
        delay = config.retry_backoff * 2 ** (planned.attempt - 1)
        await repo.retry_later(current, now=now, due_at=now + delay, error=error.code)
        log.warning(
            "send failed; retrying later",
            extra={**ids, "error": error.code, "retry_in_s": delay.total_seconds()},
        )
        return None
