"""``make bench``: how close the system comes to this machine's own ceiling.

Every figure comes from one run on the same broker and database:

- ``baseline.kafka_msgs_per_s``: a plain aiokafka consume-then-produce loop, same message
  size and producer settings as the services: the ceiling for any Python consumer here;
- ``baseline.pg_rows_per_s``: batched inserts of case-sized rows;
- ``ingest.events_per_s``: overdue events applied by the workflow (a real process: state
  updated and committed), against 1,000,000 existing cases;
- ``pipeline.loans_per_s``: loans from overdue event to contact dispatched, through the
  balance check, the ledger confirmation and the notifier's compliance guard; its machine
  CPU per loan, and (``cpu_us_per_loan_by_part``) each service's, PostgreSQL's, the
  broker's and the bench's own, read per process, so less disturbed by other work;
- ``suppression_ms``: repayment produced → that loan's pending commands cancelled (the
  cancelling transaction's commit time), one repayment every 100 ms
  (``BENCH_SUPPRESSION_INTERVAL_MS``) against the clock, under a background load of 20% of
  the pipeline rate (once the pipeline's tail drained), with each sample's hops
  (``python -m bench.run --only suppression`` runs the pipeline and this phase alone, e.g.
  with ``BENCH_PIPELINE_LOANS=5000 BENCH_SUPPRESSION_SAMPLES=400
  BENCH_SUPPRESSION_BACKGROUND=220`` for a fixed background load, in about 80 s);
- ``scale``: ingest rate with 10k, 100k and 1M existing cases, and each service's peak RSS.
- ``peer.dbos``: the same loans (fewer of them) through a DBOS Transact peer written the
  way its examples are (bench/peers/dbos; ``python -m bench.run --only peer`` runs it alone).

Sizes come from the environment (``BENCH_INGEST_EVENTS``, ``BENCH_PIPELINE_LOANS``,
``BENCH_SCALE``...) so a quick run is possible; the defaults are the issue's. Results go to
``bench/results/latest.json`` and ``bench/results/scale.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from collections_kit.auth import dev_headers
from collections_kit.db import asyncpg_dsn
from collections_kit.outbox import waiting_sql
from scripts import lending
from scripts import stack as local_stack
from scripts.infra import create_database, create_topics, delete_topics, drop_database
from scripts.services import DEFAULT_BASE_PORT, ROOT, Fleet, ServiceProcess

RESULTS = ROOT / "bench" / "results"
POLICY = ROOT / "bench" / "policy-sms-only.toml"


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


# The suppression samples: one repayment every so often (10 a second by default, against
# 20% of the pipeline's rate in the background: about 230 loans a second here).
SUPPRESSION_INTERVAL_S = env_int("BENCH_SUPPRESSION_INTERVAL_MS", 100) / 1000


@dataclass
class Sizes:
    baseline_msgs: int = env_int("BENCH_BASELINE_MSGS", 200_000)
    pg_rows: int = env_int("BENCH_PG_ROWS", 200_000)
    ingest_events: int = env_int("BENCH_INGEST_EVENTS", 1_000_000)
    scale: tuple[int, ...] = tuple(
        int(x) for x in os.environ.get("BENCH_SCALE", "10000,100000,1000000").split(",")
    )
    # 300,000 (was 100,000): at 12-15k events/s a 100,000-event run is measured over about
    # seven seconds, and a few seconds of the machine doing something else moved the cost
    # ratio by a fifth between runs of the same code.
    scale_events: int = env_int("BENCH_SCALE_EVENTS", 300_000)
    pipeline_loans: int = env_int("BENCH_PIPELINE_LOANS", 100_000)
    suppression_samples: int = env_int("BENCH_SUPPRESSION_SAMPLES", 200)
    # The DBOS Transact peer (bench/peer.py): loans through it, and how many held contacts
    # are repaid to show the cancellation. Fewer loans than the pipeline: it ran at 24 to 32
    # loans/s on this machine shared with other work, so 3,000 keep its phase near 3 minutes
    # even then.
    peer_loans: int = env_int("BENCH_PEER_LOANS", 3_000)
    peer_repaid: int = env_int("BENCH_PEER_REPAID", 20)
    peer_processes: int = env_int("BENCH_PEER_PROCESSES", os.cpu_count() or 1)
    # Workflow replicas applying the ingest (one consumer group), as it would be deployed:
    # one per core plus one, because a replica waits on PostgreSQL for about a third of
    # each batch (measured with py-spy --idle), and the spare fills those waits.
    ingest_replicas: int = env_int("BENCH_INGEST_REPLICAS", (os.cpu_count() or 1) + 1)
    # Processes per service in the pipeline, e.g. "notifier=2" (the others: one each).
    pipeline_replicas: dict[str, int] = field(
        default_factory=lambda: replicas_from(os.environ.get("BENCH_PIPELINE_REPLICAS", ""))
    )


def replicas_from(spec: str) -> dict[str, int]:
    """``"notifier=2,workflow=2"`` -> ``{"notifier": 2, "workflow": 2}``."""
    pairs = (item.split("=", 1) for item in spec.split(",") if item.strip())
    return {name.strip(): int(count) for name, count in pairs}


def zone_at_midday() -> str:
    offset = max(min(12 - datetime.now(UTC).hour, 12), -12)
    return "Etc/GMT" + (f"-{offset}" if offset > 0 else f"+{-offset}" if offset < 0 else "")


def zone_at_night() -> str:
    # Local 02:xx: the offset wrapped into -12..+11 (clamping instead picked a daytime zone
    # from 15:00 UTC on, and the suppression samples were sent rather than deferred).
    offset = (2 - datetime.now(UTC).hour + 12) % 24 - 12
    return "Etc/GMT" + (f"-{offset}" if offset > 0 else f"+{-offset}" if offset < 0 else "")


def sample_record() -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    _, key, value, headers = lending.record_for(lending.overdue("L-0000001", Decimal("1234.56")))
    return key, value, headers


def producer(bootstrap: str) -> AIOKafkaProducer:
    # The services' relay settings (collections_kit.runtime.make_producer).
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
    )


# --- baselines ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    per_s: float
    # The machine's CPU (every process: broker or database, and the Python client) per
    # message or row: what the pipeline's own plumbing is priced at (``plumbing``).
    machine_cpu_us: float | None


def per_unit_us(cpu_started: float | None, cpu_ended: float | None, n: int) -> float | None:
    if cpu_started is None or cpu_ended is None or not n:
        return None
    return round((cpu_ended - cpu_started) * 1e6 / n, 1)


async def baseline_kafka(bootstrap: str, n: int) -> Baseline:
    run = uuid.uuid4().hex[:8]
    source, sink = f"bench{run}.in", f"bench{run}.out"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(t, 6, 1) for t in (source, sink)])
    key, value, headers = sample_record()
    p = producer(bootstrap)
    await p.start()
    try:
        for _ in range(n):
            await p.send(source, value=value, key=key, headers=headers)
        await p.flush()
        consumer = AIOKafkaConsumer(
            source,
            bootstrap_servers=bootstrap,
            group_id=f"b{run}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=500,
        )
        await consumer.start()
        done, started, cpu_started = 0, time.perf_counter(), busy_cpu_s()
        while done < n:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            futures = [
                await p.send(sink, value=r.value, key=r.key, headers=list(r.headers))
                for records in batches.values()
                for r in records
            ]
            await asyncio.gather(*futures)
            await consumer.commit()
            done += len(futures)
        elapsed = time.perf_counter() - started
        cpu_ended = busy_cpu_s()
        await consumer.stop()
    finally:
        await p.stop()
        await admin.delete_topics([source, sink])
        await admin.close()
    return Baseline(n / elapsed, per_unit_us(cpu_started, cpu_ended, n))


async def baseline_pg(admin_url: str, n: int) -> Baseline:
    name = f"bench_pg_{uuid.uuid4().hex[:8]}"
    url = await create_database(admin_url, name)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("""CREATE TABLE cases (case_id text PRIMARY KEY, loan_id text UNIQUE,
            borrower_id text, stage text, status text, outstanding numeric(20,6),
            days_past_due int, as_of timestamptz, zone text, detail jsonb)""")
        now = datetime.now(UTC)
        rows = [
            (
                f"c{i}",
                f"L{i}",
                f"B{i}",
                "warning",
                "open",
                Decimal("1234.56"),
                5,
                now,
                "Asia/Shanghai",
                '{"policy": "v1"}',
            )
            for i in range(n)
        ]
        started, cpu_started = time.perf_counter(), busy_cpu_s()
        for i in range(0, n, 500):
            async with conn.transaction():
                await conn.executemany(
                    "INSERT INTO cases VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10::jsonb)",
                    rows[i : i + 500],
                )
        elapsed = time.perf_counter() - started
        return Baseline(n / elapsed, per_unit_us(cpu_started, busy_cpu_s(), n))
    finally:
        await conn.close()
        await drop_database(admin_url, name)


# --- the workflow's ingest ----------------------------------------------------------------------


async def populate_cases(dsn: str, n: int) -> None:
    """Existing cases, written straight into the table (setting up, not measuring)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO workflow.cases (case_id, loan_id, borrower_id, product, currency, stage,
              status, outstanding, amount_overdue, days_past_due, last_overdue_as_of,
              borrower_time_zone, jurisdiction, policy_version, opened_at, updated_at,
              stage_epoch, stage_entered_at, outstanding_at_stage_entry)
            SELECT 'case-' || g, 'L-' || lpad(g::text, 7, '0'), 'B-' || g, 'consumer-loan',
              'CNY', 'warning', 'open', 1234.56, 123.45, 5, now() - interval '1 day',
              'Asia/Shanghai', 'CN', 'consumer-loan/2026-11-01', now(), now(), 1, now(), 1234.56
            FROM generate_series(0, $1 - 1) g""",
            n,
        )
        await conn.execute("ANALYZE workflow.cases")
    finally:
        await conn.close()


async def applied(dsn: str, since: datetime) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM workflow.cases WHERE last_overdue_as_of >= $1", since
            )
        )
    finally:
        await conn.close()


# How long PostgreSQL's cumulative statistics (table row counts, WAL) may lag the work:
# a busy backend reports at most once a second, and the last second's work of a backend
# that then went idle waits for its idle timeout (PGSTAT_IDLE_INTERVAL, 10 s). Read
# sooner, the tail of a run would be missing from its counts and the set-up's tail added.
STATS_SETTLE_S = 11.0


def busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy (every process: broker, database,
    services, the bench), from /proc/stat; None where there is no /proc."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    # user, nice, system, irq, softirq (guest time is inside user); not idle, iowait or
    # steal (time the hypervisor gave to someone else).
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]
    return busy / os.sysconf("SC_CLK_TCK")


async def wal_counters(conn: asyncpg.Connection) -> tuple[int, int, int] | None:
    """The cluster's WAL full-page images, WAL bytes and checkpoints so far, or None where
    the statistics views are not readable. A checkpoint during an ingest makes the first
    write to each page after it carry the whole page: a large table pays that once per
    page, a small one hardly at all, so a run's cost per event could depend on whether one
    fell inside it. Measured: with a checkpoint forced between writing 1M cases and
    applying the events, 0.01 full pages and 66 more WAL bytes per event, and the same
    cost per event as without (88 and 93 us); not what moved run O's ratio (see
    :func:`scale_order`), but kept in view."""
    try:
        wal = await conn.fetchrow("SELECT wal_fpi, wal_bytes FROM pg_stat_wal")
        try:  # PostgreSQL 17 moved the counters to their own view
            checkpoints = await conn.fetchval(
                "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
            )
        except asyncpg.UndefinedTableError:
            checkpoints = await conn.fetchval(
                "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
            )
    except asyncpg.PostgresError:
        return None
    if wal is None or checkpoints is None:
        return None
    return int(wal["wal_fpi"]), int(wal["wal_bytes"]), int(checkpoints)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has spent, 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_part(fleet: Fleet) -> dict[str, float]:
    """CPU seconds spent so far by each part of the pipeline: each service (its replicas
    added), PostgreSQL (the postmaster and its children: every backend and worker), the
    broker and this bench process. Processes that ended meanwhile are not counted (a
    connection closed mid-run), so the parts add up to a little less than the machine's
    figure; the rest of the machine is that difference, not a part."""
    pids: dict[str, list[int]] = {}
    for member in fleet.members.values():
        if member.process is not None:
            pids.setdefault(member.name, []).append(member.process.pid)
    with contextlib.suppress(OSError, ValueError, IndexError):
        pids["kafka"] = [int(local_stack.KAFKA_PID_FILE.read_text().split()[0])]
    with contextlib.suppress(OSError, ValueError, IndexError):
        postmaster = int((local_stack.PG_DATA_DIR / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        pids["postgresql"] = [postmaster, *map(int, children)]
    pids["bench"] = [os.getpid()]
    return {role: sum(map(process_cpu_s, ps)) for role, ps in pids.items()}


def per_part_us(started: dict[str, float], ended: dict[str, float], n: int) -> dict[str, float]:
    return {role: round((ended[role] - started.get(role, 0.0)) * 1e6 / n, 1) for role in ended if n}


def rss_mb(member: ServiceProcess) -> float:
    if member.process is None:
        return 0.0
    try:
        for line in Path(f"/proc/{member.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


async def ingest(
    admin_url: str, bootstrap: str, existing: int, events: int, replicas: int = 1
) -> dict[str, Any]:
    """Overdue updates for ``events`` of ``existing`` cases, applied by ``replicas`` workflow
    processes in one consumer group."""
    run = uuid.uuid4().hex[:8]
    name, prefix = f"bench_in_{run}", f"benchin{run}."
    url = await create_database(admin_url, name)
    dsn = asyncpg_dsn(url)
    await create_topics(bootstrap, prefix, partitions=6)
    fleet = Fleet(
        database_url=url,
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        log_dir=ROOT / ".cache" / "bench" / run,
        base_port=DEFAULT_BASE_PORT + 400,
        replicas={"workflow": replicas},
    )
    workflow = fleet["workflow"]
    members = [fleet[key] for key in fleet.replicas_of("workflow")]
    try:
        await asyncio.to_thread(workflow.migrate)
        await populate_cases(dsn, existing)
        as_of = datetime.now(UTC)
        p = producer(bootstrap)
        await p.start()
        try:
            for i in range(events):
                loan = f"L-{i % existing:07d}"
                data = lending.overdue(
                    loan,
                    Decimal("1234.56"),
                    dpd=6,
                    as_of=as_of + timedelta(microseconds=i // existing),
                )
                topic, key, value, headers = lending.record_for(data)
                await p.send(prefix + topic, value=value, key=key, headers=headers)
            await p.flush()
        finally:
            await p.stop()
        topic_name = prefix + lending.record_for(lending.overdue("L-0", Decimal("1")))[0]
        for member in members:
            member.start()
        for member in members:
            await asyncio.to_thread(member.wait_ready)
        # The group's committed offsets say what is applied (they are committed after the
        # state). The rate is taken from the first progress to the last event, so joining
        # the consumer group is not counted as ingest; polling offsets costs the database
        # nothing (a count over the cases table would compete with what is measured).
        # Nor are the rebalances while the replicas join one by one (each pauses the whole
        # group): the clock starts again once the group is stable with every replica in
        # it, unless a small run is over by then.
        partitions = [TopicPartition(topic_name, n) for n in range(6)]
        group = prefix + "workflow"
        stats = await asyncpg.connect(dsn)

        async def mark() -> tuple[float, float | None, tuple[int, int, int] | None]:
            """Where the measurement (re)starts: the clock, the machine's CPU, the WAL."""
            return time.perf_counter(), busy_cpu_s(), await wal_counters(stats)

        try:
            async with _Lag(bootstrap) as lag:
                first, (started, cpu_started, wal_started) = 0, await mark()
                remaining = await lag.remaining(group, partitions)
                while remaining > 0:
                    if remaining < events and not first:
                        first, (started, cpu_started, wal_started) = remaining, await mark()
                    if first and await lag.stable(group, len(members)):
                        first, (started, cpu_started, wal_started) = remaining, await mark()
                        break
                    await asyncio.sleep(0.05)
                    remaining = await lag.remaining(group, partitions)
                if not first:
                    raise RuntimeError(
                        f"{events} events were applied before any progress was "
                        "seen: too few to measure (raise BENCH_*_EVENTS)"
                    )
                while remaining > 0:
                    await asyncio.sleep(0.1)
                    remaining = await lag.remaining(group, partitions)
                elapsed = time.perf_counter() - started
                cpu_ended = busy_cpu_s()
                await asyncio.sleep(STATS_SETTLE_S)
                wal_ended = await wal_counters(stats)
        finally:
            await stats.close()
        assert await applied(dsn, as_of) == min(events, existing)
        events_per_s = first / elapsed
        # Wall time per event is the figure; the machine's CPU per event beside it says
        # whether a slower run did more work or got less of the machine.
        cpu_us = per_unit_us(cpu_started, cpu_ended, first)
        return {
            "existing_cases": existing,
            "events": events,
            "replicas": replicas,
            "events_per_s": round(events_per_s, 1),
            "us_per_event": round(1e6 / events_per_s, 1),
            "machine_cpu_us_per_event": cpu_us,
            **_wal_per_event(wal_started, wal_ended, first),
            "workflow_rss_mb": max(rss_mb(m) for m in members),
        }
    finally:
        await asyncio.to_thread(fleet.stop)
        await delete_topics(bootstrap, prefix)
        await drop_database(admin_url, name)


def _wal_per_event(
    before: tuple[int, int, int] | None, after: tuple[int, int, int] | None, events: int
) -> dict[str, float | int | None]:
    if before is None or after is None:
        return {"wal_fpi_per_event": None, "wal_bytes_per_event": None, "checkpoints": None}
    return {
        "wal_fpi_per_event": round((after[0] - before[0]) / events, 3),
        "wal_bytes_per_event": round((after[1] - before[1]) / events),
        "checkpoints": after[2] - before[2],
    }


def service_groups(prefix: str) -> list[str]:
    """The three services' consumer groups in a run's topic prefix."""
    return [f"{prefix}{service}" for service in ("workflow", "ledger-sync", "notifier")]


class _Lag:
    """Records of consumer groups' topics not yet committed, from their offsets."""

    def __init__(self, bootstrap: str) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)

    async def __aenter__(self) -> _Lag:
        await self._admin.start()
        await self._consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def stable(self, group: str, members: int) -> bool:
        """Whether ``group`` is stable with ``members`` members."""
        for response in await self._admin.describe_consumer_groups([group]):
            # (error, group, state, protocol type, protocol, members[, operations])
            for described in response.groups:
                if described[1] == group:
                    return bool(described[2] == "Stable" and len(described[5]) == members)
        return False

    async def committed(self, group: str) -> int:
        """Records ``group`` has committed, over every partition it has committed on."""
        offsets = await self._admin.list_consumer_group_offsets(group)
        return sum(max(meta.offset, 0) for meta in offsets.values())

    async def remaining(self, group: str, partitions: list[TopicPartition] | None = None) -> int:
        """Over ``partitions`` (a partition without a commit counts whole), or over those
        the group has committed on."""
        committed = await self._admin.list_consumer_group_offsets(group)
        ends = await self._consumer.end_offsets(
            list(committed) if partitions is None else partitions
        )
        return sum(
            end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items()
        )


# --- the whole pipeline -------------------------------------------------------------------------


async def pipeline(
    admin_url: str,
    bootstrap: str,
    loans: int,
    samples: int,
    replicas: dict[str, int] | None = None,
    base_port: int = DEFAULT_BASE_PORT + 410,
    raw: bool = False,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    run = uuid.uuid4().hex[:8]
    name, prefix = f"bench_pl_{run}", f"benchpl{run}."
    url = await create_database(admin_url, name)
    dsn = asyncpg_dsn(url)
    await create_topics(bootstrap, prefix, partitions=6)
    fleet = Fleet(
        database_url=url,
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        log_dir=ROOT / ".cache" / "bench" / run,
        base_port=base_port,
        extra_env={
            # No KPI gauges: a refresh reads every timeline, which is not the pipeline's
            # work (docs/measures.md).
            "workflow": {
                "WORKFLOW_POLICY_FILES": json.dumps([str(POLICY)]),
                "WORKFLOW_KPI_REFRESH_S": "0",
            },
            "notifier": {"NOTIFIER_DISPATCH_BATCH": "500"},
        },
        replicas=replicas or {},
    )
    try:
        await asyncio.to_thread(fleet.start)
        zone = zone_at_midday()
        p = producer(bootstrap)
        await p.start()
        lender = lending.Lender(p, prefix)
        try:
            # Set-up, not measured: borrowers registered with the notifier while ledger-sync
            # books the loans (two services, two cores).
            await asyncio.gather(
                _register(fleet["notifier"].base_url, loans + samples),
                _disburse(lender, dsn, loans + samples),
            )
            before = await work_done(bootstrap, dsn, prefix)
            started, cpu_started = time.perf_counter(), busy_cpu_s()
            parts_started = cpu_by_part(fleet)
            await lender.publish_many(
                lending.overdue(
                    f"P-{i:07d}",
                    Decimal("900.00"),
                    tz=zone,
                    jurisdiction="UK",
                    currency="GBP",
                    borrower_id=f"B-{i:07d}",
                )
                for i in range(loans)
            )
            await _wait(
                dsn,
                "SELECT count(*) FROM notifier.contact_decisions WHERE decision = 'sent'",
                loans,
            )
            elapsed = time.perf_counter() - started
            cpu_us = per_unit_us(cpu_started, busy_cpu_s(), loans)
            by_part = per_part_us(parts_started, cpu_by_part(fleet), loans)
            rate = loans / elapsed
            # The pipeline's tail (outcomes relayed and consumed) is not the background
            # load the suppression figure is specified under: let it drain first. It is
            # part of each loan's work, so the counts are taken after it.
            await _quiesce(bootstrap, dsn, prefix)
            after = await work_done(bootstrap, dsn, prefix)
            suppression = await _suppression(lender, dsn, loans, samples, rate, raw)
        finally:
            await p.stop()
        rss = {key: rss_mb(member) for key, member in fleet.members.items()}
        return (
            {
                "loans": loans,
                "loans_per_s": round(rate, 1),
                "machine_cpu_us_per_loan": cpu_us,
                # Where it went: each service, PostgreSQL, the broker, the bench itself.
                "cpu_us_per_loan_by_part": by_part,
                "messages_consumed_per_loan": round((after.consumed - before.consumed) / loans, 2),
                "rows_written_per_loan": round(
                    (after.rows_written - before.rows_written) / loans, 2
                ),
                "rows_by_table": rows_by_table(before, after, loans),
            },
            suppression,
            rss,
        )
    finally:
        await asyncio.to_thread(fleet.stop)
        await delete_topics(bootstrap, prefix)
        await drop_database(admin_url, name)


@dataclass(frozen=True)
class WorkDone:
    """Records the services' consumer groups have committed so far, and the rows the run's
    database has written, per table: (inserted, updated, deleted)."""

    consumed: int
    rows: dict[str, tuple[int, int, int]]

    @property
    def rows_written(self) -> int:
        return sum(sum(counts) for counts in self.rows.values())


async def work_done(bootstrap: str, dsn: str, prefix: str) -> WorkDone:
    """Records the services' consumer groups have committed so far, and rows the run's
    database has written (inserted, updated or deleted: PostgreSQL's table statistics,
    once they have settled: ``STATS_SETTLE_S``)."""
    async with _Lag(bootstrap) as lag:
        consumed = sum([await lag.committed(group) for group in service_groups(prefix)])
    await asyncio.sleep(STATS_SETTLE_S)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT schemaname || '.' || relname AS name, n_tup_ins, n_tup_upd, n_tup_del"
            " FROM pg_stat_user_tables"
        )
    finally:
        await conn.close()
    return WorkDone(
        consumed, {r["name"]: (r["n_tup_ins"], r["n_tup_upd"], r["n_tup_del"]) for r in rows}
    )


def rows_by_table(before: WorkDone, after: WorkDone, loans: int) -> dict[str, dict[str, float]]:
    """Rows written per loan in each table between two counts, split into inserted, updated
    and deleted (only the non-zero ones), the most written first: where
    ``rows_written_per_loan`` comes from, so a change to it shows which table moved."""
    split: dict[str, dict[str, float]] = {}
    for name, counts in after.rows.items():
        was = before.rows.get(name, (0, 0, 0))
        kinds = zip(("inserted", "updated", "deleted"), counts, was, strict=True)
        per_loan = {kind: round((now - then) / loans, 2) for kind, now, then in kinds}
        if any(per_loan.values()):
            split[name] = {kind: n for kind, n in per_loan.items() if n}
    return dict(sorted(split.items(), key=lambda item: -sum(item[1].values())))


def plumbing(flow: dict[str, Any], kafka: Baseline, pg: Baseline) -> dict[str, Any]:
    """What the pipeline's plumbing alone costs per loan, priced at the baselines' machine
    CPU per unit from the same run: each record consumed also had to be produced (one
    consume-produce round of the Kafka baseline), each row written one batched insert of
    the PostgreSQL baseline. ``ceiling_loans_per_s`` is what the machine's cores could
    carry if the services did nothing else (no decoding, deciding, policies, templates):
    a bound from the pipeline's own counts, not a measurement of a pipeline."""
    if kafka.machine_cpu_us is None or pg.machine_cpu_us is None:
        return {}
    us = (
        flow["messages_consumed_per_loan"] * kafka.machine_cpu_us
        + flow["rows_written_per_loan"] * pg.machine_cpu_us
    )
    cores = os.cpu_count() or 1
    return {
        "plumbing_cpu_us_per_loan": round(us, 1),
        "ceiling_loans_per_s": round(cores * 1e6 / us, 1) if us else None,
    }


async def _disburse(lender: lending.Lender, dsn: str, n: int) -> None:
    await lender.publish_many(
        lending.disbursement(f"P-{i:07d}", Decimal("900.00"), currency="GBP") for i in range(n)
    )
    await _wait(dsn, "SELECT count(*) FROM ledger_sync.loan_balances", n)


async def _register(base: str, n: int) -> None:
    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=30, headers=dev_headers(subject="bench")) as http:

        async def put(i: int) -> None:
            async with sem:
                r = await http.put(
                    f"{base}/v1/borrowers/B-{i:07d}/contact-details",
                    json={
                        "language": "en",
                        "phone": f"+4477009{i % 100000:05d}",
                        "email": f"b{i}@example.com",
                    },
                )
                r.raise_for_status()

        await asyncio.gather(*(put(i) for i in range(n)))


async def _wait(dsn: str, sql: str, target: int, timeout: float = 1500) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while int(await conn.fetchval(sql)) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(sql)
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


async def _quiesce(bootstrap: str, dsn: str, prefix: str, timeout: float = 600) -> None:
    """Until every service's outbox is empty and its consumer group has committed all it
    was given, twice in a row."""
    groups = service_groups(prefix)
    conn = await asyncpg.connect(dsn)
    try:
        async with _Lag(bootstrap) as lag:
            deadline, quiet = time.monotonic() + timeout, 0
            while quiet < 2:
                if time.monotonic() > deadline:
                    raise TimeoutError("the pipeline did not drain")
                waiting = sum(
                    [
                        int(await conn.fetchval(waiting_sql(schema)))
                        for schema in ("workflow", "ledger_sync", "notifier")
                    ]
                )
                waiting += sum([await lag.remaining(group) for group in groups])
                quiet = quiet + 1 if waiting == 0 else 0
                await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _suppression(
    lender: lending.Lender,
    dsn: str,
    loans: int,
    samples: int,
    pipeline_rate: float,
    raw: bool = False,
) -> dict[str, Any]:
    """Loans whose commands wait (their borrowers are asleep); then each is repaid."""
    night = zone_at_night()
    ids = [f"P-{loans + i:07d}" for i in range(samples)]
    await lender.publish_many(
        lending.overdue(
            loan,
            Decimal("900.00"),
            tz=night,
            jurisdiction="UK",
            currency="GBP",
            borrower_id=f"B-{loans + i:07d}",
        )
        for i, loan in enumerate(ids)
    )
    await _wait(
        dsn,
        "SELECT count(*) FROM notifier.dispatches WHERE status = 'deferred' "
        f"AND loan_id >= 'P-{loans:07d}'",
        samples,
    )
    # BENCH_SUPPRESSION_BACKGROUND: a fixed rate instead (loans/s), so that runs of two
    # versions compare under the same load when the pipeline's own rate moves with the
    # machine (`--only suppression`; `make bench` leaves it unset).
    rate = float(os.environ.get("BENCH_SUPPRESSION_BACKGROUND", "0")) or pipeline_rate * 0.2
    # The bench's own heap after 100,000 loans: a full collection of it stalled this event
    # loop for tens of milliseconds between taking a sample's `produced` time and sending
    # it, which counted as the services' (as the services do, bootstrap freezes theirs).
    gc.collect()
    gc.freeze()
    background = _Background(lender, rate)
    background.start()
    cpu_started = busy_cpu_s()
    committed, observed, acked, started, sent = [], [], [], [], []
    repayments = [
        lending.repayment(loan, Decimal("900.00"), Decimal("0"), currency="GBP") for loan in ids
    ]
    conn = await asyncpg.connect(dsn)
    try:
        # The cancellation happens when its transaction commits: PostgreSQL records that
        # moment when track_commit_timestamp is on (scripts/stack.py turns it on; same
        # host, same clock as `produced`). The decision's own timestamp would not do: it
        # is taken when its transaction starts, before the work (kept as a hop below).
        stamped = await conn.fetchval("SHOW track_commit_timestamp") == "on"
        if stamped:
            # Open loop: one repayment every BENCH_SUPPRESSION_INTERVAL_MS against the
            # clock, whatever the services do, and nothing asked of the database until the
            # last is sent. Until 2026-12-05 each was sent once the previous one was seen
            # cancelled, seen by a query every 2 ms: the samples' own aftermath and that
            # polling then loaded the two cores beyond the background the figure is
            # specified under, and a slow sample delayed the next instead of meeting the
            # load (bench/HISTORY.md, "suppression, sampled open loop").
            loop = asyncio.get_running_loop()
            due = loop.time()
            for repayment in repayments:
                produced = datetime.now(UTC)
                sent.append(produced.timestamp())
                await lender.publish(repayment)
                acked.append((datetime.now(UTC) - produced).total_seconds() * 1000)
                due += SUPPRESSION_INTERVAL_S
                await asyncio.sleep(max(due - loop.time(), 0))
            while await conn.fetchval(
                "SELECT count(DISTINCT loan_id) FROM notifier.contact_decisions "
                "WHERE loan_id = ANY($1::text[]) AND decision = 'cancelled'",
                ids,
            ) < len(ids):
                await asyncio.sleep(0.1)
            rows = {
                row["loan_id"]: row
                for row in await conn.fetch(
                    "SELECT DISTINCT ON (loan_id) loan_id, pg_xact_commit_timestamp(xmin) AS done,"
                    " at FROM notifier.contact_decisions WHERE loan_id = ANY($1::text[]) "
                    "AND decision = 'cancelled' ORDER BY loan_id, id",
                    ids,
                )
            }
            for loan, at in zip(ids, sent, strict=True):
                produced = datetime.fromtimestamp(at, UTC)
                committed.append((rows[loan]["done"] - produced).total_seconds() * 1000)
                started.append((rows[loan]["at"] - produced).total_seconds() * 1000)
        else:
            for loan, repayment in zip(ids, repayments, strict=True):
                produced = datetime.now(UTC)
                sent.append(produced.timestamp())
                await lender.publish(repayment)
                acked.append((datetime.now(UTC) - produced).total_seconds() * 1000)
                # No commit times: until the cancellation is visible to another
                # connection, with a 2 ms poll (an upper bound), one sample at a time.
                while (
                    row := await conn.fetchrow(
                        "SELECT at FROM notifier.contact_decisions "
                        "WHERE loan_id = $1 AND decision = 'cancelled' ORDER BY id LIMIT 1",
                        loan,
                    )
                ) is None:
                    await asyncio.sleep(0.002)
                observed.append((datetime.now(UTC) - produced).total_seconds() * 1000)
                started.append((row["at"] - produced).total_seconds() * 1000)
    finally:
        cpu_us = per_unit_us(cpu_started, busy_cpu_s(), max(background.sent, 1))
        background_rate = await background.stop()
        await conn.close()
        gc.unfreeze()
    figures = committed if stamped else observed
    return {
        "samples": len(figures),
        "background_loans_per_s": round(background_rate, 1),
        # The machine's CPU over the phase per background loan (the samples' own work
        # included): what a change to how the services wait for records costs.
        "machine_cpu_us_per_background_loan": cpu_us,
        "measured_to": "commit" if stamped else "observed",
        "sampled": f"open loop, one every {SUPPRESSION_INTERVAL_S * 1000:g} ms"
        if stamped
        else "one at a time",
        **_percentiles(figures, ""),
        # Where each sample's time went: the lender's producer acknowledged (linger and
        # the broker's append), the notifier's cancelling transaction started (its
        # decision's timestamp: the record fetched, decoded and waiting for the loop), and
        # that transaction's own time to its commit.
        "hops": {
            "acked": _percentiles(acked, ""),
            "to_tx_start": _percentiles(started, ""),
            "in_tx": _percentiles([d - s for d, s in zip(figures, started, strict=True)], ""),
        },
        # Each sample's (produced as a Unix time, then in ms: acked, tx start, figure), in
        # order: for `--only suppression`.
        **({"raw": list(zip(sent, acked, started, figures, strict=True))} if raw else {}),
    }


def _percentiles(values: list[float], prefix: str) -> dict[str, float]:
    ordered = sorted(values)
    return {
        f"{prefix}p50": round(statistics.median(ordered), 1),
        f"{prefix}p90": round(ordered[max(0, int(len(ordered) * 0.9) - 1)], 1),
        f"{prefix}p99": round(ordered[max(0, int(len(ordered) * 0.99) - 1)], 1),
        f"{prefix}max": round(ordered[-1], 1),
    }


class _Background:
    """Overdue events for loans without a case yet, at ``rate`` per second, paced against
    the clock (not a sleep after each send: waiting for each acknowledgement as well made
    the rate about half the one asked for), and the rate achieved, measured."""

    def __init__(self, lender: lending.Lender, rate: float) -> None:
        self._lender = lender
        self._interval = 1 / max(rate, 1)
        self._sent = 0
        self._started = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._started = time.perf_counter()
        self._task = asyncio.create_task(self._run())

    @property
    def sent(self) -> int:
        return self._sent

    async def stop(self) -> float:
        """Stop; returns the loans per second actually produced."""
        elapsed = time.perf_counter() - self._started
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self._sent / max(elapsed, 1e-9)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            # Handed to the producer without waiting for the broker: acknowledgements
            # arrive in the background, as from a lender's own feed.
            loan = f"G-{self._sent:07d}"
            await self._lender.send(lending.overdue(loan, Decimal("500.00"), borrower_id=loan))
            self._sent += 1
            due += self._interval
            await asyncio.sleep(max(due - loop.time(), 0))


# --- the run ---------------------------------------------------------------------------------


def chart(scale: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    # One point per size (the mean where a size was measured twice), the runs beside it.
    sizes = sorted({s["existing_cases"] for s in scale})
    ax.plot(
        sizes,
        [
            statistics.fmean(s["events_per_s"] for s in scale if s["existing_cases"] == size)
            for size in sizes
        ],
        marker="o",
    )
    ax.scatter(
        [s["existing_cases"] for s in scale],
        [s["events_per_s"] for s in scale],
        marker="x",
        color="grey",
        label="each run",
    )
    ax.legend(loc="lower left")
    ax.set_xscale("log")
    ax.set_xlabel("existing cases")
    ax.set_ylabel("overdue events applied per second")
    ax.set_title("Workflow ingest as the portfolio grows")
    ax.set_ylim(bottom=0)  # a flat curve must look flat
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _stack() -> tuple[str, str]:
    """The database server's admin URL and the broker's address, the local stack started if
    the environment names none."""
    local_stack.ensure_up()
    admin_url = os.environ.get("DATABASE_URL", local_stack.DATABASE_URL)
    return admin_url, os.environ.get("KAFKA_BOOTSTRAP", local_stack.KAFKA_BOOTSTRAP)


def _write(name: str, result: dict[str, Any]) -> Path:
    """``result`` as ``bench/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


async def run(sizes: Sizes) -> dict[str, Any]:
    admin_url, bootstrap = _stack()
    started = time.perf_counter()
    print("baseline: kafka consume-produce loop ...", flush=True)
    kafka = await baseline_kafka(bootstrap, sizes.baseline_msgs)
    print("baseline: postgres batched inserts ...", flush=True)
    pg = await baseline_pg(admin_url, sizes.pg_rows)
    scale = []
    for existing in scale_order(sizes.scale):
        events = sizes.ingest_events if existing == max(sizes.scale) else sizes.scale_events
        print(f"ingest: {events} events over {existing} existing cases ...", flush=True)
        scale.append(await ingest(admin_url, bootstrap, existing, events, sizes.ingest_replicas))
    ratio = cost_ratio(scale)
    headline = max(scale, key=lambda s: s["existing_cases"])
    print(f"pipeline: {sizes.pipeline_loans} loans ...", flush=True)
    flow, suppression, rss = await pipeline(
        admin_url,
        bootstrap,
        sizes.pipeline_loans,
        sizes.suppression_samples,
        sizes.pipeline_replicas,
    )
    flow["plumbing"] = plumbing(flow, kafka, pg)
    peer = await run_peer(admin_url, bootstrap, sizes)
    result = {
        "measured_at": datetime.now(UTC).isoformat(),
        "machine": {"cores": os.cpu_count()},
        "baseline": {
            "kafka_msgs_per_s": round(kafka.per_s, 1),
            "pg_rows_per_s": round(pg.per_s, 1),
            "kafka_machine_cpu_us_per_msg": kafka.machine_cpu_us,
            "pg_machine_cpu_us_per_row": pg.machine_cpu_us,
        },
        "ingest": {
            "events_per_s": headline["events_per_s"],
            "events": headline["events"],
            "existing_cases": headline["existing_cases"],
            "share_of_kafka_baseline": round(headline["events_per_s"] / kafka.per_s, 3),
        },
        "pipeline": flow,
        "suppression_ms": suppression,
        "scale": {
            "runs": scale,
            **ratio,
            "peak_rss_mb": {**rss, "workflow_ingest": max(s["workflow_rss_mb"] for s in scale)},
        },
        "peer": {"dbos": peer},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    result["floors"] = floors(result)
    return result


async def run_peer(admin_url: str, bootstrap: str, sizes: Sizes) -> dict[str, Any]:
    from bench.peer import dbos_peer  # it imports this module's helpers

    print(
        f"peer: DBOS Transact, {sizes.peer_loans} loans, {sizes.peer_processes} processes ...",
        flush=True,
    )
    try:
        return await dbos_peer(
            admin_url,
            bootstrap,
            sizes.peer_loans,
            sizes.peer_repaid,
            processes=sizes.peer_processes,
        )
    except Exception as exc:
        # Last in the run: its failure is reported (and fails its floors) rather than
        # losing the twenty minutes of figures before it.
        print(f"peer: failed: {exc!r}", flush=True)
        return {"error": repr(exc)}


def scale_order(sizes: tuple[int, ...]) -> list[int]:
    """Smallest to largest, then the smallest once more.

    The machine's speed drifts over minutes here (the same 10,000-case run took 69 us per
    event in one bench and 86-104 in others, while 1,000,000 cases stayed within 87-99), and
    with one run per size a drift lands on one side of the cost ratio: it failed the floor
    in runs L and O and held in M and N with the same code. Measuring the smallest size
    before and after the largest brackets the largest, so a drift in either direction
    shows on both sides of the ratio instead of on one."""
    ordered = sorted(sizes)
    return ordered + ordered[:1] if len(ordered) > 1 else ordered


def cost_ratio(scale: list[dict[str, Any]]) -> dict[str, Any]:
    """The cost per event at the largest size over the cost at the smallest, the smallest
    being the mean of its bracketing runs (see :func:`scale_order`); the same in the
    machine's CPU per event beside it, as a diagnostic."""
    smallest = min(s["existing_cases"] for s in scale)
    largest = max(scale, key=lambda s: s["existing_cases"])
    small = [s for s in scale if s["existing_cases"] == smallest]

    def ratio(key: str) -> float | None:
        values = [s[key] for s in small]
        if not largest[key] or not all(values):
            return None
        return round(float(largest[key]) / statistics.fmean(values), 3)

    return {
        "cost_ratio_largest_vs_smallest": ratio("us_per_event"),
        "machine_cpu_cost_ratio_largest_vs_smallest": ratio("machine_cpu_us_per_event"),
        "smallest_size_us_per_event": [s["us_per_event"] for s in small],
    }


def floors(r: dict[str, Any]) -> dict[str, bool]:
    """Every floor the issues set, checked on one run. Issue 25 raised two earlier ones
    (ingest 0.35 -> 0.5 of the Kafka loop, suppression p99 100 -> 30 ms): the tighter one
    stands for both."""
    pipe = r["pipeline"]
    return {
        "ingest >= 10000/s": r["ingest"]["events_per_s"] >= 10_000,
        "ingest >= 0.5 x kafka baseline": r["ingest"]["share_of_kafka_baseline"] >= 0.5,
        "pipeline >= 2000 loans/s": pipe["loans_per_s"] >= 2_000,
        "pipeline rows written per loan <= 20": pipe["rows_written_per_loan"] <= 20,
        "pipeline machine CPU per loan <= 2 x plumbing alone": (
            pipe["machine_cpu_us_per_loan"] <= 2 * pipe["plumbing"]["plumbing_cpu_us_per_loan"]
        ),
        "suppression p99 <= 30 ms": r["suppression_ms"]["p99"] <= 30,
        "cost at largest <= 1.25 x smallest": r["scale"]["cost_ratio_largest_vs_smallest"] <= 1.25,
        "peak RSS <= 300 MB": all(v <= 300 for v in r["scale"]["peak_rss_mb"].values()),
        **peer_floors(r),
    }


def peer_floors(r: dict[str, Any]) -> dict[str, bool]:
    if "peer" not in r:
        return {}
    dbos = r["peer"]["dbos"]
    if "error" in dbos:
        return {"DBOS peer ran": False}
    return {
        "pipeline >= 2 x DBOS peer": r["pipeline"]["loans_per_s"] >= 2 * dbos["loans_per_s"],
        "DBOS peer: each contact mailed once, each repaid one cancelled": (
            dbos["mailed_once"] == dbos["loans"]
            and dbos["mailed_twice_or_more"] == 0
            and dbos["repaid_mailed"] == 0
            and dbos["repaid_cancelled"] == dbos["repaid"]
        ),
    }


def peer_rows(r: dict[str, Any]) -> list[tuple[str, Any]]:
    if "peer" not in r:
        return []
    d = r["peer"]["dbos"]
    if "error" in d:
        return [("peer.dbos", f"failed: {d['error']}")]
    return [
        ("peer.dbos.loans_per_s", d["loans_per_s"]),
        (
            "peer.dbos: machine CPU us per loan (its processes; the SMTP sink); rows per loan",
            f"{d['machine_cpu_us_per_loan']} ({d['peer_process_cpu_us_per_loan']}; "
            f"{d['smtp_sink_cpu_us_per_loan']}); {d['rows_written_per_loan']}",
        ),
        (
            "peer.dbos: mailed once / loans; repaid: mailed, cancelled / repaid",
            f"{d['mailed_once']} / {d['loans']}; {d['repaid_mailed']}, "
            f"{d['repaid_cancelled']} / {d['repaid']}",
        ),
    ]


def table(r: dict[str, Any]) -> str:
    rows = [
        ("baseline.kafka_msgs_per_s", r["baseline"]["kafka_msgs_per_s"]),
        ("baseline.pg_rows_per_s", r["baseline"]["pg_rows_per_s"]),
        ("ingest.events_per_s", r["ingest"]["events_per_s"]),
        ("ingest / kafka baseline", r["ingest"]["share_of_kafka_baseline"]),
        ("pipeline.loans_per_s", r["pipeline"]["loans_per_s"]),
        (
            "pipeline: machine CPU us per loan; records consumed, rows written per loan",
            f"{r['pipeline']['machine_cpu_us_per_loan']}; "
            f"{r['pipeline']['messages_consumed_per_loan']}, "
            f"{r['pipeline']['rows_written_per_loan']}",
        ),
        (
            "pipeline: CPU us per loan by part",
            ", ".join(
                f"{part} {us}"
                for part, us in r["pipeline"].get("cpu_us_per_loan_by_part", {}).items()
            ),
        ),
        (
            "pipeline: plumbing alone at the baselines' CPU per unit (us per loan; ceiling)",
            f"{r['pipeline']['plumbing'].get('plumbing_cpu_us_per_loan')}; "
            f"{r['pipeline']['plumbing'].get('ceiling_loans_per_s')} loans/s",
        ),
        (
            f"suppression_ms p50 / p99 / max (to {r['suppression_ms']['measured_to']})",
            f"{r['suppression_ms']['p50']} / {r['suppression_ms']['p99']} / "
            f"{r['suppression_ms']['max']}",
        ),
        ("suppression_ms sampled", r["suppression_ms"].get("sampled", "one at a time")),
        *(
            (
                f"scale: {s['existing_cases']} cases",
                f"{s['events_per_s']} events/s "
                f"({s['us_per_event']} us/event; machine CPU {s['machine_cpu_us_per_event']} "
                f"us/event; WAL {s['wal_bytes_per_event']} B and {s['wal_fpi_per_event']} "
                f"full pages per event, {s['checkpoints']} checkpoints)",
            )
            for s in r["scale"]["runs"]
        ),
        (
            "cost ratio largest / smallest (mean of its runs: "
            f"{r['scale']['smallest_size_us_per_event']} us/event)",
            r["scale"]["cost_ratio_largest_vs_smallest"],
        ),
        ("  in machine CPU per event", r["scale"]["machine_cpu_cost_ratio_largest_vs_smallest"]),
        ("peak RSS MB", r["scale"]["peak_rss_mb"]),
        *peer_rows(r),
    ]
    lines = [f"| {k} | {v} |" for k, v in rows]
    lines += [f"| floor: {k} | {'met' if ok else 'NOT met'} |" for k, ok in r["floors"].items()]
    return "| figure | value |\n|---|---|\n" + "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--only",
        choices=["peer", "suppression"],
        help="run one phase alone (sized by its BENCH_* variables), into results/<phase>.json",
    )
    only = parser.parse_args().only
    if only == "peer":
        return only_peer()
    if only == "suppression":
        return only_suppression()
    result = asyncio.run(run(Sizes()))
    path = _write("latest", result)
    chart(result["scale"]["runs"], RESULTS / "scale.png")
    print(table(result))
    print(f"\nwrote {path} and {RESULTS / 'scale.png'} in {result['elapsed_s']}s")
    return 0


def only_peer() -> int:
    admin_url, bootstrap = _stack()
    result = {
        "measured_at": datetime.now(UTC).isoformat(),
        "peer": {"dbos": asyncio.run(run_peer(admin_url, bootstrap, Sizes()))},
    }
    path = _write("peer", result)
    print("| figure | value |\n|---|---|")
    print("\n".join(f"| {k} | {v} |" for k, v in peer_rows(result)))
    print(f"\nwrote {path}")
    return 0


def only_suppression() -> int:
    """The pipeline and the suppression figure alone (``BENCH_PIPELINE_LOANS``,
    ``BENCH_SUPPRESSION_SAMPLES``; e.g. 20,000 and 200 for a run of a few minutes), into
    results/suppression.json with each sample's hops."""
    admin_url, bootstrap = _stack()
    sizes = Sizes()
    flow, suppression, _ = asyncio.run(
        pipeline(
            admin_url,
            bootstrap,
            sizes.pipeline_loans,
            sizes.suppression_samples,
            sizes.pipeline_replicas,
            raw=True,
        )
    )
    result = {
        "measured_at": datetime.now(UTC).isoformat(),
        "pipeline": flow,
        "suppression_ms": suppression,
    }
    path = _write("suppression", result)
    print(
        f"pipeline: {flow['loans']} loans, {flow['loans_per_s']} loans/s, "
        f"{flow['machine_cpu_us_per_loan']} us of machine CPU per loan"
    )
    print(f"suppression_ms (background {suppression['background_loans_per_s']} loans/s):")
    figures = {"figure": {k: v for k, v in suppression.items() if k[0] == "p" or k == "max"}}
    for hop, p in {**figures, **suppression["hops"]}.items():
        print(f"  {hop:<12} " + " / ".join(f"{k} {v}" for k, v in p.items()))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
