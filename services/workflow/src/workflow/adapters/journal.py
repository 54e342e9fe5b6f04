"""The case journal: every input a case's decisions were made from, in order.

Decisions are pure, so a case's stored state must equal the fold of ``decide`` over its
journal. That is how the reliability run proves nothing was lost, doubled or reordered
(and how an auditor can re-derive any case). Inputs are stored as tagged JSON.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from collections_kit.clock import derived_id
from workflow.adapters.tables import case_inputs
from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain.model import Case, ContactIntent
from workflow.domain.policy import PolicyBook

_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls for cls in vars(m).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == m.__name__
}


_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def _encode(value: Any) -> Any:
    # Hot path (one call per consumed message): plain types first, field names cached.
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, Decimal):
        return {"$d": str(value)}
    if isinstance(value, datetime):
        return {"$t": value.isoformat()}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    names = _FIELDS.get(type(value))
    if names is None:
        names = _FIELDS[type(value)] = tuple(f.name for f in dataclasses.fields(value))
    return {name: _encode(getattr(value, name)) for name in names}


def encode_input(event: d.Input) -> tuple[str, dict[str, Any]]:
    return type(event).__name__, _encode(event)


def _decode(value: Any, hint: Any) -> Any:
    if isinstance(value, dict) and "$d" in value:
        return Decimal(value["$d"])
    if isinstance(value, dict) and "$t" in value:
        return datetime.fromisoformat(value["$t"])
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return tuple(_decode(v, item) for v in value)
    if isinstance(value, dict) and isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{k: _decode(v, hints[k]) for k, v in value.items()})
    if origin in (typing.Union, types.UnionType):
        return _decode(value, next(a for a in typing.get_args(hint) if a is not type(None)))
    return value


def decode_input(input_type: str, payload: dict[str, Any]) -> d.Input:
    cls = _TYPES[input_type]
    decoded: d.Input = _decode(payload, cls)
    return decoded


async def journal_of(conn: AsyncConnection, case_id: str) -> list[Any]:
    rows = await conn.execute(select(case_inputs).where(case_inputs.c.case_id == case_id)
                              .order_by(case_inputs.c.id))
    return list(rows)


def replay(rows: Sequence[Any], policies: PolicyBook) -> Case | None:
    """Fold ``decide`` over a journal exactly as the app applied it."""
    case: Case | None = None
    intents: dict[str, ContactIntent] = {}
    for row in rows:
        event = decode_input(row.input_type, row.payload)
        product = case.product if case else getattr(event, "product", "")
        decision = d.decide(case, list(intents.values()), event,
                            policies.for_product(product), row.at,
                            partial(derived_id, row.cause_id))
        if decision.rejected is not None:
            continue
        case = decision.case or case
        intents.update({i.intent_id: i for i in decision.intents})
    return case
