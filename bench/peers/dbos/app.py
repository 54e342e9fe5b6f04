"""The collections pipeline on DBOS Transact: what a team might write instead of adopting
the services (issue 25's peer; README.md beside this file says what it leaves out).

One durable workflow per overdue event, its id the event's id, so a redelivered or
duplicated event is the same workflow: the balance is checked in the lender's loan book
(a datasource transaction, checkpointed with it), the contact is held while the borrower
sleeps (until a repayment's message cancels it), the e-mail goes to the SMTP relay, and the
outcome is published. Run as ``python -m bench.peers.dbos.app`` with ``PEER_DATABASE_URL``
and the settings below in the environment; SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any, TypedDict
from zoneinfo import ZoneInfo

import aiosmtplib
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from dbos import DBOS, AsyncSQLAlchemyDatasource, SetWorkflowID, WorkflowHandleAsync
from sqlalchemy import make_url, text

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:19092")
PREFIX = os.environ.get("PEER_TOPIC_PREFIX", "")
SMTP_PORT = int(os.environ.get("PEER_SMTP_PORT", "2525"))
# Workflows started and not finished before the consumer stops fetching (held ones count),
# and the connections their transactions share: a transaction that waits on the pool for
# 30 s fails its workflow, so the two are sized together.
IN_FLIGHT = int(os.environ.get("PEER_IN_FLIGHT", "200"))
POOL_SIZE = int(os.environ.get("PEER_POOL_SIZE", "20"))
# DBOS runs its system-database calls on a thread pool, unbounded unless told: one thread
# per workflow in flight, and they then spend their time taking the GIL from each other.
THREADS = int(os.environ.get("PEER_THREADS", "16"))

OVERDUE, REPAYMENTS = PREFIX + "loans.overdue.v1", PREFIX + "loans.repayment.v1"
OUTCOMES = PREFIX + "peer.contact-outcomes.v1"
GROUP = PREFIX + "peer"
CONTACT_HOURS = range(8, 21)  # the borrower's local hours a contact may be made in
REPAID = "repaid"  # the topic of the message a repayment sends a held contact

# The lender's loan book (its system, not the peer's: the bench writes it) and the peer's
# own two tables. A repayment is remembered so a contact checked after it is not held.
SCHEMA = """
CREATE SCHEMA IF NOT EXISTS lender;
CREATE TABLE IF NOT EXISTS lender.loans (
  loan_id text PRIMARY KEY, borrower_email text NOT NULL, outstanding numeric(20, 2) NOT NULL);
CREATE SCHEMA IF NOT EXISTS peer;
CREATE TABLE IF NOT EXISTS peer.held_contacts (
  workflow_id text PRIMARY KEY, loan_id text NOT NULL);
CREATE INDEX IF NOT EXISTS held_contacts_loan ON peer.held_contacts (loan_id);
CREATE TABLE IF NOT EXISTS peer.repayments (
  loan_id text NOT NULL, received_at timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS repayments_loan ON peer.repayments (loan_id);
"""


class Balance(TypedDict):
    owed: bool
    email: str
    wait_s: float


def seconds_until_contact_hours(time_zone: str, now: datetime) -> float:
    """0 inside the borrower's contact hours, else until they start."""
    local = now.astimezone(ZoneInfo(time_zone))
    if local.hour in CONTACT_HOURS:
        return 0.0
    start = local.replace(hour=CONTACT_HOURS.start, minute=0, second=0, microsecond=0)
    if start <= local:
        start += timedelta(days=1)
    return (start - now).total_seconds()  # across zones: by the instants, DST included


class Ledger:
    """The peer's two transactions; a datasource exists only once the event loop runs
    (its factory is a coroutine), so they are decorated here rather than at module level."""

    def __init__(self, ds: AsyncSQLAlchemyDatasource) -> None:
        self.ds = ds
        self.check_balance = ds.transaction(name="check_balance")(self._check_balance)
        self.note_repayment = ds.transaction(name="note_repayment")(self._note_repayment)

    async def _check_balance(self, loan_id: str, as_of: str, time_zone: str) -> Balance:
        # SERIALIZABLE (the datasource's default) with note_repayment: a repayment either
        # commits first and is seen here, or finds the held contact and cancels it.
        session = self.ds.sql_session()
        loan = (
            await session.execute(
                text("SELECT borrower_email, outstanding FROM lender.loans WHERE loan_id = :l"),
                {"l": loan_id},
            )
        ).first()
        repaid = (
            await session.execute(
                text("SELECT 1 FROM peer.repayments WHERE loan_id = :l AND received_at >= :t"),
                {"l": loan_id, "t": datetime.fromisoformat(as_of)},
            )
        ).first()
        owed = loan is not None and loan.outstanding > 0 and repaid is None
        wait_s = seconds_until_contact_hours(time_zone, datetime.now(UTC)) if owed else 0.0
        if wait_s:
            await session.execute(
                text("INSERT INTO peer.held_contacts VALUES (:w, :l)"),
                {"w": DBOS.workflow_id, "l": loan_id},
            )
        return {"owed": owed, "email": loan.borrower_email if loan else "", "wait_s": wait_s}

    async def _note_repayment(self, loan_id: str, received_at: str) -> list[str]:
        session = self.ds.sql_session()
        await session.execute(
            text("INSERT INTO peer.repayments VALUES (:l, :t)"),
            {"l": loan_id, "t": datetime.fromisoformat(received_at)},
        )
        held = await session.execute(
            text("DELETE FROM peer.held_contacts WHERE loan_id = :l RETURNING workflow_id"),
            {"l": loan_id},
        )
        return [row.workflow_id for row in held]


ledger: Ledger
producer: AIOKafkaProducer


@DBOS.workflow()
async def contact(overdue: dict[str, Any]) -> str:
    loan_id = overdue["loan_id"]
    balance = await ledger.check_balance(loan_id, overdue["as_of"], overdue["borrower_time_zone"])
    if not balance["owed"]:
        outcome = "not_owed"
    elif balance["wait_s"] and await DBOS.recv_async(REPAID, balance["wait_s"]) is not None:
        outcome = "cancelled"
    else:
        await send_email(balance["email"], loan_id, overdue["amount_overdue"], overdue["currency"])
        outcome = "sent"
    await publish_outcome(loan_id, outcome)
    return outcome


@DBOS.workflow()
async def repayment(repaid: dict[str, Any]) -> int:
    held = await ledger.note_repayment(repaid["loan_id"], repaid["received_at"])
    for workflow_id in held:
        await DBOS.send_async(workflow_id, "cancel", REPAID)
    return len(held)


@DBOS.step(retries_allowed=True, max_attempts=5)
async def send_email(address: str, loan_id: str, amount: str, currency: str) -> None:
    email = EmailMessage()
    email["From"] = "collections@lender.example"
    email["To"] = address
    email["Subject"] = f"Your loan {loan_id} is overdue"
    # A retry after a crash between the hand-over and the checkpoint sends again, with the
    # same Message-ID (the workflow's id), so the relay or the reader can tell.
    email["Message-ID"] = f"<{DBOS.workflow_id}@peer.lender.example>"
    email.set_content(f"{amount} {currency} is overdue on loan {loan_id}. Please pay.")
    await aiosmtplib.send(email, hostname="127.0.0.1", port=SMTP_PORT, timeout=15)


@DBOS.step(retries_allowed=True)
async def publish_outcome(loan_id: str, outcome: str) -> None:
    value = {"event_id": DBOS.workflow_id, "loan_id": loan_id, "outcome": outcome}
    await producer.send_and_wait(OUTCOMES, json.dumps(value).encode(), key=loan_id.encode())


WORKFLOWS = {"loan.overdue.v1": contact, "loan.repayment.received.v1": repayment}


class InFlight:
    """Bounds the workflows this process runs at once: the consumer waits for a slot."""

    def __init__(self, limit: int) -> None:
        self.slots = asyncio.Semaphore(limit)
        self.tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def start(self, record: ConsumerRecord[bytes, bytes]) -> None:
        headers = {name: value.decode() for name, value in record.headers}
        workflow = WORKFLOWS.get(headers.get("ce_type", ""))
        if workflow is None or record.value is None:
            return  # not an event the peer acts on (a reversal, say)
        await self.slots.acquire()
        with SetWorkflowID(headers["ce_id"]):
            handle = await DBOS.start_workflow_async(workflow, json.loads(record.value))
        task = asyncio.create_task(self._release_after(handle))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _release_after(self, handle: WorkflowHandleAsync[Any]) -> None:
        try:
            await handle.get_result()
        except Exception:
            DBOS.logger.exception("workflow %s failed", handle.get_workflow_id())
        finally:
            self.slots.release()


async def consume(stopping: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        OVERDUE,
        REPAYMENTS,
        bootstrap_servers=BOOTSTRAP,
        group_id=GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    in_flight = InFlight(IN_FLIGHT)
    try:
        while not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            records = [r for batch in batches.values() for r in batch]
            # Each workflow is recorded (and so resumed after a crash) once started: the
            # offsets are committed after that, so an event is consumed at least once.
            await asyncio.gather(*(in_flight.start(r) for r in records))
            if records:
                await consumer.commit()
    finally:
        await consumer.stop()


async def main() -> None:
    global ledger, producer
    url = make_url(os.environ["PEER_DATABASE_URL"]).set(drivername="postgresql+psycopg")
    database_url = url.render_as_string(hide_password=False)
    DBOS(
        config={
            "name": "collections-peer",
            "system_database_url": database_url,
            "max_executor_threads": THREADS,
            # One per process: each recovers its own pending workflows when restarted.
            "executor_id": os.environ.get("PEER_EXECUTOR_ID", "local"),
        }
    )
    ds = await AsyncSQLAlchemyDatasource.create(database_url, {"pool_size": POOL_SIZE})
    async with ds.engine.begin() as conn:
        await conn.exec_driver_sql(SCHEMA)
    ledger = Ledger(ds)
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, enable_idempotence=True, acks="all")
    await producer.start()
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    DBOS.launch()
    try:
        await consume(stopping)
    finally:
        DBOS.destroy()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main())
