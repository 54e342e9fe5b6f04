"""Escalation policies from TOML files: a new product or version is configuration."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from collections_kit.vocabulary import CHANNELS, RECIPIENTS
from workflow.domain.policy import (
    DEFAULT_POLICY,
    STAGE_ORDER,
    ContactPlan,
    EscalationPolicy,
    PolicyBook,
    Stage,
    StagePolicy,
)
from workflow.domain.tasks import (
    BalanceBand,
    QueueAccess,
    QueuePolicy,
    Route,
    TaskKind,
    policy_problems,
)

_CHANNELS = set(CHANNELS)
_RECIPIENTS = set(RECIPIENTS)


class PolicyError(ValueError):
    """A policy file is inconsistent; the service refuses to start with it."""


def load_policy(path: Path) -> EscalationPolicy:
    data = tomllib.loads(path.read_text())
    try:
        stages = tuple(_stage(s) for s in data["stages"])
        policy = EscalationPolicy(
            version=str(data["version"]),
            product=str(data["product"]),
            tolerance=Decimal(str(data["tolerance"])),
            stages=stages,
            notice_response_deadline=timedelta(days=int(data["notice_response_deadline_days"])),
            unanswered_limit=int(data["unanswered_limit"]),
            breathing_space=timedelta(days=int(data["breathing_space_days"])),
            step_back_below_share=(
                Decimal(str(data["step_back_below_share"]))
                if data.get("step_back_below_share") is not None
                else None
            ),
            recheck_base=timedelta(minutes=int(data["recheck_base_minutes"])),
            recheck_max=timedelta(minutes=int(data["recheck_max_minutes"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"{path}: {exc}") from exc
    _validate(policy, path)
    return policy


def _stage(data: dict[str, Any]) -> StagePolicy:
    days = data.get("max_duration_days")
    return StagePolicy(
        stage=Stage(data["stage"]),
        min_days_past_due=int(data["min_days_past_due"]),
        contacts=tuple(
            ContactPlan(c["channel"], c["recipient"], c["template"])
            for c in data.get("contacts", [])
        ),
        max_duration=timedelta(days=int(days)) if days is not None else None,
    )


def _validate(policy: EscalationPolicy, path: Path) -> None:
    if tuple(s.stage for s in policy.stages) != STAGE_ORDER:
        raise PolicyError(f"{path}: stages must be listed once each, in order")
    thresholds = [s.min_days_past_due for s in policy.stages]
    if thresholds != sorted(thresholds):
        raise PolicyError(f"{path}: days-past-due thresholds must not decrease")
    for stage in policy.stages:
        for contact in stage.contacts:
            if contact.channel not in _CHANNELS or contact.recipient not in _RECIPIENTS:
                raise PolicyError(f"{path}: unknown channel or recipient in {stage.stage}")
            if contact.recipient == "guarantor" and stage.stage is not Stage.GUARANTOR_RECOURSE:
                raise PolicyError(f"{path}: a guarantor is contacted only at guarantor_recourse")


def policy_book(paths: Sequence[Path]) -> PolicyBook:
    policies = tuple(load_policy(p) for p in paths)
    return PolicyBook(policies or (DEFAULT_POLICY,))


# --- the queue policy (work queues: routes, balance bands, leases) ----------------------------

QUEUE_POLICY = Path(__file__).resolve().parent.parent / "policies" / "queues.toml"


def load_queue_policy(path: Path = QUEUE_POLICY) -> QueuePolicy:
    data = tomllib.loads(path.read_text())
    try:
        policy = QueuePolicy(
            version=str(data["version"]),
            routes=tuple(_route(r) for r in data["routes"]),
            bands=tuple(
                BalanceBand(str(b["name"]), Decimal(str(b["below"])) if "below" in b else None)
                for b in data.get("bands", [])
            ),
            languages={str(k): str(v) for k, v in data.get("languages", {}).items()},
            default_language=str(data.get("default_language", "en")),
            lease=timedelta(minutes=float(data["lease_minutes"])),
            max_renewals=int(data["max_renewals"]),
            access={str(q): _access(a) for q, a in data.get("access", {}).items()},
        )
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise PolicyError(f"{path}: {exc}") from exc
    problems = policy_problems(policy)
    if problems:
        raise PolicyError(f"{path}: " + "; ".join(problems))
    return policy


_ROUTE_KEYS = {
    "queue",
    "priority",
    "kinds",
    "stages",
    "jurisdictions",
    "products",
    "bands",
    "languages",
    "broken_promise",
}


_ACCESS_KEYS = {"anyone", "collectors", "groups"}


def _access(data: dict[str, Any]) -> QueueAccess:
    unknown = set(data) - _ACCESS_KEYS
    if unknown:
        # A misspelt key ("group") would silently close the queue to the people it names.
        raise ValueError(f"unknown access keys {sorted(unknown)}")
    anyone = data.get("anyone", False)
    if not isinstance(anyone, bool):
        raise ValueError("anyone must be true or false")
    for key in ("collectors", "groups"):
        if not isinstance(data.get(key, []), list):
            raise ValueError(f"{key} must be a list of names")
    return QueueAccess(
        anyone=anyone,
        collectors=frozenset(str(c) for c in data.get("collectors", [])),
        groups=frozenset(str(g) for g in data.get("groups", [])),
    )


def _route(data: dict[str, Any]) -> Route:
    unknown = set(data) - _ROUTE_KEYS
    if unknown:
        # A misspelt condition would silently match everything.
        raise ValueError(f"unknown route keys {sorted(unknown)}")
    broken = data.get("broken_promise")
    if broken is not None and not isinstance(broken, bool):
        raise ValueError("broken_promise must be true or false")
    return Route(
        queue=str(data["queue"]),
        priority=int(data["priority"]),
        kinds=frozenset(TaskKind(k) for k in data.get("kinds", [])),
        stages=frozenset(Stage(s) for s in data.get("stages", [])),
        jurisdictions=frozenset(str(j) for j in data.get("jurisdictions", [])),
        products=frozenset(str(p) for p in data.get("products", [])),
        bands=frozenset(str(b) for b in data.get("bands", [])),
        languages=frozenset(str(lang) for lang in data.get("languages", [])),
        broken_promise=broken,
    )
