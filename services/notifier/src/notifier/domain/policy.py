"""Contact policy as data: per-jurisdiction rules and the notifier's own safety margins.

Each rule has a stable name (``CN.contact_window``, ``US.reg_f_7_in_7``) that every
decision records, so an auditor can tell which rule stopped or allowed a contact, and a
later change of the numbers never rewrites how an old decision is explained.

The jurisdictions are plain data, one TOML file each (:mod:`collections_kit.jurisdictions`,
read into :data:`BUILT_IN`; ``NOTIFIER_JURISDICTIONS_DIR`` names another directory, and a
``NOTIFIER_POLICY_FILE`` may replace one): adding one, or changing a number, is a file.
:func:`jurisdictions_from_mapping` turns that data into the typed rules and refuses
anything it does not understand, so a typo fails at start-up rather than at 22:00.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from typing import Any, Literal, cast, get_args

from collections_kit.jurisdictions import load_jurisdictions
from collections_kit.vocabulary import Stage
from notifier.domain.in_doubt import InDoubtRule
from notifier.domain.model import ChannelName

CHANNELS: frozenset[ChannelName] = frozenset(get_args(ChannelName))


@dataclass(frozen=True)
class ContactWindow:
    """Local wall-clock hours in which contact is allowed: ``start <= t < end``."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("a contact window is local wall-clock time, without a zone")
        # Windows crossing midnight are not needed by any regulator we follow; refusing them
        # keeps the next-allowed-moment arithmetic simple and obviously right.
        if not self.start < self.end:
            raise ValueError("a contact window must start before it ends on the same day")

    def contains(self, wall: time) -> bool:
        return self.start <= wall < self.end


CapCounts = Literal["attempts", "connected", "unanswered"]
CapScope = Literal["debt", "person", "number"]
CapPeriod = Literal["rolling", "local_day"]


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``limit`` contacts of a kind in a period, for one debt, person or number.

    - ``counts``: every attempt, only connected calls, or only unanswered calls;
    - ``scope``: ``debt`` (this person about this loan), ``person`` (this person about any
      loan: across every loan and so every agency working one), ``number`` (this phone
      number, whoever it belongs to);
    - ``period``: a rolling window of ``days`` days, or the calendar day in the borrower's
      own time zone;
    - ``channels``: the channels whose attempts count, which are also the ones held back
      when the cap is reached. Counting across channels is the point: four calls and three
      text messages are seven attempts.
    """

    name: str
    counts: CapCounts
    scope: CapScope
    period: CapPeriod
    limit: int
    channels: frozenset[ChannelName]
    days: int = 1
    source: str = ""

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"cap {self.name}: limit must be at least 1")
        if self.days < 1:
            raise ValueError(f"cap {self.name}: days must be at least 1")
        if not self.channels or not self.channels <= CHANNELS:
            raise ValueError(f"cap {self.name}: channels must be some of {sorted(CHANNELS)}")
        if self.counts != "attempts" and self.channels != {"voice"}:
            raise ValueError(f"cap {self.name}: only calls can be connected or unanswered")
        if self.scope == "number" and not self.channels <= {"sms", "voice"}:
            raise ValueError(f"cap {self.name}: a per-number cap counts phone channels only")

    @property
    def window(self) -> timedelta:
        return timedelta(days=self.days)


@dataclass(frozen=True)
class QuietPeriod:
    """After a conversation about a debt, no contact on ``channels`` for ``days`` days."""

    name: str
    days: int
    channels: frozenset[ChannelName]
    source: str = ""

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError(f"quiet period {self.name}: days must be at least 1")

    @property
    def length(self) -> timedelta:
        return timedelta(days=self.days)


@dataclass(frozen=True)
class ValidationNoticeRule:
    """A validation notice must reach a person before any other contact about a debt.

    The first contact on a ``channels`` channel (a letter or an e-mail) carries the notice
    in place of its own text; until one has gone out, other channels wait.
    """

    name: str
    template: str
    channels: frozenset[ChannelName]
    # The consumer may dispute within this many days of the notice (30 days from receipt
    # plus the 5 days Reg F lets a collector assume for delivery).
    dispute_days: int = 35
    # How long a contact waiting for the notice sleeps before it looks again (it is also
    # woken as soon as the notice goes out).
    recheck: timedelta = timedelta(minutes=15)
    source: str = ""


@dataclass(frozen=True)
class JurisdictionPolicy:
    jurisdiction: str
    window: ContactWindow
    # Where the numbers come from, for the audit trail and the reader.
    source: str
    caps: tuple[FrequencyCap, ...] = ()
    quiet_periods: tuple[QuietPeriod, ...] = ()
    validation_notice: ValidationNoticeRule | None = None
    # A letter is printed and posted, not received at the hour we decide: the contact
    # window is about when a person is reached.
    window_channels: frozenset[ChannelName] = frozenset({"sms", "voice", "email"})

    @property
    def window_rule(self) -> str:
        return f"{self.jurisdiction}.contact_window"

    def rule(self, name: str) -> str:
        return f"{self.jurisdiction}.{name}"


# --- the built-in jurisdictions, as data --------------------------------------------------

# The jurisdiction files shipped with the kit (CN.toml, US.toml, UK.toml), which the
# workflow reads too: the one list of jurisdictions. They are read once, as part of loading
# the code they ship with; deciding stays free of I/O.
BUILT_IN: dict[str, dict[str, Any]] = load_jurisdictions()


def _time(value: Any, where: str) -> time:
    try:
        return time.fromisoformat(str(value))
    except ValueError as exc:
        raise ValueError(f"{where}: not a time of day: {value!r}") from exc


def _channels(value: Any, where: str) -> frozenset[ChannelName]:
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{where}: channels must be a non-empty list")
    unknown = set(value) - CHANNELS
    if unknown:
        raise ValueError(f"{where}: unknown channels {sorted(unknown)}")
    return frozenset(cast(ChannelName, v) for v in value)


def _only(data: Any, allowed: set[str], where: str, required: Collection[str] = ()) -> None:
    """``data`` is a table of ``allowed`` keys with every ``required`` one: a file's mistake
    is named where it is, not met later as a bare KeyError."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: must be a table, not {type(data).__name__}")
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    missing = set(required) - set(data)
    if missing:
        raise ValueError(f"{where}: missing keys {sorted(missing)}")


def _choice(value: Any, options: tuple[str, ...], where: str) -> Any:
    if value not in options:
        raise ValueError(f"{where}: {value!r} is not one of {list(options)}")
    return value


def jurisdiction_from_mapping(code: str, data: Mapping[str, Any]) -> JurisdictionPolicy:
    where = f"jurisdiction {code}"
    _only(
        data,
        {"window", "source", "caps", "quiet_periods", "validation_notice", "window_channels"},
        where,
        required={"window"},
    )
    window = data["window"]
    _only(window, {"start", "end"}, f"{where} window", required={"start", "end"})
    caps = []
    for i, cap in enumerate(data.get("caps", ())):
        at = f"{where} cap {i}"
        _only(
            cap,
            {"name", "counts", "scope", "period", "limit", "days", "channels", "source"},
            at,
            required={"name", "counts", "scope", "period", "limit", "channels"},
        )
        caps.append(
            FrequencyCap(
                name=str(cap["name"]),
                counts=_choice(cap["counts"], get_args(CapCounts), at),
                scope=_choice(cap["scope"], get_args(CapScope), at),
                period=_choice(cap["period"], get_args(CapPeriod), at),
                limit=int(cap["limit"]),
                days=int(cap.get("days", 1)),
                channels=_channels(cap["channels"], at),
                source=str(cap.get("source", "")),
            )
        )
    quiet = []
    for i, q in enumerate(data.get("quiet_periods", ())):
        at = f"{where} quiet period {i}"
        _only(q, {"name", "days", "channels", "source"}, at, required={"name", "days", "channels"})
        quiet.append(
            QuietPeriod(
                name=str(q["name"]),
                days=int(q["days"]),
                channels=_channels(q["channels"], at),
                source=str(q.get("source", "")),
            )
        )
    notice = None
    if "validation_notice" in data:
        v = data["validation_notice"]
        at = f"{where} validation notice"
        _only(
            v,
            {"name", "template", "channels", "dispute_days", "recheck_minutes", "source"},
            at,
            required={"name", "template", "channels"},
        )
        notice = ValidationNoticeRule(
            name=str(v["name"]),
            template=str(v["template"]),
            channels=_channels(v["channels"], at),
            dispute_days=int(v.get("dispute_days", 35)),
            recheck=timedelta(minutes=float(v.get("recheck_minutes", 15))),
            source=str(v.get("source", "")),
        )
    extra: dict[str, Any] = {}
    if "window_channels" in data:
        extra["window_channels"] = _channels(data["window_channels"], where)
    return JurisdictionPolicy(
        jurisdiction=code,
        window=ContactWindow(_time(window["start"], where), _time(window["end"], where)),
        source=str(data.get("source", "")),
        caps=tuple(caps),
        quiet_periods=tuple(quiet),
        validation_notice=notice,
        **extra,
    )


def jurisdictions_from_mapping(data: Mapping[str, Any]) -> tuple[JurisdictionPolicy, ...]:
    """Every jurisdiction in ``data`` (``{code: {...}}``, e.g. a parsed TOML file)."""
    return tuple(jurisdiction_from_mapping(code, body) for code, body in data.items())


DEFAULT_JURISDICTIONS: tuple[JurisdictionPolicy, ...] = jurisdictions_from_mapping(BUILT_IN)
_BY_CODE = {p.jurisdiction: p for p in DEFAULT_JURISDICTIONS}
CN, US, UK = _BY_CODE["CN"], _BY_CODE["US"], _BY_CODE["UK"]


# How far before the ledger confirmation a repayment still makes the confirmation suspect,
# unless configured otherwise (NOTIFIER_RECHECK_LOOKBACK_S); see ``decide`` for why.
RECHECK_LOOKBACK = timedelta(minutes=10)


@dataclass(frozen=True)
class DispatchPolicy:
    version: str = "notifier/2026-11-23"
    jurisdictions: Mapping[str, JurisdictionPolicy] = field(
        default_factory=lambda: {p.jurisdiction: p for p in DEFAULT_JURISDICTIONS}
    )
    # How far before the ledger confirmation a repayment still makes the confirmation
    # suspect; see ``decide`` for why the margin exists.
    recheck_lookback: timedelta = RECHECK_LOOKBACK
    # Stages in which the guarantor is a party we may contact.
    guarantor_stages: frozenset[str] = frozenset({Stage.GUARANTOR_RECOURSE})
    # Per channel: may an attempt in doubt be sent again by rule (default: never).
    in_doubt: Mapping[ChannelName, InDoubtRule] = field(default_factory=dict)

    def in_doubt_rule(self, channel: ChannelName) -> InDoubtRule:
        return self.in_doubt.get(channel, InDoubtRule())

    @classmethod
    def of(
        cls,
        jurisdictions: Iterable[JurisdictionPolicy] = DEFAULT_JURISDICTIONS,
        *,
        recheck_lookback: timedelta = RECHECK_LOOKBACK,
        version: str | None = None,
        in_doubt: Mapping[ChannelName, InDoubtRule] | None = None,
    ) -> DispatchPolicy:
        return cls(
            version=version or cls.version,
            jurisdictions={p.jurisdiction: p for p in jurisdictions},
            recheck_lookback=recheck_lookback,
            in_doubt=dict(in_doubt or {}),
        )

    def for_jurisdiction(self, jurisdiction: str) -> JurisdictionPolicy | None:
        return self.jurisdictions.get(jurisdiction)

    def with_jurisdictions(self, extra: Iterable[JurisdictionPolicy]) -> DispatchPolicy:
        """This policy with ``extra`` added (a jurisdiction of the same code replaced)."""
        merged = dict(self.jurisdictions)
        merged.update({p.jurisdiction: p for p in extra})
        return DispatchPolicy(
            version=self.version,
            jurisdictions=merged,
            recheck_lookback=self.recheck_lookback,
            guarantor_stages=self.guarantor_stages,
            in_doubt=self.in_doubt,
        )
