"""Escalation policies from TOML files: a new product or version is configuration."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from collections_kit.vocabulary import CHANNELS, RECIPIENTS
from workflow.domain.policy import (
    DEFAULT_NEGOTIATION,
    DEFAULT_POLICY,
    STAGE_ORDER,
    Charge,
    ContactPlan,
    EarlyWarningPolicy,
    EscalationPolicy,
    NegotiationPolicy,
    NegotiationTerms,
    PolicyBook,
    ProductPolicy,
    Stage,
    StagePolicy,
    UnreasonableRule,
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
    """The product's base policy (its variants, if any, are in ``load_product_policy``)."""
    return load_product_policy(path).base


def load_product_policy(path: Path) -> ProductPolicy:
    """A product's policy and its champion-challenger variants, each a whole policy: the
    base file with the variant's overrides applied, validated like any policy file."""
    data = tomllib.loads(path.read_text())
    variants = data.pop("variants", {})
    base = _policy(data, path)
    if not variants:
        return ProductPolicy(base)
    try:
        shares = tuple((str(name), _share(v)) for name, v in variants.items())
        if sum(share for _, share in shares) != 100:
            raise ValueError(f"variant shares add up to {sum(s for _, s in shares)}, not 100")
        merged = [
            (name, _with_variant(data, {k: x for k, x in v.items() if k != "share"}))
            for name, v in variants.items()
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"{path}: variants: {exc}") from exc
    return ProductPolicy(
        base,
        shares,
        tuple((name, replace(_policy(d, path), variant=name)) for name, d in merged),
    )


def _share(variant: dict[str, Any]) -> int:
    share = variant["share"]
    if not isinstance(share, int) or isinstance(share, bool) or not 0 <= share <= 100:
        raise ValueError("a variant's share is a whole percent from 0 to 100")
    return share


# What a variant may override: everything that decides a case, nothing that names the
# policy (its version and product are the base's: a variant is a strategy, not a product).
_FIXED_KEYS = {"version", "product"}
_STAGE_KEYS = {"min_days_past_due", "max_duration_days", "contacts"}


def _with_variant(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """The base policy's data with a variant's overrides. Only keys the base has may be
    overridden: a misspelt key would otherwise leave the variant deciding like the
    champion, and the comparison would measure nothing."""
    merged = dict(base)
    for key, value in override.items():
        if key in _FIXED_KEYS or key not in base:
            raise ValueError(f"a variant cannot set {key!r}")
        if key == "stages":
            merged["stages"] = _stages_overridden(base["stages"], value)
        elif key in ("negotiation", "early_warning"):
            merged[key] = _nested_overridden(base[key], value, key)
        else:
            merged[key] = value
    return merged


def _stages_overridden(stages: list[dict[str, Any]], override: dict[str, Any]) -> list[Any]:
    by_name = {s["stage"]: s for s in stages}
    for name, keys in override.items():
        if name not in by_name:
            raise ValueError(f"a variant overrides unknown stage {name!r}")
        unknown = set(keys) - _STAGE_KEYS
        if unknown:
            raise ValueError(f"a variant overrides unknown stage keys {sorted(unknown)}")
    return [{**s, **override.get(s["stage"], {})} for s in stages]


def _nested_overridden(base: dict[str, Any], override: dict[str, Any], at: str) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if key not in base:
            raise ValueError(f"a variant cannot set {at}.{key}")
        both_tables = isinstance(value, dict) and isinstance(base[key], dict)
        merged[key] = _nested_overridden(base[key], value, f"{at}.{key}") if both_tables else value
    return merged


def _policy(data: dict[str, Any], path: Path) -> EscalationPolicy:
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
            negotiation=_negotiation(data["negotiation"])
            if "negotiation" in data
            else DEFAULT_NEGOTIATION,
            # No [early_warning] table: the product opens no pre-delinquency case.
            early_warning=_early_warning(data["early_warning"])
            if "early_warning" in data
            else None,
        )
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
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


_EARLY_WARNING_KEYS = {"threshold", "reminder_every_days", "contacts"}


def _early_warning(data: dict[str, Any]) -> EarlyWarningPolicy:
    unknown = set(data) - _EARLY_WARNING_KEYS
    if unknown:
        raise ValueError(f"unknown early_warning keys {sorted(unknown)}")
    contacts = tuple(
        ContactPlan(c["channel"], c["recipient"], c["template"]) for c in data["contacts"]
    )
    if any(c.channel not in _CHANNELS for c in contacts):
        raise ValueError("unknown channel in early_warning")
    return EarlyWarningPolicy(
        threshold=Decimal(str(data["threshold"])),
        reminder_every=timedelta(days=int(data["reminder_every_days"])),
        contacts=contacts,
    )


_NEGOTIATION_KEYS = {
    "min_down_payment_share",
    "max_term_months",
    "waivable",
    "approvers",
    "refuse_below_floor_share",
    "approved",
    "unreasonable",
    "jurisdictions",
}


def _negotiation(data: dict[str, Any]) -> NegotiationPolicy:
    unknown = set(data) - _NEGOTIATION_KEYS
    if unknown:
        # A misspelt term would silently fall back to nothing at all.
        raise ValueError(f"unknown negotiation keys {sorted(unknown)}")
    overrides = data.get("jurisdictions", {})
    return replace(
        _negotiation_terms(data),
        jurisdictions=tuple(
            (str(code), _negotiation_terms(_overridden(data, override)))
            for code, override in sorted(overrides.items())
        ),
    )


def _overridden(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A jurisdiction's table replaces the keys it names, one level into sub-tables."""
    merged = {k: v for k, v in base.items() if k != "jurisdictions"}
    for key, value in override.items():
        if key == "jurisdictions":
            raise ValueError("a jurisdiction's negotiation cannot name jurisdictions")
        merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
    return merged


def _negotiation_terms(data: dict[str, Any]) -> NegotiationPolicy:
    unreasonable = data["unreasonable"]
    return NegotiationPolicy(
        standard=_terms(data),
        approved=_terms(data["approved"]),
        approvers=frozenset(str(g) for g in data.get("approvers", [])),
        refuse_below_floor_share=Decimal(str(data["refuse_below_floor_share"])),
        unreasonable=UnreasonableRule(
            refusals=int(unreasonable["refusals"]),
            period=timedelta(days=int(unreasonable["period_days"])),
            below_floor_share=Decimal(str(unreasonable["below_floor_share"])),
        ),
    )


def _terms(data: dict[str, Any]) -> NegotiationTerms:
    return NegotiationTerms(
        min_down_payment_share=Decimal(str(data["min_down_payment_share"])),
        max_term_months=int(data["max_term_months"]),
        waivable=tuple(
            (charge, Decimal(str(data.get("waivable", {})[charge.value])))
            for charge in Charge
            if charge.value in data.get("waivable", {})
        ),
    )


def negotiation_problems(policy: NegotiationPolicy) -> list[str]:
    """What makes a negotiation policy unusable: a share outside 0..1, terms an approver
    could not grant, or a refusal rule that can never (or always) fire."""
    problems = []
    for code, terms in (("", policy), *policy.jurisdictions):
        at = f"negotiation{'.jurisdictions.' + code if code else ''}"
        for name, t in (("", terms.standard), (".approved", terms.approved)):
            shares = [t.min_down_payment_share, *(s for _, s in t.waivable)]
            if any(not Decimal(0) <= s <= 1 for s in shares):
                problems.append(f"{at}{name}: shares are between 0 and 1")
            if t.max_term_months < 1:
                problems.append(f"{at}{name}: max_term_months is at least 1")
            if t.min_down_payment_share + sum(s for _, s in t.waivable) > 1:
                problems.append(f"{at}{name}: the down payment and waivers exceed the debt")
        std, up = terms.standard, terms.approved
        if (
            up.min_down_payment_share > std.min_down_payment_share
            or up.max_term_months < std.max_term_months
            or any(up.waiver_share(c) < std.waiver_share(c) for c in Charge)
        ):
            problems.append(f"{at}.approved: an approver's terms include the standard ones")
        rule = terms.unreasonable
        if rule.refusals < 1 or rule.period <= timedelta(0):
            problems.append(f"{at}.unreasonable: refusals and period_days are at least 1")
        if not Decimal(0) <= rule.below_floor_share <= terms.refuse_below_floor_share <= 1:
            problems.append(
                f"{at}: 0 <= unreasonable.below_floor_share <= refuse_below_floor_share <= 1"
            )
    return problems


def _validate(policy: EscalationPolicy, path: Path) -> None:
    problems = negotiation_problems(policy.negotiation)
    if problems:
        raise PolicyError(f"{path}: " + "; ".join(problems))
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
    policies = tuple(load_product_policy(p) for p in paths)
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
