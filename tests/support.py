"""Helpers for tests that cross the real broker and database."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka.structs import ConsumerRecord, TopicPartition

from collections_kit.envelope import Envelope, MalformedMessageError, decode
from collections_kit.runtime import Runtime
from scripts.infra import read_to_end
from scripts.services import CLEAN_EXIT, Fleet

if TYPE_CHECKING:
    from workflow.domain.placement import Placement, PlacementPolicy


async def read_topic(bootstrap: str, topic: str) -> list[Envelope | MalformedMessageError]:
    """Everything on ``topic`` right now, decoded (or the decoding error)."""
    out: list[Envelope | MalformedMessageError] = []
    for r in await read_to_end(bootstrap, [topic]):
        try:
            out.append(decode(r.key, r.value, r.headers))
        except MalformedMessageError as exc:
            out.append(exc)
    return out


def zone_at_midday() -> str:
    """A time zone where it is about noon now, so the contact window is open."""
    offset = max(min(12 - datetime.now(UTC).hour, 12), -12)
    # Etc/GMT names invert the sign: Etc/GMT-8 is UTC+8.
    return "Etc/GMT" + (f"-{offset}" if offset > 0 else f"+{-offset}" if offset < 0 else "")


def unused_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def eventually(
    check: Callable[[], Any], *, within: float = 30.0, interval: float = 0.2
) -> Any:
    """Await ``check()`` until it returns something truthy (async or not)."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {within}s (last: {last!r})")


@asynccontextmanager
async def fleet_running(
    stack: dict[str, str],
    database_url: str,
    topic_prefix: str,
    tmp_path: Path,
    *,
    base_port: int,
    smtp_port: int,
    extra_env: dict[str, dict[str, str]] | None = None,
) -> AsyncIterator[Fleet]:
    """Every service as a process of its own on the test's database and topics (ports from
    ``base_port``, logs under ``tmp_path``), stopped after the test: each must exit cleanly,
    a crash on the way out fails the test too."""
    fleet = Fleet(
        database_url=database_url,
        kafka_bootstrap=stack["kafka_bootstrap"],
        topic_prefix=topic_prefix,
        log_dir=tmp_path / "logs",
        base_port=base_port,
        smtp_port=smtp_port,
        extra_env=extra_env or {},
    )
    await asyncio.to_thread(fleet.start)
    try:
        yield fleet
    finally:
        codes = await asyncio.to_thread(fleet.stop)
        assert all(code in CLEAN_EXIT for code in codes.values()), codes


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[Runtime]:
    """A service's real runtime (consumer loops, relay, workers) in this process."""
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


async def migrate(migrations: Any, url: str, schema: str, revision: str = "head") -> None:
    from collections_kit.migrate import upgrade

    # Alembic's env runs its own event loop; keep it off the test's loop.
    await asyncio.to_thread(upgrade, migrations, url, schema, revision)


async def downgrade(migrations: Any, url: str, schema: str, revision: str) -> None:
    """Down to ``revision``: how a migration test checks that the way back keeps the data."""
    from alembic import command

    from collections_kit.migrate import alembic_config

    config = alembic_config(migrations, url, schema)
    await asyncio.to_thread(command.downgrade, config, revision)


async def mismatched_replays(
    engine: Any, placements: PlacementPolicy | None = None, policies: Any = None
) -> list[dict[str, Any]]:
    """Cases whose stored state differs from the replay of their journal (should be none).

    Each as JSON-ready facts to investigate it by: its loan and case ids, the fields that
    differ (stored and replayed value), the stored row and the journal.

    A case's placements and their commission rows are part of its state: replayed with
    ``placements``, the placement policy the workflow ran with (a ``PlacementPolicy``;
    None: it ran without agencies, so no case may have a placement), they must equal what
    is stored, field by field; if not, ``fields`` names ``placements`` and/or
    ``placement_commissions`` with the stored and replayed rows.

    Cases and journals are read in ONE snapshot (repeatable read): the workflow may still
    be writing while this runs (timers fire, a re-check's confirmation comes back), and a
    case read before such a write, compared with its journal read after it, differed by
    that write alone. A case row and its journal rows are written in one transaction, so
    one snapshot holds both or neither.
    """
    from sqlalchemy import select

    from workflow.adapters.journal import replay_with_placements
    from workflow.adapters.placements import placement_from_row
    from workflow.adapters.repository import case_from_row
    from workflow.adapters.tables import case_inputs, cases, placement_commissions
    from workflow.adapters.tables import placements as placement_rows
    from workflow.domain.policy import PolicyBook

    # The policy book the workflow ran with (variants included); default: the built-in one.
    book: PolicyBook = policies if policies is not None else PolicyBook()
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        rows = (await conn.execute(select(cases).order_by(cases.c.loan_id))).all()
        journals: dict[str, list[Any]] = {}
        for entry in await conn.execute(
            select(case_inputs).order_by(case_inputs.c.case_id, case_inputs.c.id)
        ):
            journals.setdefault(entry.case_id, []).append(entry)
        # Placements change only in their case's transaction: the same snapshot holds them.
        placed: dict[str, dict[str, Placement]] = {}
        for p in map(placement_from_row, await conn.execute(select(placement_rows))):
            placed.setdefault(p.case_id, {})[p.placement_id] = p
        owner = {p: case for case, ps in placed.items() for p in ps}
        accrued: dict[str, dict[tuple[str, str], tuple[Decimal, Decimal]]] = {}
        for a in await conn.execute(select(placement_commissions)):
            accrued.setdefault(owner.get(a.placement_id, ""), {})[
                (a.placement_id, a.repayment_id)
            ] = (a.amount, a.commission)
    bad = []
    for row in rows:
        stored = case_from_row(row)
        journal = journals.get(stored.case_id, [])
        again = replay_with_placements(journal, book, placements, stored.variant)
        replayed = again.case
        stored_placed = placed.get(stored.case_id, {})
        stored_accrued = accrued.get(stored.case_id, {})
        if (
            replayed == stored
            and again.placements == stored_placed
            and again.accruals == stored_accrued
        ):
            continue
        fields: dict[str, dict[str, Any]] = (
            {
                f.name: {
                    "stored": _plain(getattr(stored, f.name)),
                    "replayed": _plain(getattr(replayed, f.name)),
                }
                for f in dataclasses.fields(stored)
                if getattr(stored, f.name) != getattr(replayed, f.name)
            }
            if replayed is not None
            else {"case": {"stored": stored.case_id, "replayed": None}}
        )
        if again.placements != stored_placed:
            fields["placements"] = {
                "stored": _plain(sorted(stored_placed.values(), key=_placed_order)),
                "replayed": _plain(sorted(again.placements.values(), key=_placed_order)),
            }
        if again.accruals != stored_accrued:
            fields["placement_commissions"] = {
                "stored": _accrual_rows(stored_accrued),
                "replayed": _accrual_rows(again.accruals),
            }
        bad.append(
            {
                "loan_id": stored.loan_id,
                "case_id": stored.case_id,
                "fields": fields,
                "stored": {k: _plain(v) for k, v in row._mapping.items()},
                "journal": [
                    {
                        "id": e.id,
                        "at": _plain(e.at),
                        "cause_id": e.cause_id,
                        "input_type": e.input_type,
                        "payload": e.payload,
                    }
                    for e in journal
                ],
            }
        )
    return bad


def _placed_order(p: Placement) -> tuple[datetime, str]:
    return (p.placed_at, p.placement_id)


def _accrual_rows(rows: dict[tuple[str, str], tuple[Decimal, Decimal]]) -> list[dict[str, str]]:
    return [
        {"placement_id": p, "repayment_id": r, "amount": str(a), "commission": str(c)}
        for (p, r), (a, c) in sorted(rows.items())
    ]


def _plain(value: Any) -> Any:
    """``value`` as JSON has it (exact decimals and times as text)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def poll_of(
    records: Sequence[tuple[str, bytes, bytes, list[tuple[str, bytes]]]],
) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    """What a consumer's ``getmany`` would return for these records (as from
    ``lending.record_for``), one partition per topic, topics in order of first appearance:
    for handing a loop a poll whose make-up a test decides."""
    poll: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
    for offset, (topic, key, value, headers) in enumerate(records):
        poll.setdefault(TopicPartition(topic, 0), []).append(
            ConsumerRecord(topic, 0, offset, 0, 0, key, value, None, len(key), len(value), headers)
        )
    return poll
