"""Taking a delivery receipt: kept once, applied to its attempt as
``notifier.domain.receipts`` says, announced like any other delivery outcome, counted."""

from __future__ import annotations

import logging
from datetime import datetime

from prometheus_client import Counter as PromCounter
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from collections_kit.outbox import Tx, flush
from notifier.adapters.repository import DispatchRepository
from notifier.app.audit import announce_delivery, record_sent_many
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
    engine: AsyncEngine,
    receipt: Receipt,
    *,
    now: datetime,
    source: str,
    topic_prefix: str,
    outbox: Table,
    schema: str,
    policy_version: str,
) -> str:
    """Apply one verified receipt in one transaction; returns its effect ("duplicate" for
    a receipt seen before, which changes nothing)."""
    async with engine.begin() as conn:
        tx = Tx(conn=conn, now=now, source=source, topic_prefix=topic_prefix)
        repo = DispatchRepository(conn)
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
            await flush(tx, outbox, schema)
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
