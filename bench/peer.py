"""``make bench``'s peer phase: the same loans through the DBOS Transact peer
(``bench/peers/dbos``), measured the way the pipeline is.

The peer runs as processes of its own (by default one per core: a Python process uses one
core at most, and the pipeline runs three) in one consumer group, on the same PostgreSQL
server (its own database) and broker (its own topic prefix); its e-mails go to an SMTP
server on loopback in this process.
The loans are booked in the lender's loan book the peer reads, the overdue events published
as the pipeline's are, and the clock runs from the first event to the last e-mail received.
Then a few loans whose contact is held (their borrowers asleep) are repaid: each must be
cancelled and none mailed. Sizes: ``BENCH_PEER_LOANS``, ``BENCH_PEER_REPAID``,
``BENCH_PEER_PROCESSES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiosmtpd.controller import Controller

from bench.run import (
    STATS_SETTLE_S,
    _Lag,
    busy_cpu_s,
    per_unit_us,
    producer,
    zone_at_midday,
    zone_at_night,
)
from collections_kit.contract import LoanOverdue
from collections_kit.db import asyncpg_dsn
from scripts import lending
from scripts.infra import create_database, create_topics, delete_topics, drop_database, read_to_end
from scripts.services import ROOT

OUTCOMES = "peer.contact-outcomes.v1"


class MailBox:
    """An SMTP server on loopback that counts what it is handed, by recipient (each loan's
    borrower has an address of their own)."""

    def __init__(self) -> None:
        self.by_recipient: Counter[str] = Counter()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    @property
    def received(self) -> int:
        return self.by_recipient.total()

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        self.by_recipient.update(envelope.rcpt_tos)
        return "250 OK"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def cpu_s(self) -> float | None:
        """CPU seconds the server's thread has used (it runs in this process)."""
        thread = self._controller._thread
        return None if thread is None else _proc_cpu_s(f"/proc/self/task/{thread.native_id}/stat")


def _proc_cpu_s(path: str) -> float | None:
    """utime + stime of a /proc stat file, in seconds."""
    try:
        # The command name (field 2) may hold spaces: split after its closing parenthesis.
        fields = Path(path).read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.peers.dbos.app"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 6, 1)])
    finally:
        await admin.close()


async def _delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


def _peers_cpu_s(peers: list[subprocess.Popen[bytes]]) -> float | None:
    each = [_proc_cpu_s(f"/proc/{peer.pid}/stat") for peer in peers]
    return None if None in each else sum(s for s in each if s is not None)


def _email(loan_id: str) -> str:
    return f"{loan_id}@borrowers.example"


async def dbos_peer(
    admin_url: str,
    bootstrap: str,
    loans: int,
    repaid: int,
    *,
    processes: int = 2,
    count_rows: bool = True,
) -> dict[str, Any]:
    """Run the peer over ``loans`` contacts and ``repaid`` cancelled ones; its figures."""
    run = uuid.uuid4().hex[:8]
    name, prefix = f"bench_peer_{run}", f"benchpeer{run}."
    async with contextlib.AsyncExitStack() as cleanup:
        url = await create_database(admin_url, name)
        cleanup.push_async_callback(drop_database, admin_url, name)
        await create_topics(bootstrap, prefix, partitions=6)
        cleanup.push_async_callback(delete_topics, bootstrap, prefix)
        await _create_topic(bootstrap, prefix + OUTCOMES)
        cleanup.push_async_callback(_delete_topic, bootstrap, prefix + OUTCOMES)
        mail = MailBox()
        mail.start()
        cleanup.callback(mail.stop)
        log_dir = ROOT / ".cache" / "bench" / run
        log_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PEER_DATABASE_URL": url,
            "KAFKA_BOOTSTRAP": bootstrap,
            "PEER_TOPIC_PREFIX": prefix,
            "PEER_SMTP_PORT": str(mail.port),
        }
        peers: list[subprocess.Popen[bytes]] = []
        for i in range(processes):
            # Each its own DBOS executor: on a restart it recovers its own pending workflows.
            executor = {"PEER_EXECUTOR_ID": f"peer-{i}"}
            peers.append(await asyncio.to_thread(_spawn, env | executor, log_dir / f"peer-{i}.log"))
            cleanup.push_async_callback(_stop, peers[-1])
            # One at a time: the first creates the tables and DBOS's own, and two processes
            # running the same CREATE ... IF NOT EXISTS at once can both try to create.
            joined = functools.partial(_joined, bootstrap, prefix + "peer", len(peers))
            await _until(peers, joined, "joining")
        conn = await asyncpg.connect(asyncpg_dsn(url))
        cleanup.push_async_callback(conn.close)
        held = [f"H-{i:07d}" for i in range(repaid)]
        contacted = [f"P-{i:07d}" for i in range(loans)]
        # Set-up, not measured: the lender's loan book, as its core system keeps it.
        await conn.copy_records_to_table(
            "loans",
            schema_name="lender",
            records=[(loan, _email(loan), Decimal("900.00")) for loan in contacted + held],
        )
        before = await _rows_written(conn) if count_rows else 0
        p = producer(bootstrap)
        await p.start()
        cleanup.push_async_callback(p.stop)
        lender = lending.Lender(p, prefix)
        started, cpu_started = time.perf_counter(), busy_cpu_s()
        peer_cpu, sink_cpu = _peers_cpu_s(peers), mail.cpu_s()
        zone = zone_at_midday()
        await lender.publish_many(_overdue(loan, zone) for loan in contacted)
        await _until(peers, lambda: _mailed(conn, mail, loans), "every e-mail", 1500)
        elapsed = time.perf_counter() - started
        cpu_us = per_unit_us(cpu_started, busy_cpu_s(), loans)
        peer_us = per_unit_us(peer_cpu, _peers_cpu_s(peers), loans)
        sink_us = per_unit_us(sink_cpu, mail.cpu_s(), loans)
        # Held contacts (their borrowers at night), each repaid once its contact waits.
        night = zone_at_night()
        await lender.publish_many(_overdue(loan, night) for loan in held)
        await _until(peers, lambda: _count(conn, "peer.held_contacts", repaid), "the holds")
        await lender.publish_many(
            lending.repayment(loan, Decimal("900.00"), Decimal("0"), currency="GBP")
            for loan in held
        )
        await _until(peers, lambda: _all_finished(conn), "every workflow to finish")
        after = await _rows_written(conn) if count_rows else 0
        synchronous_commit = await conn.fetchval("SHOW synchronous_commit")
        outcomes = Counter(
            (json.loads(r.value)["loan_id"], json.loads(r.value)["outcome"])
            for r in await read_to_end(bootstrap, [prefix + OUTCOMES])
            if r.value is not None
        )
    mailed = {loan: mail.by_recipient[_email(loan)] for loan in contacted + held}
    return {
        "loans": loans,
        "processes": processes,
        "loans_per_s": round(loans / elapsed, 1),
        "machine_cpu_us_per_loan": cpu_us,
        # Of the machine's: the peer's own processes, and the SMTP server the bench runs
        # (the pipeline's bench policy sends SMS to a recording channel, not e-mail).
        "peer_process_cpu_us_per_loan": peer_us,
        "smtp_sink_cpu_us_per_loan": sink_us,
        "rows_written_per_loan": round((after - before) / loans, 2) if count_rows else None,
        "synchronous_commit": synchronous_commit,
        "mailed_once": sum(1 for loan in contacted if mailed[loan] == 1),
        "mailed_twice_or_more": sum(1 for n in mailed.values() if n > 1),
        "repaid": repaid,
        "repaid_mailed": sum(mailed[loan] for loan in held),
        "repaid_cancelled": sum(outcomes[(loan, "cancelled")] for loan in held),
        "outcomes_published": outcomes.total(),
    }


async def _stop(peer: subprocess.Popen[bytes]) -> None:
    peer.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(peer.wait, 30)
    except subprocess.TimeoutExpired:
        peer.kill()
        await asyncio.to_thread(peer.wait)


def _overdue(loan_id: str, zone: str) -> LoanOverdue:
    return lending.overdue(
        loan_id, Decimal("900.00"), tz=zone, jurisdiction="UK", currency="GBP", borrower_id=loan_id
    )


async def _mailed(conn: asyncpg.Connection, mail: MailBox, loans: int) -> bool:
    if mail.received >= loans:
        return True
    failed = await conn.fetchval(
        "SELECT count(*) FROM dbos.workflow_status "
        "WHERE status IN ('ERROR', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED', 'CANCELLED')"
    )
    if failed:
        raise RuntimeError(f"{failed} of the DBOS peer's workflows failed: see its log")
    return False


async def _joined(bootstrap: str, group: str, members: int) -> bool:
    async with _Lag(bootstrap) as lag:
        return await lag.stable(group, members)


async def _count(conn: asyncpg.Connection, table: str, target: int) -> bool:
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}")) >= target
    except asyncpg.UndefinedTableError:
        return False


async def _all_finished(conn: asyncpg.Connection) -> bool:
    waiting = await conn.fetchval(
        "SELECT count(*) FROM dbos.workflow_status "
        "WHERE status IN ('PENDING', 'ENQUEUED', 'DELAYED')"
    )
    return int(waiting) == 0


async def _rows_written(conn: asyncpg.Connection) -> int:
    """Rows the database has inserted, updated or deleted so far (PostgreSQL's table
    statistics, once settled: ``STATS_SETTLE_S``)."""
    await asyncio.sleep(STATS_SETTLE_S)
    return int(
        await conn.fetchval(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables"
        )
    )


async def _until(
    peers: list[subprocess.Popen[bytes]],
    done: Callable[[], Awaitable[bool]],
    what: str,
    timeout: float = 180,
) -> None:
    """Poll ``done()`` until it is true; fail at once if a peer process exits."""
    deadline = time.monotonic() + timeout
    while not await done():
        for peer in peers:
            if peer.poll() is not None:
                raise RuntimeError(f"a DBOS peer exited ({peer.returncode}) waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"waiting for {what}")
        await asyncio.sleep(0.05)
