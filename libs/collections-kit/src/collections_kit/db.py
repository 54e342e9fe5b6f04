"""Database plumbing: engine factory and the inbox/outbox tables every service owns."""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ColumnElement,
    DateTime,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    any_,
    bindparam,
    false,
    func,
    true,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def make_engine(url: str, *, pool_size: int = 10, schema: str | None = None) -> AsyncEngine:
    connect_args: dict[str, object] = {}
    if schema:
        # Each service sees its own schema first; it never reaches into another's tables.
        connect_args["server_settings"] = {"search_path": schema}
    # No ping on checkout: it is a round trip in front of every transaction, on the path
    # of every batch and of a repayment's suppression. A connection that died with the
    # server fails its first statement instead; SQLAlchemy then discards the whole pool,
    # and the consumer loops retry such errors as infrastructure (a REST caller gets one
    # 503 problem with Retry-After).
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        connect_args=connect_args,
        # JSONB columns (case holds and milestones, timeline details, journals, outbox
        # headers) are written and read on every message: orjson instead of the json
        # module, whose encoder was a tenth of the workflow's CPU.
        json_serializer=_json_text,
        json_deserializer=orjson.loads,
        # Statement parameters can hold personal data; errors must not echo them into logs.
        hide_parameters=True,
    )


# SQLSTATEs that say "the database cannot serve you now", not "this statement is wrong":
# class 08 (connection exceptions), too many connections, and the three a restart answers
# with (admin shutdown, crash shutdown, cannot connect now: shutting down or starting up).
_UNAVAILABLE_SQLSTATES = frozenset({"53300", "57P01", "57P02", "57P03"})


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is unreachable or restarting: worth waiting out,
    never a reason to dead-letter a record or to answer 500.

    asyncpg's refusals during a restart reach us as a plain ``DBAPIError`` (the dialect
    maps them to its generic ``Error``), so the SQLSTATE is read along the cause chain."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return any(
        state.startswith("08") or state in _UNAVAILABLE_SQLSTATES for state in sqlstates(exc)
    )


def sqlstates(exc: BaseException) -> Iterator[str]:
    """The SQLSTATEs along ``exc``'s cause chain (SQLAlchemy's ``orig``, then ``__cause__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str):
            yield state
        origin = getattr(current, "orig", None)
        current = origin if isinstance(origin, BaseException) else current.__cause__


def any_of(column: ColumnElement[Any], values: Iterable[Any]) -> ColumnElement[bool]:
    """``column = ANY($n)`` with the values as one array parameter.

    ``column.in_(values)`` renders one placeholder per value at every execution, so a
    batch's statement is re-rendered (and re-prepared by PostgreSQL) for each list length;
    an array parameter keeps one cached statement whatever the batch holds. (Constant
    sets stay ``in_``: a partial index's predicate can only be proven from literal values.)
    """
    return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))


async def insert_rows(
    conn: AsyncConnection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    on_conflict: str = "",
    returning: str = "",
    notify: str = "",
) -> list[Any]:
    """Insert ``rows`` (all with the same keys) in one statement, sent as one JSON document.

    ``INSERT ... SELECT ... FROM jsonb_array_elements($1)``, each row a JSON array of its
    values in column order, each column cast from its element's text by PostgreSQL's own
    input function (numerics and times travel as exact text): orjson writes the whole batch
    in C. SQLAlchemy's multi-row execute builds a parameter set per row, and asyncpg's
    array encoding costs about a microsecond per value: either was a fifth or more of a
    consumer's CPU. Rows as JSON objects (``json_to_recordset``) cost PostgreSQL about
    three times as much per row as arrays do (it looks every column up by key, row by
    row): 11 against 3 microseconds for a 25-column case row.
    ``on_conflict`` is SQL from :func:`on_conflict_update` (or ``ON CONFLICT DO NOTHING``);
    ``returning`` names columns to return, one row per row written. ``notify`` names a
    channel to ``pg_notify`` in the same statement (one round trip fewer on every outbox
    flush; the notification is delivered at commit, as a separate statement's would be).
    """
    if not rows:
        return []
    if returning and notify:
        raise ValueError("insert_rows: returning and notify do not combine")
    names = tuple(rows[0])
    sql = _insert_rows_sql(table, names, on_conflict)
    if notify:
        # A data-modifying WITH runs to completion whether or not it is read.
        await conn.exec_driver_sql(
            f"WITH written AS ({sql}) SELECT pg_notify($2, '')", (_document(rows, names), notify)
        )
        return []
    result = await conn.exec_driver_sql(
        sql + (f" RETURNING {returning}" if returning else ""), (_document(rows, names),)
    )
    return list(result) if returning else []


async def update_rows(
    conn: AsyncConnection, table: Table, key: str, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Set, in each row whose ``key`` column matches, the other columns given: one
    ``UPDATE ... FROM jsonb_array_elements(...)`` for all of them (see :func:`insert_rows`)."""
    if not rows:
        return
    names = tuple(rows[0])
    await conn.exec_driver_sql(_update_rows_sql(table, key, names), (_document(rows, names),))


def _document(rows: Sequence[Mapping[str, Any]], names: tuple[str, ...]) -> str:
    """The rows as a JSON array of arrays, values in the order of ``names`` (a missing key
    is NULL)."""
    values: list[Any]
    if len(names) > 1:
        try:
            # In C, a quarter of the cost of a comprehension per row.
            values = list(map(operator.itemgetter(*names), rows))
        except KeyError:  # a row without one of the keys
            values = [[row.get(name) for name in names] for row in rows]
    else:  # itemgetter would return the single value bare
        values = [[row.get(name) for name in names] for row in rows]
    return orjson.dumps(values, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()


def on_conflict_update(key: str, columns: Iterable[str]) -> str:
    return f'ON CONFLICT ("{key}") DO UPDATE SET ' + ", ".join(
        f'"{c}" = EXCLUDED."{c}"' for c in columns
    )


def _json_default(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)  # exact, read by numeric's input function
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()  # bytea's hex input format
    raise TypeError(f"{type(value).__name__} is not a column value")


def _record_of(table: Table, names: tuple[str, ...]) -> str:
    """The rows of a :func:`_document` as a subquery ``r`` with these columns of ``table``."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    columns = []
    for n, name in enumerate(names):
        column_type = table.c[name].type
        # A JSONB value is taken as it is (no trip through text); a top-level JSON null is
        # SQL NULL, as a column given None is everywhere else.
        value = (
            f"NULLIF(e->{n}, 'null'::jsonb)"
            if isinstance(column_type, JSONB)
            else f"CAST(e->>{n} AS {column_type.compile(dialect=dialect)})"
        )
        columns.append(f'{value} AS "{name}"')
    return f"(SELECT {', '.join(columns)} FROM jsonb_array_elements($1::text::jsonb) AS e) AS r"


@functools.lru_cache(maxsize=256)
def _insert_rows_sql(table: Table, names: tuple[str, ...], on_conflict: str) -> str:
    columns = ", ".join(f'"{n}"' for n in names)
    return (
        f'INSERT INTO "{table.name}" ({columns}) SELECT {columns} '
        f"FROM {_record_of(table, names)} {on_conflict}"
    )


@functools.lru_cache(maxsize=256)
def _update_rows_sql(table: Table, key: str, names: tuple[str, ...]) -> str:
    assignments = ", ".join(f'"{n}" = r."{n}"' for n in names if n != key)
    return (
        f'UPDATE "{table.name}" AS t SET {assignments} FROM {_record_of(table, names)} '
        f'WHERE t."{key}" = r."{key}"'
    )


def asyncpg_dsn(url: str) -> str:
    """The plain libpq URL asyncpg wants, from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def plumbing_tables(metadata: MetaData) -> tuple[Table, Table]:
    """The inbox (dedupe per consumer) and the transactional outbox, in ``metadata``'s schema."""
    inbox = Table(
        "inbox",
        metadata,
        Column("consumer", Text, nullable=False),
        Column("event_id", Text, nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        # What was claimed (see collections_kit.consumer): a hash of the payload, and
        # whether the claim ended in a dead letter that a replay may take over.
        Column("fingerprint", LargeBinary),
        Column("dead_lettered", Boolean, nullable=False, server_default=false()),
        PrimaryKeyConstraint("consumer", "event_id"),
    )
    # One row per flush (a transaction's messages; two rows when a handler wrote its own
    # change along with those staged before it): in the order staged, the n-th message being
    # the n-th element of each array (``header_sets``: a JSON array of each one's header
    # pairs).
    outbox = Table(
        "outbox",
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("topics", ARRAY(Text), nullable=False),
        Column("keys", ARRAY(LargeBinary), nullable=False),
        Column("payloads", ARRAY(LargeBinary), nullable=False),
        Column("header_sets", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    # A poll's claims in one row (collections_kit.consumer): the ids, found through the
    # GIN index, with their fingerprints and dead-letter flags at the same positions. The
    # lookup is the migrations' ``inbox_claims_of`` function (a table alone lacks it).
    Table(
        "inbox_claims",
        metadata,
        Column("seq", BigInteger, Identity(), primary_key=True),
        Column("consumer", Text, nullable=False),
        Column("claimed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("event_ids", ARRAY(Text), nullable=False),
        Column("fingerprints", ARRAY(LargeBinary), nullable=False),
        Column("dead_lettered", ARRAY(Boolean), nullable=False),
        Index(
            "ix_inbox_claims_event_ids",
            "event_ids",
            postgresql_using="gin",
            postgresql_with={"fastupdate": "off"},
        ),
    )
    # How far the relay has published the outbox (one row; see collections_kit.outbox):
    # relayed rows are not deleted one by one but truncated together.
    Table(
        RELAYED_TABLE,
        metadata,
        Column("one", Boolean, primary_key=True, server_default=true()),
        Column("relayed_to", BigInteger, nullable=False),
        CheckConstraint("one", name="outbox_relayed_one_row"),
    )
    return inbox, outbox


RELAYED_TABLE = "outbox_relayed"


def relayed_table(outbox: Table) -> Table:
    """The relay's position beside ``outbox`` (defined with it by :func:`plumbing_tables`)."""
    return outbox.metadata.tables[
        f"{outbox.schema}.{RELAYED_TABLE}" if outbox.schema else RELAYED_TABLE
    ]
