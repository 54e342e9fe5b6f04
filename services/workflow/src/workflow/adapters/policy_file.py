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
