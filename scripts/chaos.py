"""``make chaos``: drive N loans through the real stack while killing things; then prove
that nothing was lost, nothing doubled, nobody contacted unlawfully.

    python -m scripts.chaos [--loans 20000] [--seed 7] [--short]

Two replicas of every service run in one consumer group. The workload: disbursements, a
risk signal for a tenth of the loans while still current (early warning), overdue reports
(some late and out of order), holds, resumes and promises through the REST API, full and
partial repayments, bounced repayments, duplicates and malformed records. From 20% of the
workload on, each replica is SIGKILLed and restarted (at least once by a fault hook:
between its database commit and its offset commit, or for a notifier first between
handing contacts to a channel and recording it), every replica of every service is
SIGKILLed at once, the broker and PostgreSQL are each restarted once, and a third replica
joins and leaves to force rebalances. At the end the run checks, prints and
writes ``reports/chaos-latest.json``; it exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiosmtpd.controller import Controller

from collections_kit import contract as c
from collections_kit.auth import dev_headers
from collections_kit.consumer import claims_sql
from collections_kit.db import asyncpg_dsn, make_engine
from collections_kit.envelope import MalformedMessageError, decode
from collections_kit.outbox import waiting_sql
from collections_kit.topics import Topic
from scripts import lending
from scripts import stack as local_stack
from scripts.infra import create_database, create_topics, delete_topics, drop_database, read_to_end
from scripts.services import ROOT, SERVICES, Fleet
from tests.provider_double import ProviderDouble
from tests.support import mismatched_replays

if TYPE_CHECKING:
    from workflow.domain.placement import PlacementPolicy

# The services trust the development signing key in dev: chaos calls them as a client.
CHAOS_AUTH = dev_headers(["cases:write", "contacts:write"], subject="chaos", expires_in=24 * 3600)

ZONES = (
    ("CN", "Asia/Shanghai", "CNY"),
    ("US", "America/New_York", "USD"),
    ("US", "America/Los_Angeles", "USD"),
    ("UK", "Europe/London", "GBP"),
    ("US", "Pacific/Honolulu", "USD"),
)
# Contact hours per jurisdiction, as in the notifier's policy (checked independently here).
# They bind the channels that reach a person when sent; a letter is printed and posted.
WINDOWS = {"CN": (8, 22), "US": (8, 21), "UK": (8, 21)}
WINDOW_CHANNELS = {"sms", "voice", "email"}
CONSUMES: dict[str, tuple[Topic, ...]] = {}
# Cases whose differences from their replay the report shows, and whose stored rows and
# journals it keeps in a file beside it.
REPORTED_MISMATCHES = 10
DUMPED_MISMATCHES = 100
# Per service, the message types it acts on. The others on its topics (the notifier's case
# openings, say) are skipped without an inbox claim, so their absence there is no loss.
HANDLES: dict[str, set[type[c.Message]]] = {}


# One agency tier for the cases that reach formal notice (about half): placed, recalled on
# repayment, hold or a stage change, resumed, commission taken back on a bounce. The replay
# check then compares every case's placements and commission with their replay too.
PLACEMENT_POLICY = """version = "placements/chaos"

[[tiers]]
tier = "primary"
stages = ["formal_notice"]
min_days_past_due = 30
min_balance = "100.00"
period_days = 90

[[tiers.agencies]]
agency = "agency-north"
share = 60
commission_rate = "0.20"

[[tiers.agencies]]
agency = "agency-south"
share = 40
commission_rate = "0.22"
"""
PLACEMENT_POLICY_FILE = ROOT / ".cache" / "chaos" / "placements.toml"


@dataclass
class Config:
    loans: int = 20_000
    seed: int = 7
    # The workflow places cases with agencies (PLACEMENT_POLICY): --no-placements for none.
    placements: bool = True
    partitions: int = 6
    replicas: int = 2
    kills_per_replica: int = 3
    restart_infrastructure: bool = True
    # A contact this long after the repayment was produced counts as a violation; shorter
    # ones are the documented race (the repayment published within the notifier's gate
    # lag before a pass, or during its hand-over; see notifier.app.repayment_gate).
    race_window_s: float = 5.0
    settle_timeout_s: float = 900.0
    # How long a record past its group's committed offset at the check may take to be
    # handled before it counts as never handled.
    in_flight_timeout_s: float = 120.0
    report_dir: Path = ROOT / "reports"


@dataclass
class Produced:
    valid: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    malformed: set[tuple[str, int, int]] = field(default_factory=set)
    duplicates: int = 0
    total: int = 0
    repaid_at: dict[str, float] = field(default_factory=dict)
    reversed_loans: set[str] = field(default_factory=set)
    rest_calls: Counter[str] = field(default_factory=Counter)


@dataclass
class Faults:
    kills: Counter[str] = field(default_factory=Counter)
    hook_crashes: Counter[str] = field(default_factory=Counter)
    broker_restarts: int = 0
    # Times every replica of every service was SIGKILLed at once.
    kill_all: int = 0
    postgres_restarts: int = 0
    rebalances: int = 0
    log: list[str] = field(default_factory=list)


class MailSink:
    def __init__(self) -> None:
        self.by_message_id: Counter[str] = Counter()

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        for line in envelope.content.decode(errors="replace").splitlines():
            if line.lower().startswith("message-id:"):
                self.by_message_id[line.split(":", 1)[1].strip()] += 1
                break
        return "250 OK"


# --- workload -------------------------------------------------------------------------------


def workload(cfg: Config, rng: random.Random) -> list[list[tuple[str, Any]]]:
    """Rounds of (kind, item); one loan's items are in order across rounds."""
    rounds: list[list[tuple[str, Any]]] = [[] for _ in range(7)]
    t0 = datetime.now(UTC) - timedelta(hours=1)
    for i in range(cfg.loans):
        loan = f"C-{i:06d}"
        jurisdiction, zone, currency = ZONES[i % len(ZONES)]
        principal = Decimal(rng.randrange(50_000, 2_000_000)) / 100
        seq = 1
        rounds[0].append(("event", lending.disbursement(loan, principal, currency=currency)))
        if rng.random() < 0.1:
            # Early warning: a risk signal while the loan is current opens a pre-delinquency
            # case (reminders on a timer), which the overdue report then makes ordinary.
            rounds[0].append(
                (
                    "event",
                    lending.risk_signal(
                        loan,
                        principal,
                        signal_id=f"S-{i:06d}",
                        currency=currency,
                        tz=zone,
                        jurisdiction=jurisdiction,
                        observed_at=t0 - timedelta(minutes=10),
                        borrower_id=f"D-{i:06d}",
                    ),
                )
            )
        rounds[1].append(
            (
                "event",
                lending.overdue(
                    loan,
                    principal,
                    dpd=5,
                    currency=currency,
                    tz=zone,
                    jurisdiction=jurisdiction,
                    as_of=t0,
                    borrower_id=f"D-{i:06d}",
                ),
            )
        )
        if rng.random() < 0.5:
            rounds[2].append(
                (
                    "event",
                    lending.overdue(
                        loan,
                        principal,
                        dpd=35,
                        currency=currency,
                        tz=zone,
                        jurisdiction=jurisdiction,
                        as_of=t0 + timedelta(minutes=30),
                        borrower_id=f"D-{i:06d}",
                    ),
                )
            )
            if rng.random() < 0.2:  # the older report arrives after the newer one
                rounds[3].append(
                    (
                        "event",
                        lending.overdue(
                            loan,
                            principal,
                            dpd=4,
                            currency=currency,
                            tz=zone,
                            jurisdiction=jurisdiction,
                            as_of=t0 - timedelta(minutes=5),
                            borrower_id=f"D-{i:06d}",
                        ),
                    )
                )
        roll = rng.random()
        if roll < 0.03:
            rounds[3].append(("hold", loan))
            if rng.random() < 0.5:
                rounds[5].append(("resume", loan))
        elif roll < 0.05:
            rounds[3].append(("promise", (loan, principal)))
        roll = rng.random()
        if roll < 0.2:
            rid = f"RP-{i:06d}"
            rounds[4].append(("repaid", (loan, rid, principal, currency)))
            seq += 1
            rounds[5].append(
                (
                    "event",
                    lending.booked_repayment(
                        loan, principal, sequence=seq, repayment_id=rid, currency=currency
                    ),
                )
            )
            if rng.random() < 0.15:
                rounds[6].append(
                    (
                        "event",
                        c.RepaymentReversed(
                            repayment_id=rid,
                            loan_id=loan,
                            currency=currency,
                            amount=principal,
                            outstanding_balance_after=principal,
                            reversed_at=datetime.now(UTC),
                            reason="bounced",
                        ),
                    )
                )
        elif roll < 0.35:
            part = (principal * Decimal("0.3")).quantize(Decimal("0.01"))
            rid = f"RQ-{i:06d}"
            rounds[4].append(
                (
                    "event",
                    lending.repayment(
                        loan, part, principal - part, repayment_id=rid, currency=currency
                    ),
                )
            )
            seq += 1
            rounds[5].append(
                (
                    "event",
                    lending.booked_repayment(
                        loan, part, sequence=seq, repayment_id=rid, currency=currency
                    ),
                )
            )
    return rounds


class Driver:
    def __init__(
        self,
        cfg: Config,
        fleet: Fleet,
        producer: AIOKafkaProducer,
        prefix: str,
        rng: random.Random,
        faults: Faults,
    ) -> None:
        self.cfg, self.fleet, self.producer, self.prefix, self.rng = (
            cfg,
            fleet,
            producer,
            prefix,
            rng,
        )
        self.faults = faults
        self.produced = Produced()

    async def send(self, data: c.Message, event_id: str | None = None) -> None:
        event_id = event_id or str(uuid.uuid4())
        topic, key, value, headers = lending.record_for(data, event_id=event_id)
        await self.producer.send(self.prefix + topic, value=value, key=key, headers=headers)
        self.produced.valid[topic].add(event_id)
        self.produced.total += 1
        if self.rng.random() < 0.06:  # at least 5% duplicated
            await self.producer.send(self.prefix + topic, value=value, key=key, headers=headers)
            self.produced.duplicates += 1
        if self.rng.random() < 0.012:  # at least 1% malformed
            await self.malformed(key)

    async def malformed(self, key: bytes) -> None:
        topic = (
            self.prefix
            + self.rng.choice(
                [Topic.LOANS_OVERDUE, Topic.LOANS_REPAYMENT, Topic.LEDGER_POSTINGS]
            ).value
        )
        value = self.rng.choice([b"{not json", b'{"loan_id": 12}', b"\xff\xfe", b"[]"])
        meta = await (await self.producer.send(topic, value=value, key=key))
        self.produced.malformed.add((topic, meta.partition, meta.offset))

    async def item(self, kind: str, item: Any) -> None:
        if kind == "event":
            await self.send(item)
        elif kind == "repaid":
            loan, rid, amount, currency = item
            await self.send(
                lending.repayment(loan, amount, Decimal("0"), repayment_id=rid, currency=currency)
            )
            self.produced.repaid_at.setdefault(loan, time.time())
        else:
            await self.rest(kind, item)

    async def rest(self, kind: str, item: Any) -> None:
        if kind == "promise":
            loan, amount = item
            due = datetime.now(UTC) + timedelta(days=10)
            path, body = (
                "arrangements",
                {
                    "kind": "promise_to_pay",
                    "schedule": [{"due_at": due.isoformat(), "amount": str(amount)}],
                },
            )
        elif kind == "hold":
            loan, path, body = item, "holds", {"kind": "hardship", "reason": "chaos hardship"}
        else:
            loan, path, body = item, "resume", {"reason": "chaos resume"}
        key = f"chaos-{kind}-{loan}"
        for _ in range(20):  # a replica may be down: the key makes a retry safe
            member = self.fleet[self.rng.choice(self.fleet.replicas_of("workflow"))]
            try:
                async with httpx.AsyncClient(timeout=10, headers=CHAOS_AUTH) as http:
                    r = await http.post(
                        f"{member.base_url}/v1/cases/{loan}/{path}",
                        json=body,
                        headers={"Idempotency-Key": key},
                    )
                self.produced.rest_calls[f"{kind}:{r.status_code}"] += 1
                return
            except httpx.HTTPError:
                # Every workflow replica may have died by the fault hook: bring them back
                # here too, or each REST call of the chunk would wait out its retries.
                supervise(self.fleet, self.faults)
                await asyncio.sleep(0.5)
        self.produced.rest_calls[f"{kind}:unreachable"] += 1


async def register_borrowers(base: str, loans: int) -> None:
    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=30, headers=CHAOS_AUTH) as http:

        async def put(i: int) -> None:
            async with sem:
                r = await http.put(
                    f"{base}/v1/borrowers/D-{i:06d}/contact-details",
                    json={
                        "language": "en",
                        "email": f"d{i}@example.com",
                        "phone": f"+1202555{i % 10000:04d}",
                        "postal_address": f"{i} Chaos Road",
                    },
                )
                r.raise_for_status()

        await asyncio.gather(*(put(i) for i in range(loans)))


# --- faults ------------------------------------------------------------------------------------


@dataclass(order=True)
class Fault:
    at: float
    kind: str
    target: str = ""
    # For a "hook": the fault-injection point (collections_kit.faults) it dies at.
    point: str = "after_db_commit"


def schedule(cfg: Config, fleet: Fleet, rng: random.Random) -> list[Fault]:
    plan: list[Fault] = []
    for key in list(fleet.members):
        # A notifier's first hook dies after handing contacts to the SMTP sink or the
        # provider, before recording it (the fault that used to send them twice); its
        # second, if it has one, between a DB commit and the offset commit. Hooks are one
        # per restart: a second armed before the first fired would replace it.
        hooks = (
            ["after_channel_handover", "after_db_commit"]
            if key.startswith("notifier")
            else ["after_db_commit"]
        )
        for n in range(cfg.kills_per_replica):
            at = rng.uniform(0.2, 0.9)
            plan.append(
                Fault(at, "hook", key, hooks[n]) if n < len(hooks) else Fault(at, "kill", key)
            )
    if cfg.restart_infrastructure:
        plan += [Fault(0.5, "broker"), Fault(0.65, "postgres")]
    # Every replica of every service SIGKILLed in the same moment, mid-stream (a node or a
    # zone lost): what found contacts sent twice after a crash (issue 21, item 1). Nobody
    # is left to take a partition over; all of it must be picked up on restart.
    plan.append(Fault(0.75, "kill_all"))
    plan += [Fault(0.4, "add_replica", "workflow"), Fault(0.8, "remove_replica", "workflow")]
    return sorted(plan)


async def inject(fault: Fault, fleet: Fleet, faults: Faults) -> None:
    faults.log.append(f"{time.strftime('%H:%M:%S')} {fault.kind} {fault.target}")
    if fault.kind == "kill" and fault.target in fleet.members:
        member = fleet[fault.target]
        member.kill()
        faults.kills[fault.target] += 1
        member.start()
    elif fault.kind == "hook" and fault.target in fleet.members:
        # Restart it armed: it dies by itself at the point (between a DB commit and its
        # offset commit; between a hand-over to a channel and its record).
        member = fleet[fault.target]
        member.kill()
        faults.kills[fault.target] += 1
        member.env.update(
            {
                "COLLECTIONS_FAULT_CRASH_AT": fault.point,
                "COLLECTIONS_FAULT_CRASH_AFTER": str(random.randint(2, 6)),
            }
        )
        member.start()
    elif fault.kind == "kill_all":
        members = list(fleet.members.values())
        for member in members:
            member.kill()
        for key in fleet.members:
            faults.kills[key] += 1
        faults.kill_all += 1
        for member in members:
            member.start()
    elif fault.kind == "broker":
        await asyncio.to_thread(local_stack.kafka_down)
        await asyncio.sleep(2)
        await asyncio.to_thread(local_stack.kafka_up)
        faults.broker_restarts += 1
    elif fault.kind == "postgres":
        await asyncio.to_thread(local_stack.postgres_down)
        await asyncio.sleep(2)
        await asyncio.to_thread(local_stack.postgres_up)
        faults.postgres_restarts += 1
    elif fault.kind == "add_replica":
        await asyncio.to_thread(fleet.add_replica, fault.target)
        faults.rebalances += 1
    elif fault.kind == "remove_replica":
        extra = fleet.replicas_of(fault.target)[-1]
        await asyncio.to_thread(fleet.remove_replica, extra)
        faults.rebalances += 1


def supervise(fleet: Fleet, faults: Faults) -> None:
    """Restart replicas the fault hook killed, disarmed."""
    for key, member in fleet.members.items():
        if member.process is not None and member.process.poll() is not None:
            point = member.env.pop("COLLECTIONS_FAULT_CRASH_AT", None)
            if point:
                member.env.pop("COLLECTIONS_FAULT_CRASH_AFTER", None)
                faults.hook_crashes[f"{key}@{point}"] += 1
            faults.log.append(
                f"{time.strftime('%H:%M:%S')} restart {key} (exit {member.process.returncode})"
            )
            member.start()


# --- settling and checks ----------------------------------------------------------------------


async def committed_offsets(bootstrap: str, groups: list[str]) -> dict[str, dict[str, int]]:
    """Per consumer group, its committed offset per "topic/partition"."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        out: dict[str, dict[str, int]] = {}
        for group in groups:
            committed = await admin.list_consumer_group_offsets(group)
            out[group] = {
                f"{tp.topic}/{tp.partition}": meta.offset
                for tp, meta in committed.items()
                if meta.offset >= 0
            }
        return out
    finally:
        await admin.close()


async def lag(bootstrap: str, prefix: str) -> int:
    committed = await committed_offsets(bootstrap, [prefix + name for name in SERVICES])
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        total = 0
        for name in SERVICES:
            topics = [prefix + t.value for t in CONSUMES[name]]
            parts = [
                TopicPartition(t, p)
                for t in topics
                for p in (consumer.partitions_for_topic(t) or range(6))
            ]
            ends = await consumer.end_offsets(parts)
            done = committed[prefix + name]
            for tp in parts:
                total += ends[tp] - done.get(f"{tp.topic}/{tp.partition}", 0)
        return total
    finally:
        await consumer.stop()


async def backlog(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        rows = 0
        for schema in ("workflow", "ledger_sync", "notifier"):
            rows += await conn.fetchval(waiting_sql(schema))
        rows += await conn.fetchval(
            "SELECT count(*) FROM notifier.dispatches WHERE (status = 'pending' "
            "AND due_at <= now()) OR status = 'sending'"
        )
        # A due timer is work not yet done: the workflow's re-checks fire five minutes on,
        # and each starts a new round of messages.
        rows += await conn.fetchval(
            "SELECT count(*) FROM workflow.timers WHERE fired_at IS NULL AND due_at <= now()"
        )
        return int(rows)
    finally:
        await conn.close()


async def settle(
    cfg: Config, bootstrap: str, prefix: str, dsn: str, fleet: Fleet, faults: Faults
) -> float:
    started = time.monotonic()
    quiet_since: float | None = None
    while time.monotonic() - started < cfg.settle_timeout_s:
        supervise(fleet, faults)
        try:
            pending = await lag(bootstrap, prefix) + await backlog(dsn)
        except Exception:  # the stack may still be coming back
            pending = -1
        if pending == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 5:
                return time.monotonic() - started
        else:
            quiet_since = None
        await asyncio.sleep(1.0)
    raise TimeoutError("the system did not settle")


async def read_all(bootstrap: str, topic: str) -> list[tuple[Any, Any]]:
    out: list[tuple[Any, Any]] = []
    for r in await read_to_end(bootstrap, [topic], within=600):
        try:
            out.append((r, decode(r.key, r.value, r.headers)))
        except MalformedMessageError as exc:
            out.append((r, exc))
    return out


def _note_lost(
    examples: list[dict[str, Any]], record: Any, event_id: str, env: Any, keep: int = 20
) -> None:
    if len(examples) >= keep:
        return
    examples.append(
        {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "produced_at": datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(),
            "event_id": event_id,
            "type": type(env.data).__name__ if hasattr(env, "data") else f"malformed: {env}",
        }
    )


async def claims(conn: Any, service: str, group: str) -> set[str]:
    """The event ids ``group`` claimed in ``service``'s inbox."""
    rows = await conn.fetch(claims_sql(SERVICES[service][0]), group)
    return {r["event_id"] for r in rows}


@dataclass
class Accounted:
    """A consumer group's records, as the check sees them."""

    lost: list[tuple[Any, str, Any]] = field(default_factory=list)
    # Runs of lost offsets per "topic/partition", (first, last): a contiguous run points at
    # the log or the offsets, scattered ones at handling.
    lost_runs: dict[str, list[list[int]]] = field(default_factory=dict)
    in_flight: list[tuple[Any, Any]] = field(default_factory=list)


def account(
    records: list[tuple[Any, Any]],
    committed: dict[str, int],
    seen: set[str],
    handles: set[type[c.Message]],
) -> Accounted:
    """Which of a group's ``records`` (with their decoded envelopes) are lost.

    ``committed`` (offsets per "topic/partition") must have been read before ``seen`` (the
    group's inbox). A record the group acts on is lost when it lies below the committed
    offset and has no claim; one at or past it is in flight. The records of types the
    group skips have no claim to look for; a malformed one is claimed by its origin."""
    out = Accounted()
    for record, env in records:
        if isinstance(env, MalformedMessageError):
            event_id = f"{record.topic}/{record.partition}/{record.offset}"
        elif type(env.data) in handles:
            event_id = env.id
        else:
            continue
        where = f"{record.topic}/{record.partition}"
        if record.offset >= committed.get(where, 0):
            out.in_flight.append((record, env))
            continue
        if event_id in seen:
            continue
        out.lost.append((record, event_id, env))
        runs = out.lost_runs.setdefault(where, [])
        if runs and runs[-1][1] == record.offset - 1:
            runs[-1][1] = record.offset
        else:
            runs.append([record.offset, record.offset])
    return out


async def check(
    cfg: Config,
    produced: Produced,
    bootstrap: str,
    prefix: str,
    dsn: str,
    database_url: str,
    mail: MailSink,
    provider: ProviderDouble,
) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        lost: dict[str, int] = {}
        # Which records, so a loss can be investigated once the database is gone: the
        # first few per service, and every lost run of offsets per partition.
        lost_examples: dict[str, list[dict[str, Any]]] = {}
        lost_runs: dict[str, dict[str, list[list[int]]]] = {}
        in_flight: dict[str, list[tuple[Any, Any]]] = {}

        def note(name: str, accounted: Accounted) -> None:
            lost[name] += len(accounted.lost)
            in_flight[name] = accounted.in_flight
            for record, event_id, env in accounted.lost:
                _note_lost(lost_examples.setdefault(name, []), record, event_id, env)
            for where, runs in accounted.lost_runs.items():
                lost_runs.setdefault(name, {}).setdefault(where, []).extend(runs)

        # The services run on while this checks (their timers fire, their replies flow):
        # what a group has committed is read first, its inbox next. A record below the
        # committed offset was handled before that commit (the inbox commits first), so
        # its claim must be in the inbox read after; one at or past it may be in flight.
        committed = await committed_offsets(bootstrap, [prefix + name for name in CONSUMES])
        for name, topics in CONSUMES.items():
            group = prefix + name
            seen = await claims(conn, name, group)
            records = [
                rec for topic in topics for rec in await read_all(bootstrap, prefix + topic.value)
            ]
            lost[name] = 0
            note(name, account(records, committed[group], seen, HANDLES[name]))
        in_flight_at_check = {name: len(records) for name, records in in_flight.items()}
        # What was in flight must be handled soon after, or it is lost too: accounted again
        # until none is left (then committed offsets, then inboxes, as above).
        deadline = time.monotonic() + cfg.in_flight_timeout_s
        while any(in_flight.values()) and time.monotonic() < deadline:
            await asyncio.sleep(2.0)
            committed = await committed_offsets(bootstrap, [prefix + name for name in CONSUMES])
            for name, records in in_flight.items():
                if not records:
                    continue
                group = prefix + name
                seen = await claims(conn, name, group)
                note(name, account(records, committed[group], seen, HANDLES[name]))
        unhandled = {name: len(records) for name, records in in_flight.items()}
        sent = await conn.fetch(
            # A contact is made when its attempt is handed over (attempted_at), not when the
            # send is recorded: an attempt found at the provider after a crash is recorded a
            # lease later, and a pass records its sends when its slowest hand-over ends.
            "SELECT d.command_id, d.loan_id, d.channel, "
            "COALESCE(a.attempted_at, d.at) AS at, p.borrower_time_zone, "
            "p.jurisdiction, p.borrower_id FROM notifier.contact_decisions d "
            "JOIN notifier.dispatches p USING (command_id) "
            "LEFT JOIN notifier.contact_attempts a USING (command_id) "
            "WHERE d.decision = 'sent'"
        )
        sent_per_command = Counter(r["command_id"] for r in sent)
        # Counted where the person would notice: the SMTP sink by Message-ID, the provider
        # by idempotency key (sent twice, or posted again after it had sent: a provider
        # that forgot the key would have sent again).
        sent_twice = {
            "recorded": sum(1 for n in sent_per_command.values() if n > 1),
            "smtp_by_message_id": sum(1 for n in mail.by_message_id.values() if n > 1),
            "provider_by_idempotency_key": len(
                set(provider.doubled()) | set(provider.posted_again())
            ),
        }
        doubled = sum(sent_twice.values())
        unsettled = {
            r["status"] + (f" ({r['reason']})" if r["reason"] else ""): r["n"]
            for r in await conn.fetch(
                "SELECT status, CASE WHEN status = 'in_doubt' OR reason IN "
                "('found_at_provider') THEN reason ELSE '' END AS reason, "
                "count(*) AS n FROM notifier.dispatches "
                "WHERE status IN ('in_doubt', 'sending') "
                "OR reason = 'found_at_provider' GROUP BY 1, 2"
            )
        }
        late_rows = [
            (r["at"].timestamp() - produced.repaid_at[r["loan_id"]], r)
            for r in sent
            if r["loan_id"] in produced.repaid_at
            and r["loan_id"] not in produced.reversed_loans
            and r["at"].timestamp() > produced.repaid_at[r["loan_id"]]
        ]
        late = [seconds for seconds, _ in late_rows]
        late_examples = [
            f"{r['loan_id']} {r['channel']} +{seconds:.1f}s"
            for seconds, r in sorted(late_rows, key=lambda x: -x[0])[:10]
        ]
        outside: list[str] = []
        for r in sent:
            start, end = WINDOWS[r["jurisdiction"]]
            local = r["at"].astimezone(ZoneInfo(r["borrower_time_zone"]))
            if r["channel"] in WINDOW_CHANNELS and not start <= local.hour < end:
                outside.append(f"{r['loan_id']} {r['channel']} {local.isoformat()}")
        calls_per_day = Counter(
            (r["borrower_id"], r["at"].date()) for r in sent if r["channel"] == "voice"
        )
        over_cap = sum(1 for n in calls_per_day.values() if n > 3)
        over_cap += sum(
            1
            for n in Counter(r["loan_id"] for r in sent if r["jurisdiction"] == "US").values()
            if n > 7
        )
        letters = [
            env
            for _, env in await read_all(bootstrap, prefix + Topic.DLQ.value)
            if not isinstance(env, MalformedMessageError) and isinstance(env.data, c.DeadLetter)
        ]
        found = {
            (d.data.origin_topic, d.data.origin_partition, d.data.origin_offset)
            for d in letters
            if d.data.reason
        }
        in_dlq = len(produced.malformed & found)
    finally:
        await conn.close()
    engine = make_engine(database_url, schema="workflow")
    try:
        mismatched = await mismatched_replays(engine, _placement_policy(cfg))
        total_cases, total_placements, early_warned = await _workflow_counts(engine)
    finally:
        await engine.dispose()
    return {
        "events_lost": lost,
        "events_lost_examples": lost_examples,
        "events_lost_offset_runs": lost_runs,
        # Records past a group's committed offset when checked: handled later, or counted
        # unhandled when still there after in_flight_timeout_s.
        "events_in_flight_at_check": in_flight_at_check,
        "events_unhandled": unhandled,
        "commands_dispatched_twice": doubled,
        "sent_twice": sent_twice,
        # Attempts a crash left unknown: in doubt (SMTP, letters) or found at the provider.
        "unknown_after_crash": unsettled,
        "contacts_after_repayment": {
            "count": len(late),
            "beyond_race_window": sum(1 for s in late if s > cfg.race_window_s),
            "max_seconds": round(max(late), 3) if late else 0.0,
            "race_window_seconds": cfg.race_window_s,
            "examples": late_examples,
        },
        "contacts_outside_window": len(outside),
        "contacts_outside_window_examples": outside[:10],
        "contacts_over_cap": over_cap,
        "malformed_in_dlq": {
            "produced": len(produced.malformed),
            "found": in_dlq,
            "share": round(in_dlq / len(produced.malformed), 4) if produced.malformed else 1.0,
        },
        "replay_equal": {
            "cases": total_cases,
            # Compared with their case: each placement and its commission rows.
            "placements": total_placements,
            # Of them, cases a risk signal opened before the loan fell overdue.
            "pre_delinquency_opened": early_warned,
            "mismatched": len(mismatched),
            "share": round(1 - len(mismatched) / total_cases, 4) if total_cases else 1.0,
            "examples": [m["loan_id"] for m in mismatched[:10]],
            # How each differs: field -> stored and replayed value.
            "differences": {m["loan_id"]: m["fields"] for m in mismatched[:REPORTED_MISMATCHES]},
        },
        # Popped by run(): written to a file of its own before the database is dropped.
        "_mismatched_replays": mismatched[:DUMPED_MISMATCHES],
        "contacts_sent": len(sent),
        "risk_signals_sent": len(produced.valid.get(Topic.LOANS_RISK_SIGNALS.value, ())),
    }


def _placement_policy(cfg: Config) -> PlacementPolicy | None:
    """The placement policy the workflow ran with (None: it placed nothing)."""
    from workflow.adapters.placement_file import load_placement_policy

    return load_placement_policy(PLACEMENT_POLICY_FILE) if cfg.placements else None


async def _workflow_counts(engine: Any) -> tuple[int, int, int]:
    """Cases, placements, and cases a risk signal opened, read in one connection."""
    from sqlalchemy import func, select

    from workflow.adapters.tables import cases, placements, timeline

    queries = (
        select(func.count()).select_from(cases),
        select(func.count()).select_from(placements),
        select(func.count(func.distinct(timeline.c.case_id))).where(
            timeline.c.kind == "pre_delinquency_opened"
        ),
    )
    async with engine.connect() as conn:
        total_cases, total_placements, early_warned = [
            int(await conn.scalar(query) or 0) for query in queries
        ]
    return total_cases, total_placements, early_warned


def verdict(result: dict[str, Any]) -> list[str]:
    failures = []
    if any(result["events_lost"].values()):
        failures.append("events lost")
    if any(result.get("events_unhandled", {}).values()):
        failures.append("events never handled")
    if result["commands_dispatched_twice"]:
        failures.append("commands dispatched twice")
    if result["contacts_after_repayment"]["beyond_race_window"]:
        failures.append("contacts after repayment beyond the race window")
    if result["contacts_outside_window"]:
        failures.append("contacts outside the contact window")
    if result["contacts_over_cap"]:
        failures.append("contacts over a cap")
    if result["malformed_in_dlq"]["share"] < 1.0:
        failures.append("malformed messages missing from the DLQ")
    if result["replay_equal"]["share"] < 1.0:
        failures.append("cases differ from their replay")
    if result["risk_signals_sent"] and not result["replay_equal"]["pre_delinquency_opened"]:
        # The early-warning path must have run, or its replay equality proves nothing.
        failures.append("risk signals opened no pre-delinquency case")
    return failures


# --- the run -------------------------------------------------------------------------------------


async def run(cfg: Config) -> dict[str, Any]:
    from ledger_sync.app.handlers import LedgerSyncHandlers
    from ledger_sync.domain.ledger import CheckPolicy
    from ledger_sync.entrypoints import bootstrap as ledger_boot
    from notifier.app.handlers import NotifierHandlers
    from notifier.domain.policy import DispatchPolicy
    from notifier.entrypoints import bootstrap as notifier_boot
    from workflow.app.handlers import Workflow, WorkflowHandlers
    from workflow.entrypoints import bootstrap as workflow_boot

    CONSUMES.update(
        {
            "workflow": workflow_boot.CONSUMED,
            "ledger-sync": ledger_boot.CONSUMED,
            "notifier": notifier_boot.CONSUMED,
        }
    )
    HANDLES.update(
        {
            # Routes only (no handler is called): the workflow's need no Workflow behind them.
            "workflow": set(WorkflowHandlers(cast(Workflow, None)).routes()),
            "ledger-sync": set(LedgerSyncHandlers(CheckPolicy()).routes()),
            "notifier": set(NotifierHandlers(DispatchPolicy()).routes()),
        }
    )
    rng = random.Random(cfg.seed)
    local_stack.ensure_up()
    admin_url = os.environ.get("DATABASE_URL", local_stack.DATABASE_URL)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", local_stack.KAFKA_BOOTSTRAP)
    run_id = uuid.uuid4().hex[:8]
    db_name, prefix = f"chaos_{run_id}", f"chaos{run_id}."
    database_url = await create_database(admin_url, db_name)
    dsn = asyncpg_dsn(database_url)
    await create_topics(bootstrap, prefix, partitions=cfg.partitions)
    mail = MailSink()
    smtp = Controller(mail, hostname="127.0.0.1", port=2541)
    smtp.start()
    provider = ProviderDouble().start()
    if cfg.placements:
        PLACEMENT_POLICY_FILE.parent.mkdir(parents=True, exist_ok=True)
        PLACEMENT_POLICY_FILE.write_text(PLACEMENT_POLICY)
    fleet = Fleet(
        database_url=database_url,
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        log_dir=ROOT / ".cache" / "chaos" / run_id,
        base_port=18300,
        smtp_port=2541,
        replicas=dict.fromkeys(SERVICES, cfg.replicas),
        extra_env={
            "workflow": (
                {"WORKFLOW_PLACEMENT_POLICY_FILE": str(PLACEMENT_POLICY_FILE)}
                if cfg.placements
                else {}
            ),
            "notifier": {
                "NOTIFIER_PROVIDER_BASE_URL": provider.base_url,
                # A crash's unknown attempts resolve within
                # the run (default 120 s).
                "NOTIFIER_SENDING_LEASE_S": "60",
            },
        },
    )
    faults = Faults()
    started = time.monotonic()
    try:
        await asyncio.to_thread(fleet.start)
        await register_borrowers(fleet["notifier"].base_url, cfg.loans)
        rounds = workload(cfg, rng)
        total_items = sum(len(r) for r in rounds)
        plan = schedule(cfg, fleet, rng)
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5
        )
        await producer.start()
        driver = Driver(cfg, fleet, producer, prefix, rng, faults)
        done = 0
        try:
            for items in rounds:
                for start in range(0, len(items), 500):
                    for kind, item in items[start : start + 500]:
                        await driver.item(kind, item)
                    await producer.flush()
                    done += len(items[start : start + 500])
                    while plan and plan[0].at <= done / total_items:
                        await inject(plan.pop(0), fleet, faults)
                    supervise(fleet, faults)
        finally:
            await producer.stop()
        produced = driver.produced
        produced.reversed_loans = {
            loan
            for items in rounds
            for kind, item in items
            if kind == "event" and isinstance(item, c.RepaymentReversed)
            for loan in [item.loan_id]
        }
        settle_s = await settle(cfg, bootstrap, prefix, dsn, fleet, faults)
        result = await check(cfg, produced, bootstrap, prefix, dsn, database_url, mail, provider)
        report = {
            "run_id": run_id,
            "config": {k: str(v) for k, v in asdict(cfg).items()},
            "produced": {
                "valid_events": sum(len(v) for v in produced.valid.values()),
                "duplicates": produced.duplicates,
                "malformed": len(produced.malformed),
                "full_repayments": len(produced.repaid_at),
                "rest_calls": dict(produced.rest_calls),
            },
            "faults": {
                "kills": dict(faults.kills),
                "hook_crashes": dict(faults.hook_crashes),
                "kill_all": faults.kill_all,
                "broker_restarts": faults.broker_restarts,
                "postgres_restarts": faults.postgres_restarts,
                "rebalances": faults.rebalances,
                "log": faults.log,
            },
            "settle_seconds": round(settle_s, 1),
            "elapsed_seconds": round(time.monotonic() - started, 1),
            "checks": result,
        }
        report["failures"] = verdict(result)
        dumped = result.pop("_mismatched_replays")
        if dumped:
            # Everything needed to investigate once the database is gone: each case's
            # stored row and journal, and how they differ.
            path = cfg.report_dir / f"chaos-{run_id}-replay-mismatches.json"
            cfg.report_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(dumped, indent=2, default=str))
            result["replay_equal"]["dump"] = str(path)
        return report
    finally:
        await asyncio.to_thread(fleet.stop)
        smtp.stop()
        provider.stop()
        await delete_topics(bootstrap, prefix)
        await drop_database(admin_url, db_name)


def write_report(report: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "chaos-latest.json"
    text = json.dumps(report, indent=2, default=str)
    path.write_text(text)
    (directory / f"chaos-{report['run_id']}.json").write_text(text)
    return path


def print_report(report: dict[str, Any]) -> None:
    checks = report["checks"]
    print("\n=== Reliability run ===")
    print(f"produced: {report['produced']}")
    faults = report["faults"]
    print(
        f"faults: kills {sum(faults['kills'].values())} "
        f"(hook crashes {faults['hook_crashes']}; all at once {faults.get('kill_all', 0)}), "
        "broker restarts "
        f"{faults['broker_restarts']}, postgres restarts {faults['postgres_restarts']}, "
        f"rebalances {faults['rebalances']}"
    )
    print(f"elapsed {report['elapsed_seconds']}s (settled in {report['settle_seconds']}s)")
    rows = [
        ("events lost", checks["events_lost"]),
        ("  in flight when checked (then handled / never)", _in_flight(checks)),
        ("commands dispatched twice", checks["commands_dispatched_twice"]),
        (
            "  sent twice (recorded / SMTP by Message-ID / provider by key)",
            " / ".join(
                str(checks["sent_twice"][k])
                for k in ("recorded", "smtp_by_message_id", "provider_by_idempotency_key")
            ),
        ),
        ("attempts unknown after a crash", checks["unknown_after_crash"]),
        (
            "contacts after repayment (beyond window / max s)",
            f"{checks['contacts_after_repayment']['beyond_race_window']} / "
            f"{checks['contacts_after_repayment']['max_seconds']}",
        ),
        ("contacts outside the window", checks["contacts_outside_window"]),
        ("contacts over a cap", checks["contacts_over_cap"]),
        ("malformed found in the DLQ", checks["malformed_in_dlq"]),
        ("cases equal to their replay", checks["replay_equal"]),
    ]
    if checks.get("events_lost_offset_runs"):
        rows.insert(
            1, ("  lost offsets (first, last) per partition", checks["events_lost_offset_runs"])
        )
    for label, value in rows:
        print(f"  {label:<50} {value}")
    print("PASS" if not report["failures"] else f"FAIL: {', '.join(report['failures'])}")


def _in_flight(checks: dict[str, Any]) -> str:
    at_check = checks.get("events_in_flight_at_check", {})
    never = checks.get("events_unhandled", {})
    return ", ".join(
        f"{name} {n} ({n - never.get(name, 0)} / {never.get(name, 0)})"
        for name, n in at_check.items()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loans", type=int, default=int(os.environ.get("N", "20000")))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--short",
        action="store_true",
        help="a few thousand loans, one kill per replica, no infra restarts",
    )
    parser.add_argument(
        "--no-placements",
        action="store_true",
        help="run the workflow without agencies (nothing placed, no placements replayed)",
    )
    args = parser.parse_args(argv)
    cfg = Config(loans=args.loans, seed=args.seed, placements=not args.no_placements)
    if args.short:
        cfg = Config(
            loans=min(args.loans, 2000),
            seed=args.seed,
            placements=not args.no_placements,
            kills_per_replica=1,
            restart_infrastructure=False,
            settle_timeout_s=300,
        )
    report = asyncio.run(run(cfg))
    path = write_report(report, cfg.report_dir)
    print_report(report)
    print(f"report: {path}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
