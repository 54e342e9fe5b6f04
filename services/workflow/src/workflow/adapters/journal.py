"""The case journal: every input a case's decisions were made from, in order.

Decisions are pure, so a case's stored state must equal the fold of ``decide`` over its
journal. That is how the reliability run proves nothing was lost, doubled or reordered
(and how an auditor can re-derive any case). Inputs are stored as JSON objects of their
fields and read back by each field's declared type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from collections_kit.clock import derived_id
from workflow.adapters.placements import PlacementBatch
from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain import placement as pl
from workflow.domain.model import Case, ContactIntent
from workflow.domain.policy import PolicyBook

_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in vars(m).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == m.__name__
}


def encode_input(event: d.Input) -> tuple[str, d.Input]:
    """The input type's name and the payload to store: the input itself.

    On the hot path (one call per consumed message) nothing is converted in Python: the
    row encoder (orjson, :func:`collections_kit.db.insert_rows`) writes a dataclass as an
    object of its fields, a ``Decimal`` as its exact string and a ``datetime`` in ISO 8601,
    and :func:`decode_input` reads each back by its field's declared type.
    """
    return type(event).__name__, event


def _decode(value: Any, hint: Any) -> Any:
    # Tagged values are how journals written before 2026-12 stored these two types.
    if isinstance(value, dict) and "$d" in value:
        return Decimal(value["$d"])
    if isinstance(value, dict) and "$t" in value:
        return datetime.fromisoformat(value["$t"])
    if hint is Decimal and isinstance(value, str | int):
        return Decimal(value)
    if hint is datetime and isinstance(value, str):
        return datetime.fromisoformat(value)
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return tuple(_decode(v, item) for v in value)
    if isinstance(value, dict) and isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{k: _decode(v, hints[k]) for k, v in value.items()})
    if origin in (typing.Union, types.UnionType) and value is not None:
        return _decode(value, next(a for a in typing.get_args(hint) if a is not type(None)))
    return value


def decode_input(input_type: str, payload: dict[str, Any]) -> d.Input:
    cls = _TYPES[input_type]
    decoded: d.Input = _decode(payload, cls)
    return decoded


def replay(rows: Sequence[Any], policies: PolicyBook, variant: str | None = None) -> Case | None:
    """Fold ``decide`` over a journal exactly as the app applied it."""
    return replay_with_placements(rows, policies, None, variant).case


@dataclass(frozen=True)
class Replayed:
    """A case and its agencies' side as the fold of its journal makes them."""

    case: Case | None
    # Each placement as it stands after the last input, by id.
    placements: dict[str, pl.Placement]
    # The commission rows, by (placement id, repayment id): amount and commission.
    accruals: dict[tuple[str, str], tuple[Decimal, Decimal]]


def replay_with_placements(
    rows: Sequence[Any],
    policies: PolicyBook,
    placements: pl.PlacementPolicy | None,
    variant: str | None = None,
) -> Replayed:
    """Fold ``decide`` and then ``place`` over a journal exactly as the app applies them
    (``Workflow.run_batch``): every journalled input, after the case decision, through the
    same ``PlacementBatch`` bookkeeping (newest placement, reversible commission). With
    ``placements`` None (a deployment without agencies) nothing is placed.

    ``variant`` is the champion-challenger variant stored on the case: the shares may
    have changed since it opened, and the case keeps the variant it was assigned then.
    None: assign it as the book's shares do now (a case not stored yet)."""
    case: Case | None = None
    intents: dict[str, ContactIntent] = {}
    placing = PlacementBatch({})
    for row in rows:
        event = decode_input(row.input_type, row.payload)
        product = case.product if case else getattr(event, "product", "")
        loan_id = case.loan_id if case else getattr(event, "loan_id", "")
        new_id = partial(derived_id, row.cause_id)
        decision = d.decide(
            case,
            list(intents.values()),
            event,
            policies.for_case(product, loan_id, case.variant if case else variant),
            row.at,
            new_id,
        )
        if decision.rejected is not None:
            continue
        case = decision.case or case
        intents.update({i.intent_id: i for i in decision.intents})
        if placements is None or case is None:
            continue
        placing.record(
            pl.place(
                case,
                event,
                placing.newest.get(case.loan_id),
                placements,
                row.at,
                new_id,
                reversed_accrual=placing.take_reversible(case.loan_id, event.repayment_id)
                if isinstance(event, m.RepaymentReversed)
                else None,
            )
        )
    return Replayed(
        case,
        dict(placing.changed),
        {
            (a.placement.placement_id, a.repayment_id): (a.amount, a.commission)
            for a in placing.accruals
        },
    )
