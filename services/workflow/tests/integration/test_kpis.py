"""``GET /v1/kpis`` against the real PostgreSQL: its figures equal a recomputation from the
case timelines (a property: hypothesis writes random timelines through the real repository,
the endpoint answers, a simple reference implementation here recomputes every measure from
the timelines read back over the API); the gauges on ``/metrics`` equal the endpoint's;
bad parameters are refused with a problem document naming them."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import text

from collections_kit.auth import dev_headers
from collections_kit.runtime import Runtime
from scripts import lending
from tests.support import eventually
from workflow.adapters.repository import BatchState
from workflow.app.kpis import KpiGauges, measured
from workflow.domain.measures import GroupBy
from workflow.domain.model import Case, CaseStatus, Exit, TimelineEntry
from workflow.domain.policy import Stage

READ = dev_headers(["cases:read"], subject="manager")
BASE = datetime(2026, 1, 5, tzinfo=UTC)
STAGES = [s.value for s in Stage]
ROLLING = STAGES[:-1]
ENTERING = ("case_opened", "stage_changed", "stage_stepped_back")
RPC_RESULTS = (
    "right_party_contact",
    "promise_to_pay",
    "refused_to_pay",
    "refused_to_communicate",
    "dispute_raised",
    "hardship_declared",
)
TASK_RESULTS = (*RPC_RESULTS, "wrong_number", "no_answer")
MEASURES = (
    "roll_rate",
    "cure_rate",
    "promise_kept_rate",
    "right_party_contact_rate",
    "contacts_per_cure",
    "days_to_cure",
    "liquidation_rate",
)


# --- random timelines ---------------------------------------------------------------------


@dataclass
class Entry:
    at: datetime
    kind: str
    stage_before: str | None
    stage_after: str | None
    status_before: str | None
    status_after: str | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Made:
    """A generated case: its attributes, its timeline, and how it ended up."""

    loan_id: str
    variant: str
    product: str
    jurisdiction: str
    entries: list[Entry]
    stage: str
    status: str
    exit: str | None


_ids = itertools.count()
EXITS = [e.value for e in Exit]


class Timeline:
    """A timeline a case could have written, one drawn step at a time: stages and statuses
    that follow on, contacts and their outcomes, collectors' and agencies' results,
    arrangements, holds, placements, closures and reopenings, at nondecreasing times."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.t = BASE + timedelta(hours=draw(st.integers(0, 40 * 24)))
        self.stage, self.status = "warning", "open"
        self.exit: str | None = None
        # Some begin as pre-delinquency cases (early warning) that may become ordinary.
        self.pre = draw(st.integers(0, 3)) == 0
        first = "pre_delinquency_opened" if self.pre else "case_opened"
        self.entries = [Entry(self.t, first, None, self.stage, None, self.status)]
        self.arrangement: list[Any] | None = None  # [id, instalments, judged]
        self.placed = False
        self.intents: list[str] = []
        self.n = 0

    def add(
        self, kind: str, to: str | None = None, status_to: str | None = None, **detail: Any
    ) -> None:
        to, status_to = to or self.stage, status_to or self.status
        self.entries.append(Entry(self.t, kind, self.stage, to, self.status, status_to, detail))
        self.stage, self.status = to, status_to

    def step(self) -> None:
        self.t += timedelta(hours=self.draw(st.integers(0, 6 * 24)))
        self.n = next(_ids)
        if self.pre and self.status != "closed":
            self.while_pre_delinquent()
        elif self.status == "closed":
            self.when_closed()
        elif self.status == "held":
            self.when_held()
        else:
            # Weighted towards what makes promises, cures and placements to measure.
            action = self.draw(st.sampled_from(OPEN_ACTIONS))
            action(self)

    def while_pre_delinquent(self) -> None:
        action = self.draw(st.sampled_from(["contact", "arrange", "overdue", "expire"]))
        if action == "contact":
            self.contact()
        elif action == "arrange":
            self.arrange()
        elif action == "overdue":
            self.arrangement, self.pre = None, False
            self.add("pre_delinquency_ended", trigger="dpd_threshold")
            self.entries.append(Entry(self.t, "case_opened", None, self.stage, None, self.status))
        else:
            self.arrangement, self.exit = None, "closed"
            self.add("case_closed", status_to="closed", exit="closed", trigger="close")

    def when_closed(self) -> None:
        action = self.draw(st.sampled_from(["reopen", "late_outcome", "nothing"]))
        if action == "reopen" and self.exit == "repaid":
            self.add("case_reopened", status_to="open")
            self.exit = None
        elif action == "late_outcome":
            self.add("contact_cancelled", command_id=f"c{self.n}", reason="repaid")

    def when_held(self) -> None:
        if self.draw(st.booleans()):
            self.add("case_resumed", status_to="open")
        else:
            self.close(trigger="close")

    def close(self, **detail: Any) -> None:
        self.arrangement = None
        self.exit = self.draw(st.sampled_from(EXITS))
        self.add("case_closed", status_to="closed", exit=self.exit, **detail)

    def escalate(self) -> None:
        here = STAGES.index(self.stage)
        if here + 1 == len(STAGES):
            return
        if self.arrangement is not None and self.draw(st.booleans()):
            a = self.arrangement
            self.add("arrangement_broken", arrangement_id=a[0], instalment=a[2])
        self.arrangement = None
        self.add("stage_changed", STAGES[here + 1], trigger="dpd_threshold")

    def litigate(self) -> None:
        if STAGES.index(self.stage) < STAGES.index("litigation"):
            self.arrangement = None
            self.add("stage_changed", "litigation", trigger="fraud_suspected")

    def step_back(self) -> None:
        here = STAGES.index(self.stage)
        if 0 < here < 3 and self.arrangement is None:
            self.add("stage_stepped_back", STAGES[here - 1])

    def contact(self) -> None:
        intent, command = f"i{self.n}", f"c{self.n}"
        self.intents.append(intent)
        channel = self.draw(st.sampled_from(["sms", "voice", "email", "letter"]))
        recipient = self.draw(st.sampled_from(["debtor", "guarantor"]))
        self.add("contact_intent_recorded", intent_id=intent, recipient=recipient, channel=channel)
        sent = self.draw(st.sampled_from(["contact_sent", "contact_in_doubt", None]))
        if sent:
            self.add(sent, intent_id=intent, command_id=command, channel=channel)
            result = self.draw(st.sampled_from(["contact_answered", "contact_unanswered", None]))
            if result:
                self.add(result, intent_id=intent, command_id=command, channel=channel)

    def withheld(self) -> None:
        kinds = ["contact_blocked", "contact_deferred", "contact_cancelled", "contact_suppressed"]
        kind = self.draw(st.sampled_from(kinds))
        reason = self.draw(st.sampled_from(["outside_contact_window", "opted_out_sms", "stale"]))
        command = self.draw(st.sampled_from(["c1", "c2", f"c{self.n}"]))
        self.add(kind, command_id=command, intent_id=f"i{self.n}", reason=reason)

    def task(self) -> None:
        # As the work queues write them: no stage on a task's entries.
        result = self.draw(st.sampled_from(TASK_RESULTS))
        task_kind = self.draw(st.sampled_from(["negotiation", "guarantor_contact"]))
        detail = {"result": result, "task_kind": task_kind}
        self.entries.append(Entry(self.t, "task_result_recorded", None, None, None, None, detail))
        # A collector's result is also an outcome without an intent.
        self.add("contact_answered", intent_id="")

    def permit(self) -> None:
        self.add(
            "permit_result",
            actor_kind=self.draw(st.sampled_from(["agency", "collector"])),
            person=self.draw(st.sampled_from(["debtor", "guarantor"])),
            result=self.draw(st.sampled_from(["connected", "unanswered", "conversation"])),
        )

    def arrange(self) -> None:
        if self.arrangement is None:
            self.arrangement = [f"a{self.n}", self.draw(st.integers(1, 3)), 0]
            a = self.arrangement
            self.add("arrangement_recorded", arrangement_id=a[0], instalments=a[1])

    def instalment(self) -> None:
        a = self.arrangement
        if a is None:
            return
        outcome = self.draw(st.sampled_from(["instalment_kept", "arrangement_kept", "completed"]))
        if outcome == "instalment_kept" and a[2] + 1 < a[1]:
            self.add("instalment_kept", arrangement_id=a[0], instalment=a[2])
            a[2] += 1
        elif outcome == "arrangement_kept":
            self.add("arrangement_kept", arrangement_id=a[0])
            self.arrangement = None
        elif outcome == "completed":
            self.arrangement, self.exit = None, "settled"
            self.add("case_closed", status_to="closed", exit="settled", trigger="plan_completed")

    def hold(self) -> None:
        self.arrangement = None
        self.add("case_held", status_to="held", contacts_cancelled=self.intents[-2:] or None)

    def close_open(self) -> None:
        cancelled = self.intents[-1:] if self.draw(st.booleans()) else None
        self.close(trigger="full_repayment", contacts_cancelled=cancelled)

    def place(self) -> None:
        self.placed = True
        amount = self.draw(st.integers(100, 5000))
        self.add("case_placed", placement_id=f"p{self.n}", amount_placed=f"{amount}.00")

    def collect(self) -> None:
        if self.placed:
            kinds = ["placement_commission_accrued", "placement_commission_reversed"]
            amount = f"{self.draw(st.integers(1, 500))}.50"
            self.add(self.draw(st.sampled_from(kinds)), placement_id=f"p{self.n}", amount=amount)


OPEN_ACTIONS = [
    Timeline.escalate,
    Timeline.litigate,
    Timeline.step_back,
    Timeline.contact,
    Timeline.contact,
    Timeline.withheld,
    Timeline.task,
    Timeline.permit,
    Timeline.arrange,
    Timeline.arrange,
    Timeline.instalment,
    Timeline.instalment,
    Timeline.instalment,
    Timeline.hold,
    Timeline.close_open,
    Timeline.close_open,
    Timeline.place,
    Timeline.collect,
    Timeline.collect,
]


@st.composite
def made_case(draw: st.DrawFn, loan_id: str) -> Made:
    timeline = Timeline(draw)
    for _ in range(draw(st.integers(0, 20))):
        timeline.step()
    return Made(
        loan_id=loan_id,
        variant=draw(st.sampled_from(["champion", "challenger", ""])),
        product=draw(st.sampled_from(["consumer-loan", "card"])),
        jurisdiction=draw(st.sampled_from(["GB", "DE"])),
        entries=timeline.entries,
        stage=timeline.stage,
        status=timeline.status,
        exit=timeline.exit,
    )


@st.composite
def portfolios(draw: st.DrawFn) -> tuple[list[Made], datetime, datetime, str]:
    made = [draw(made_case(f"L-kpi-{i}")) for i in range(draw(st.integers(1, 12)))]
    start = BASE + timedelta(hours=draw(st.integers(0, 50 * 24)))
    end = start + timedelta(hours=draw(st.integers(1, 60 * 24)))
    group_by = draw(st.sampled_from(["variant", "stage", "product", "jurisdiction"]))
    return made, start, end, group_by


async def store(runtime: Runtime, made: list[Made]) -> None:
    """Write the cases and their timelines through the real repository, as a batch does:
    every other case's entries in their journalled inputs' rows, the rest as rows of their
    own (as the work queues' entries are), so the measures read both of the timeline's
    sources."""
    state = BatchState(cases={})
    for i, m in enumerate(made):
        first = m.entries[0].at
        row = Case(
            case_id=f"case-{m.loan_id}",
            loan_id=m.loan_id,
            borrower_id=f"B-{m.loan_id}",
            product=m.product,
            currency="EUR",
            stage=Stage(m.stage),
            status=CaseStatus(m.status),
            exit=Exit(m.exit) if m.exit and m.status == "closed" else None,
            outstanding=Decimal("1000"),
            amount_overdue=Decimal("100"),
            days_past_due=10,
            last_overdue_as_of=first,
            borrower_time_zone="Europe/London",
            jurisdiction=m.jurisdiction,
            policy_version="test",
            opened_at=first,
            updated_at=m.entries[-1].at,
            variant=m.variant,
        )
        for n, x in enumerate(m.entries):
            if i % 2 == 0:
                state.journal(
                    row, "Test", {}, at=x.at, actor="test", cause_id=f"test:{m.loan_id}:{n}"
                )
            state.record(
                row,
                row,
                (),
                [
                    TimelineEntry(
                        kind=x.kind,
                        cause=f"test:{n}",
                        stage_before=Stage(x.stage_before) if x.stage_before else None,
                        stage_after=Stage(x.stage_after) if x.stage_after else None,
                        status_before=CaseStatus(x.status_before) if x.status_before else None,
                        status_after=CaseStatus(x.status_after) if x.status_after else None,
                        policy_version="test",
                        detail=x.detail,
                    )
                ],
                (),
                at=x.at,
                actor="test",
                cause_id=f"test:{m.loan_id}:{n}",
            )
    async with runtime.state["uow"]() as uow:
        await uow.cases.write_batch(state, BASE)
        await uow.commit()


# --- the reference: each measure recomputed from its definition (docs/measures.md) -------


@dataclass
class Read:
    """A case read back over the API: its attributes and its timeline."""

    variant: str
    product: str
    jurisdiction: str
    entries: list[Entry]


async def read_back(api: httpx.AsyncClient, loan_id: str) -> Read:
    case = (await api.get(f"/v1/cases/{loan_id}", headers=READ)).json()
    page = (await api.get(f"/v1/cases/{loan_id}/timeline?limit=500", headers=READ)).json()
    entries = [
        Entry(
            datetime.fromisoformat(x["at"]),
            x["kind"],
            x["stage_before"],
            x["stage_after"],
            x["status_before"],
            x["status_after"],
            x["detail"],
        )
        for x in page["entries"]
    ]
    return Read(case["variant"], case["product"], case["jurisdiction"], entries)


def _zero() -> dict[str, Any]:
    return {
        "cases": set(),
        "exposed": defaultdict(set),
        "rolled": defaultdict(set),
        "funnel": defaultdict(set),
        "cohort": set(),
        "cures": 0,
        "days": Decimal(0),
        "contacts": 0,
        "due": 0,
        "kept": 0,
        "calls": 0,
        "rpc": 0,
        "placed": Decimal(0),
        "collected": Decimal(0),
        "suppressed": defaultdict(set),
    }


class Reference:
    """One case's contribution to each group, recomputed measure by measure from the
    definitions (docs/measures.md), in plain loops over its timeline."""

    def __init__(
        self, out: dict[str, dict[str, Any]], loan: str, c: Read, start: datetime, end: datetime
    ) -> None:
        self.out, self.loan, self.start = out, loan, start
        self.group_by = ""
        self.fixed: str | None = None
        self.entries = [x for x in sorted(c.entries, key=lambda x: x.at) if x.at < end]
        # The stage before each entry (the entry's own stage_before when it has one), the
        # state at the start, and at the end.
        self.here: list[str | None] = []
        stage = status = None
        self.at_start: tuple[str | None, str | None] = (None, None)
        # Entries of a pre-delinquency phase (its opening to its end, both included).
        self.pre: list[bool] = []
        pre = False
        for x in self.entries:
            pre = pre or x.kind in ("pre_delinquency_opened", "pre_delinquency_reopened")
            if x.at < start:
                self.at_start = (x.stage_after or stage, x.status_after or status)
                if pre and x.kind != "pre_delinquency_ended":
                    self.at_start = (None, None)
            self.pre.append(pre)
            pre = pre and x.kind != "pre_delinquency_ended"
            self.here.append(x.stage_before or stage or x.stage_after)
            stage, status = x.stage_after or stage, x.status_after or status
        self.final_status = status
        self.period = [i for i, x in enumerate(self.entries) if x.at >= start and not self.pre[i]]
        self.recipients = {
            x.detail["intent_id"]: x.detail["recipient"]
            for x in self.entries
            if x.kind == "contact_intent_recorded"
        }
        self.joined: set[str] = set()

    def key(self, stage: str | None) -> str:
        return str(stage if self.group_by == "stage" else self.fixed)

    def joins(self, x: Entry) -> bool:
        entering = x.kind in ENTERING and x.stage_after and x.stage_after != x.stage_before
        return bool(entering) and (x.kind == "case_opened" or self.group_by == "stage")

    def run(self, group_by: str, fixed: str | None) -> None:
        self.group_by, self.fixed = group_by, fixed
        for i in self.period:  # every group with an entry in the period is listed
            self.out[self.key(self.here[i])]
        self.exposure()
        self.rolls_and_cohort()
        self.cures()
        self.contacts()
        self.promises()
        self.placements()

    def exposure(self) -> None:
        s0, u0 = self.at_start
        exposed = [s0] if s0 is not None and u0 not in (None, "closed") else []
        for i in self.period:
            x = self.entries[i]
            if x.stage_after and x.status_after not in (None, "closed"):
                exposed.append(x.stage_after)
        for stage in exposed:
            g = self.out[self.key(stage)]
            g["cases"].add(self.loan)
            g["exposed"][stage].add(self.loan)

    def rolls_and_cohort(self) -> None:
        for i in self.period:
            x = self.entries[i]
            if (
                x.stage_before in ROLLING
                and x.stage_after in STAGES
                and STAGES.index(x.stage_after) > STAGES.index(x.stage_before)
            ):
                self.out[self.key(x.stage_before)]["rolled"][x.stage_before].add(self.loan)
            if x.kind in ENTERING and x.stage_after and x.stage_after != x.stage_before:
                self.out[self.key(x.stage_after)]["funnel"][x.stage_after].add(self.loan)
            if self.joins(x):
                self.joined.add(self.key(x.stage_after))
        for g in self.joined:
            self.out[g]["cohort"].add(self.loan)

    def cures(self) -> None:
        """The closure that stands at the end, from a group the case joined in the period."""
        closures = [i for i, x in enumerate(self.entries) if x.kind == "case_closed"]
        if self.final_status != "closed" or not closures or self.pre[closures[-1]]:
            return
        i = closures[-1]
        g = self.key(self.here[i])
        if self.entries[i].detail.get("exit") not in ("repaid", "settled") or g not in self.joined:
            return
        joins = [x.at for x in self.entries[:i] if self.joins(x) and self.key(x.stage_after) == g]
        self.out[g]["cures"] += 1
        days = (self.entries[i].at - joins[-1]).total_seconds()
        self.out[g]["days"] += Decimal(days) / Decimal(86400)

    def reached(self, x: Entry, agency: bool) -> bool:
        d = x.detail
        if x.kind == "task_result_recorded":
            return d.get("result") in RPC_RESULTS and d.get("task_kind") != "guarantor_contact"
        if x.kind == "contact_answered":
            return bool(d.get("intent_id")) and self.recipients.get(d["intent_id"]) == "debtor"
        return agency and d.get("person") == "debtor" and d.get("result") == "conversation"

    def contacts(self) -> None:
        for i in self.period:
            x, g = self.entries[i], self.key(self.here[i])
            d, out = x.detail, self.out[g]
            agency = x.kind == "permit_result" and d.get("actor_kind") == "agency"
            automated = x.kind in ("contact_sent", "contact_in_doubt")
            if (automated or agency or x.kind == "task_result_recorded") and g in self.joined:
                out["contacts"] += 1
            voice = automated and d.get("channel") == "voice"
            if voice or x.kind == "task_result_recorded" or agency:
                out["calls"] += 1
            if self.reached(x, agency):
                out["rpc"] += 1
            if x.kind in WITHHELD:
                contact = d.get("command_id") or d.get("intent_id") or ""
                out["suppressed"][d.get("reason") or "unspecified"].add((self.loan, contact))
            for intent in d.get("contacts_cancelled") or ():
                out["suppressed"][d.get("exit") or "held"].add((self.loan, intent))

    def promises(self) -> None:
        """Each arrangement from its record to its end: instalments kept at their due date,
        one broken, or the rest kept when it was fulfilled early."""
        for i, x in enumerate(self.entries):
            if x.kind != "arrangement_recorded":
                continue
            judged = 0
            for j in range(i + 1, len(self.entries)):
                y = self.entries[j]
                counted = y.at >= self.start and not self.pre[j]
                out = self.out[self.key(self.here[j])] if counted else _zero()
                if y.kind == "instalment_kept":
                    judged += 1
                    out["due"] += 1
                    out["kept"] += 1
                    continue
                if y.kind not in ARRANGEMENT_ENDS:
                    continue
                left = int(x.detail["instalments"]) - judged
                if y.kind == "arrangement_broken":
                    out["due"] += 1
                fulfilled = y.kind == "arrangement_kept" or (
                    y.kind == "case_closed"
                    and (
                        y.detail.get("exit") == "repaid"
                        or y.detail.get("trigger") == "plan_completed"
                    )
                )
                if fulfilled:
                    out["due"] += left
                    out["kept"] += left
                break

    def placements(self) -> None:
        """Placements begun in the period, and what was collected until the next one."""
        sign = {"placement_commission_accrued": 1, "placement_commission_reversed": -1}
        for i in self.period:
            x = self.entries[i]
            if x.kind != "case_placed":
                continue
            out = self.out[self.key(self.here[i])]
            out["placed"] += Decimal(x.detail["amount_placed"])
            for y in self.entries[i + 1 :]:
                if y.kind == "case_placed":
                    break
                if y.kind in sign:
                    out["collected"] += sign[y.kind] * Decimal(y.detail["amount"])


WITHHELD = ("contact_blocked", "contact_deferred", "contact_cancelled", "contact_suppressed")
ARRANGEMENT_ENDS = (
    "pre_delinquency_ended",
    "arrangement_broken",
    "arrangement_kept",
    "case_closed",
    "stage_changed",
    "case_held",
    "arrangement_recorded",
)


def reference(
    cases: dict[str, Read], start: datetime, end: datetime, group_by: str
) -> dict[str, dict[str, Any]]:
    out: defaultdict[str, dict[str, Any]] = defaultdict(_zero)
    for loan, c in cases.items():
        fixed = getattr(c, group_by) if group_by != "stage" else None
        Reference(out, loan, c, start, end).run(group_by, fixed)
    return dict(out)


def expected_json(t: dict[str, Any], group: str, group_by: str) -> dict[str, Any]:
    stages = [group] if group_by == "stage" else STAGES
    rolling = [s for s in stages if s in ROLLING]
    cures = t["cures"]
    parts = {
        "roll_rate": (
            sum(len(t["rolled"][s]) for s in rolling),
            sum(len(t["exposed"][s]) for s in rolling),
        ),
        "cure_rate": (cures, len(t["cohort"])),
        "promise_kept_rate": (t["kept"], t["due"]),
        "right_party_contact_rate": (t["rpc"], t["calls"]),
        "contacts_per_cure": (t["contacts"], cures),
        "days_to_cure": (t["days"], cures),
        "liquidation_rate": (t["collected"], t["placed"]),
    }
    return {
        "group": group,
        "cases": len(t["cases"]),
        "measures": {name: parts[name] for name in MEASURES},
        "roll_rates_by_stage": {s: (len(t["rolled"][s]), len(t["exposed"][s])) for s in rolling},
        "stage_funnel": {s: len(t["funnel"][s]) for s in stages},
        "suppressed_contacts": {r: len(c) for r, c in t["suppressed"].items()},
    }


def as_parts(measure: dict[str, Any]) -> tuple[float, float]:
    if measure["denominator"]:
        assert measure["value"] == pytest.approx(measure["numerator"] / measure["denominator"])
    else:
        assert measure["value"] is None
    return measure["numerator"], measure["denominator"]


def approx(pair: tuple[Any, Any]) -> Any:
    return pytest.approx((float(pair[0]), float(pair[1])), rel=1e-9, abs=1e-9)


# --- the property -------------------------------------------------------------------------


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(portfolio=portfolios())
async def test_the_kpis_equal_a_recomputation_from_the_case_timelines(
    workflow: Runtime, api: httpx.AsyncClient, portfolio: tuple[list[Made], datetime, datetime, str]
) -> None:
    made, start, end, group_by = portfolio
    schema = workflow.settings.db_schema
    async with workflow.engine.begin() as conn:
        await conn.execute(
            text(f'TRUNCATE "{schema}".cases, "{schema}".case_inputs, "{schema}".timeline_rows')
        )
    await store(workflow, made)

    response = await api.get(
        "/v1/kpis",
        params={"from": start.isoformat(), "to": end.isoformat(), "group_by": group_by},
        headers=READ,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert datetime.fromisoformat(body["from"]) == start
    assert datetime.fromisoformat(body["to"]) == end
    assert body["group_by"] == group_by

    # Read a page of three cases at a time, the figures are the same.
    async with workflow.state["uow"]() as uow:
        paged = await measured(uow, start, end, GroupBy(group_by), page=3)
    assert [
        (
            g.group,
            g.cases,
            {n: (float(r.numerator), float(r.denominator)) for n, r in g.measures.items()},
        )
        for g in paged
    ] == [
        (
            g["group"],
            g["cases"],
            {n: (m["numerator"], m["denominator"]) for n, m in g["measures"].items()},
        )
        for g in body["groups"]
    ]

    cases = {m.loan_id: await read_back(api, m.loan_id) for m in made}
    expected = reference(cases, start, end, group_by)
    assert [g["group"] for g in body["groups"]] == sorted(expected)
    for g in body["groups"]:  # what the examples exercised (--hypothesis-show-statistics)
        for name, m in g["measures"].items():
            event(f"{name}: {'measured' if m['denominator'] else 'empty'}")
    for got in body["groups"]:
        want = expected_json(expected[got["group"]], got["group"], group_by)
        assert got["cases"] == want["cases"], got["group"]
        assert got["stage_funnel"] == want["stage_funnel"]
        assert got["suppressed_contacts"] == want["suppressed_contacts"]
        assert {s: as_parts(m) for s, m in got["roll_rates_by_stage"].items()} == {
            s: approx(p) for s, p in want["roll_rates_by_stage"].items()
        }
        for name in MEASURES:
            assert as_parts(got["measures"][name]) == approx(want["measures"][name]), name


# --- the gauges ---------------------------------------------------------------------------


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_the_gauges_are_the_endpoints_figures_for_their_window(
    workflow: Runtime, api: httpx.AsyncClient
) -> None:
    made = []
    for n, variant in enumerate(["champion", "challenger", "champion"]):
        t = BASE + timedelta(days=n)
        entries = [
            Entry(t, "case_opened", None, "warning", None, "open"),
            Entry(t + timedelta(hours=5), "contact_sent", "warning", "warning", "open", "open"),
        ]
        if n != 1:
            entries.append(
                Entry(
                    t + timedelta(days=2),
                    "case_closed",
                    "warning",
                    "warning",
                    "open",
                    "closed",
                    {"exit": "repaid", "trigger": "full_repayment"},
                )
            )
        last = entries[-1]
        made.append(
            Made(
                f"L-gauge-{n}",
                variant,
                "consumer-loan",
                "GB",
                entries,
                "warning",
                str(last.status_after),
                "repaid" if n != 1 else None,
            )
        )
    await store(workflow, made)
    end = BASE + timedelta(days=20)
    window = timedelta(days=30)
    gauges = KpiGauges(workflow.state["uow"], _Fixed(end), window=window, every_s=60)
    await gauges.refresh()

    response = await api.get(
        "/v1/kpis",
        params={"from": (end - window).isoformat(), "to": end.isoformat()},
        headers=READ,
    )
    body = response.json()
    assert [g["group"] for g in body["groups"]] == ["challenger", "champion"]
    for g in body["groups"]:
        variant = g["group"]
        assert gauge("collections_kpi_cases", variant=variant) == g["cases"]
        for name, m in g["measures"].items():
            value = gauge(f"collections_kpi_{name}", variant=variant)
            if m["value"] is None:
                assert value is not None
                assert math.isnan(value)
            else:
                assert value == pytest.approx(m["value"])
            assert gauge("collections_kpi_numerator", variant=variant, measure=name) == (
                pytest.approx(m["numerator"])
            )
        for stage, n in g["stage_funnel"].items():
            assert gauge("collections_kpi_stage_funnel", variant=variant, stage=stage) == n
    assert gauge("collections_kpi_cure_rate", variant="champion") == 1.0
    assert gauge("collections_kpi_cure_rate", variant="challenger") == 0.0
    assert gauge("collections_kpi_window_seconds") == window.total_seconds()
    metrics = await api.get("/metrics")
    assert 'collections_kpi_cure_rate{variant="champion"} 1.0' in metrics.text


@dataclass
class _Fixed:
    at: datetime

    def now(self) -> datetime:
        return self.at


# --- bad parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"from": "2026-11-01T00:00:00"}, "from"),  # no offset
        ({"from": "yesterday"}, "from"),
        ({"to": "1700000000"}, "to"),  # a number is not a date-time here
        ({"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "to"),
        ({"from": "2026-11-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "to"),
        ({"from": "2024-01-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "from"),
        ({"group_by": "agency"}, "group_by"),
    ],
)
async def test_bad_parameters_are_a_problem_naming_them(
    api: httpx.AsyncClient, params: dict[str, str], named: str
) -> None:
    response = await api.get("/v1/kpis", params=params, headers=READ)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert ["query", named] in [e["loc"] for e in problem["errors"]], problem


async def test_the_kpis_need_a_token_that_may_read_cases(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/kpis")).status_code == 401
    other = dev_headers(["collections:work"], subject="collector")
    assert (await api.get("/v1/kpis", headers=other)).status_code == 403
    ok = await api.get("/v1/kpis", headers=READ)
    assert ok.status_code == 200
    body = ok.json()
    assert body["group_by"] == "variant"
    span = datetime.fromisoformat(body["to"]) - datetime.fromisoformat(body["from"])
    assert span == timedelta(days=30)


# --- on what the workflow itself decided --------------------------------------------------


async def test_the_kpis_read_what_the_workflow_recorded(
    api: httpx.AsyncClient, lender: lending.Lender
) -> None:
    """Two cases opened by overdue reports, one repaid in full while its contacts still
    wait for the ledger: a cure of two, both in the warning funnel, and the contacts the
    closure cancelled counted as suppressed for repaid."""
    start = datetime.now(UTC) - timedelta(minutes=1)
    for loan in ("L-kpi-repaid", "L-kpi-open"):
        await lender.publish(lending.overdue(loan, Decimal("800.00")))

    async def opened() -> bool:
        found = [
            (await api.get(f"/v1/cases/{loan}", headers=READ)).status_code
            for loan in ("L-kpi-repaid", "L-kpi-open")
        ]
        return found == [200, 200]

    await eventually(opened)
    waiting = (await api.get("/v1/cases/L-kpi-repaid", headers=READ)).json()["intents"]
    await lender.publish(lending.repayment("L-kpi-repaid", Decimal("800.00"), Decimal("0")))

    async def closed() -> bool:
        case = (await api.get("/v1/cases/L-kpi-repaid", headers=READ)).json()
        return bool(case["status"] == "closed")

    await eventually(closed)
    response = await api.get(
        "/v1/kpis",
        params={
            "from": start.isoformat(),
            "to": (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
        },
        headers=READ,
    )
    assert response.status_code == 200, response.text
    [group] = response.json()["groups"]
    assert group["cases"] == 2
    assert group["stage_funnel"]["warning"] == 2
    cure = group["measures"]["cure_rate"]
    assert (cure["numerator"], cure["denominator"], cure["value"]) == (1, 2, 0.5)
    assert group["measures"]["days_to_cure"]["denominator"] == 1
    assert group["suppressed_contacts"].get("repaid") == len(waiting) > 0
