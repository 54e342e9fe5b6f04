"""Taking a delivery receipt: kept once, applied to its attempt as
``notifier.domain.receipts`` says, announced like any other delivery outcome, counted."""

from __future__ import annotations

import logging

from prometheus_client import Counter as PromCounter

from notifier.app.audit import announce_delivery, record_sent_many
from notifier.app.ports import StartReceiptUnitOfWork
from notifier.domain.receipts import Apply, Receipt, receipt_effect

log = logging.getLogger(__name__)

RECEIPTS = PromCounter(
    "notifier_delivery_receipts_total",
    "Delivery receipts posted by the providers, by what they did: applied, "
    "duplicate, late, unmatched, refused (bad signature or body)",
    ["provider", "effect"],
)

REASON_RECEIPT = "delivery_receipt"


async def take_receipt(
    uow: StartReceiptUnitOfWork, receipt: Receipt, *, policy_version: str
) -> str:
    """Apply one verified receipt in one transaction; returns its effect ("duplicate" for
    a receipt seen before, which changes nothing)."""
    async with uow() as work:
        tx, repo, now = work.tx, work.dispatches, work.now
        if not await repo.claim_receipt(receipt, now=now):
            effect = "duplicate"
        else:
            target = await repo.receipt_target(receipt)
            dispatch, result = target if target is not None else (None, None)
            decided = receipt_effect(dispatch.status if dispatch else None, result, receipt)
            effect = decided.effect
            await repo.note_receipt_effect(
                receipt, effect=effect, command_id=dispatch.command_id if dispatch else None
            )
            if isinstance(decided, Apply) and dispatch is not None:
                if decided.settles_hand_over:
                    # The hand-over a crash left unrecorded (or in doubt) is proven.
                    await record_sent_many(
                        tx,
                        repo,
                        [
                            (
                                dispatch,
                                REASON_RECEIPT,
                                f"channel.{dispatch.request.channel}",
                                "sent",
                                receipt.provider_ref,
                            )
                        ],
                        policy_version=policy_version,
                    )
                await repo.settle_by_receipt(
                    dispatch.command_id,
                    result=decided.result,
                    provider_ref=receipt.provider_ref,
                    now=now,
                )
                await announce_delivery(tx, dispatch, decided.announced)
        await work.commit()
    RECEIPTS.labels(receipt.provider, effect).inc()
    log.info(
        "delivery receipt taken",
        extra={
            "provider": receipt.provider,
            "receipt_id": receipt.receipt_id,
            "command_id": receipt.reference,
            "status": receipt.status,
            "effect": effect,
        },
    )
    return effect
