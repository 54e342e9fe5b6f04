"""The agency placement policy from a TOML file (policies/placements.toml): agencies,
shares, periods and commission rates are configuration, read like the escalation policy."""

from __future__ import annotations

import re
import tomllib
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from workflow.adapters.policy_file import PolicyError
from workflow.domain.placement import AgencyShare, PlacementPolicy, PlacementTier
from workflow.domain.policy import Stage

# The agency is the subject of its token and a key on the wire (contract.AgencyId).
_AGENCY = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def load_placement_policy(path: Path) -> PlacementPolicy:
    data = tomllib.loads(path.read_text())
    try:
        policy = PlacementPolicy(
            version=str(data["version"]), tiers=tuple(_tier(t) for t in data["tiers"])
        )
    except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
        raise PolicyError(f"{path}: {exc!r}") from exc
    _validate(policy, path)
    return policy


def _tier(data: dict[str, Any]) -> PlacementTier:
    top = data.get("max_balance")
    return PlacementTier(
        tier=str(data["tier"]),
        stages=tuple(Stage(s) for s in data["stages"]),
        min_days_past_due=int(data["min_days_past_due"]),
        min_balance=Decimal(str(data.get("min_balance", "0"))),
        max_balance=Decimal(str(top)) if top is not None else None,
        period=timedelta(days=int(data["period_days"])),
        agencies=tuple(
            AgencyShare(
                agency=str(a["agency"]),
                share=int(a["share"]),
                commission_rate=Decimal(str(a["commission_rate"])),
            )
            for a in data["agencies"]
        ),
    )


def _validate(policy: PlacementPolicy, path: Path) -> None:
    names = [t.tier for t in policy.tiers]
    if not names or len(set(names)) != len(names):
        raise PolicyError(f"{path}: tiers must be listed, each name once")
    for tier in policy.tiers:
        where = f"{path}: tier {tier.tier}"
        if not tier.stages or not tier.agencies:
            raise PolicyError(f"{where}: needs stages and agencies")
        if tier.period <= timedelta(0) or tier.min_days_past_due < 0:
            raise PolicyError(f"{where}: period and days past due must be positive")
        if tier.min_balance < 0 or (
            tier.max_balance is not None and tier.max_balance <= tier.min_balance
        ):
            raise PolicyError(f"{where}: the balance band is empty or negative")
        agencies = [a.agency for a in tier.agencies]
        if len(set(agencies)) != len(agencies):
            raise PolicyError(f"{where}: an agency is listed twice")
        for agency in tier.agencies:
            if not _AGENCY.match(agency.agency):
                raise PolicyError(f"{where}: agency id {agency.agency!r} is not usable")
            if agency.share <= 0:
                raise PolicyError(f"{where}: agency {agency.agency} needs a positive share")
            if not Decimal(0) <= agency.commission_rate < Decimal(1):
                raise PolicyError(f"{where}: commission rate of {agency.agency} not in [0, 1)")
