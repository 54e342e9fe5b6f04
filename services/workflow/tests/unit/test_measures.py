"""The measures (domain/measures.py) on timelines written by hand: each definition of
docs/measures.md, its period and its grouping; the gauges set from the figures."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY

from workflow.app.kpis import publish
from workflow.domain.measures import CaseHistory, GroupBy, GroupMeasures, Recorded, measure

T0 = datetime(2026, 11, 1, tzinfo=UTC)
START = T0 + timedelta(days=10)
END = T0 + timedelta(days=40)


def at(day: float) -> datetime:
    return T0 + timedelta(days=day)


def e(
    day: float,
    kind: str,
    stage: str | None = None,
    to: str | None = None,
    status: str | None = None,
    status_to: str | None = None,
    **detail: Any,
) -> Recorded:
    """An entry on ``day``: ``stage`` -> ``to`` (same when omitted), ``status`` likewise."""
    return Recorded(
        at=at(day),
        kind=kind,
        stage_before=stage,
        stage_after=to or stage,
        status_before=status,
        status_after=status_to or status,
        detail=detail,
    )


def opened(day: float) -> Recorded:
    return Recorded(at(day), "case_opened", None, "warning", None, "open", {})


def case(case_id: str, *entries: Recorded, variant: str = "champion") -> CaseHistory:
    return CaseHistory(case_id, "consumer-loan", "GB", variant, tuple(entries))


def one(histories: list[CaseHistory], group_by: GroupBy = GroupBy.VARIANT) -> GroupMeasures:
    groups = measure(histories, START, END, group_by)
    assert len(groups) == 1
    return groups[0]


def parts(g: GroupMeasures, name: str) -> tuple[float, float]:
    return float(g.measures[name].numerator), float(g.measures[name].denominator)


def test_roll_rate_counts_cases_in_a_stage_at_the_start_or_entering_it() -> None:
    rolled_from_start = case(
        "a",
        opened(1),
        e(12, "stage_changed", "warning", "formal_notice", "open"),
    )
    entered_and_stayed = case("b", opened(15))
    closed_before = case(
        "c", opened(1), e(2, "case_closed", "warning", None, "open", "closed", exit="repaid")
    )
    rolled_after_the_end = case(
        "d", opened(20), e(41, "stage_changed", "warning", "formal_notice", "open")
    )
    g = one([rolled_from_start, entered_and_stayed, closed_before, rolled_after_the_end])
    assert g.roll_rates_by_stage["warning"].value == 1 / 3
    assert g.roll_rates_by_stage["formal_notice"].value == 0.0  # a entered it, stayed
    assert parts(g, "roll_rate") == (1, 4)
    assert g.cases == 3
    assert g.stage_funnel == {
        "warning": 2,
        "formal_notice": 1,
        "guarantor_recourse": 0,
        "litigation": 0,
        "enforcement": 0,
    }


def test_cure_rate_and_days_to_cure_follow_the_cohort_opened_in_the_period() -> None:
    cured = case(
        "a",
        opened(11),
        e(14, "case_closed", "warning", None, "open", "closed", exit="repaid"),
    )
    settled = case(
        "b", opened(12), e(18, "case_closed", "warning", None, "open", "closed", exit="settled")
    )
    written_off = case(
        "c",
        opened(12),
        e(13, "case_closed", "warning", None, "open", "closed", exit="written_off"),
    )
    opened_before = case(
        "d", opened(5), e(14, "case_closed", "warning", None, "open", "closed", exit="repaid")
    )
    reopened = case(
        "e",
        opened(11),
        e(12, "case_closed", "warning", None, "open", "closed", exit="repaid"),
        e(13, "case_reopened", "warning", None, "closed", "open"),
    )
    g = one([cured, settled, written_off, opened_before, reopened])
    assert parts(g, "cure_rate") == (2, 4)
    assert parts(g, "days_to_cure") == (3 + 6, 2)
    assert g.measures["days_to_cure"].value == 4.5


def test_contacts_per_cure_counts_the_cohorts_attempts() -> None:
    a = case(
        "a",
        opened(11),
        e(11.5, "contact_sent", "warning", channel="sms", command_id="c1"),
        e(11.6, "contact_delivered", "warning", channel="sms", command_id="c1"),
        e(12, "task_result_recorded", result="no_answer", task_kind="negotiation"),
        e(13, "case_closed", "warning", None, "open", "closed", exit="repaid"),
    )
    not_in_cohort = case("b", opened(2), e(12, "contact_sent", "warning", channel="sms"))
    g = one([a, not_in_cohort])
    assert parts(g, "contacts_per_cure") == (2, 1)


def test_promises_are_judged_at_their_due_date_or_when_fulfilled_early() -> None:
    plan = case(
        "a",
        opened(1),
        e(5, "arrangement_recorded", "warning", arrangement_id="p", instalments=3),
        e(9, "instalment_kept", "warning", arrangement_id="p", instalment=0),  # before
        e(12, "instalment_kept", "warning", arrangement_id="p", instalment=1),
        e(
            15,
            "case_closed",
            "warning",
            None,
            "open",
            "closed",
            exit="settled",
            trigger="plan_completed",
        ),
    )
    broken = case(
        "b",
        opened(1),
        e(11, "arrangement_recorded", "warning", arrangement_id="q", instalments=1),
        e(20, "arrangement_broken", "warning", arrangement_id="q", instalment=0),
        e(20, "stage_changed", "warning", "formal_notice", "open"),
    )
    kept_early = case(
        "c",
        opened(1),
        e(11, "arrangement_recorded", "warning", arrangement_id="r", instalments=1),
        e(12, "arrangement_kept", "warning", arrangement_id="r"),
    )
    cancelled = case(
        "d",
        opened(1),
        e(11, "arrangement_recorded", "warning", arrangement_id="s", instalments=2),
        e(12, "case_held", "warning", None, "open", "held"),
    )
    g = one([plan, broken, kept_early, cancelled])
    # plan: instalment 1 on day 12, instalment 2 at completion; broken: 1; kept early: 1.
    assert parts(g, "promise_kept_rate") == (3, 4)


def test_right_party_contacts_are_the_borrower_reached_over_calls() -> None:
    a = case(
        "a",
        opened(1),
        e(11, "contact_intent_recorded", "warning", intent_id="i1", recipient="debtor"),
        e(11, "contact_intent_recorded", "warning", intent_id="i2", recipient="guarantor"),
        e(12, "contact_sent", "warning", intent_id="i1", channel="voice", command_id="c1"),
        e(12, "contact_answered", "warning", intent_id="i1", channel="voice", command_id="c1"),
        e(12, "contact_sent", "warning", intent_id="i2", channel="voice", command_id="c2"),
        e(12, "contact_answered", "warning", intent_id="i2", channel="voice", command_id="c2"),
        e(12, "contact_sent", "warning", intent_id="i3", channel="email", command_id="c3"),
        e(13, "task_result_recorded", result="promise_to_pay", task_kind="negotiation"),
        # A collector's result writes an answered outcome without an intent: not twice.
        e(13, "contact_answered", "warning", intent_id="", channel="voice"),
        e(14, "task_result_recorded", result="right_party_contact", task_kind="guarantor_contact"),
        e(15, "task_result_recorded", result="wrong_number", task_kind="negotiation"),
        e(16, "permit_result", actor_kind="agency", person="debtor", result="conversation"),
        e(16, "permit_result", actor_kind="collector", person="debtor", result="conversation"),
    )
    g = one([a])
    assert parts(g, "right_party_contact_rate") == (3, 6)


def test_suppressed_contacts_count_each_contact_once_per_reason() -> None:
    a = case(
        "a",
        opened(1),
        e(11, "contact_deferred", "warning", command_id="c1", reason="outside_contact_window"),
        e(12, "contact_deferred", "warning", command_id="c1", reason="outside_contact_window"),
        e(12, "contact_blocked", "warning", command_id="c2", reason="opted_out_sms"),
        e(13, "contact_suppressed", "warning", intent_id="i9", reason="stale"),
        e(
            14,
            "case_closed",
            "warning",
            None,
            "open",
            "closed",
            exit="repaid",
            contacts_cancelled=["i4", "i5"],
        ),
        e(14, "contact_cancelled", "warning", None, "closed", command_id="c3", reason="repaid"),
        e(9, "contact_blocked", "warning", command_id="c0", reason="before_the_period"),
    )
    g = one([a])
    assert g.suppressed_contacts == {
        "opted_out_sms": 1,
        "outside_contact_window": 1,
        "repaid": 3,
        "stale": 1,
    }


def test_liquidation_rate_is_collected_under_placements_begun_in_the_period() -> None:
    a = case(
        "a",
        opened(1),
        e(11, "case_placed", "warning", placement_id="p1", amount_placed="1000.00"),
        e(12, "placement_commission_accrued", "warning", placement_id="p1", amount="200.00"),
        e(13, "placement_commission_reversed", "warning", placement_id="p1", amount="50.00"),
        e(14, "case_held", "warning", None, "open", "held"),
        e(15, "placement_resumed", "warning", None, "held", "open", placement_id="p2"),
        e(16, "placement_commission_accrued", "warning", placement_id="p2", amount="100.00"),
        e(41, "placement_commission_accrued", "warning", placement_id="p2", amount="999.00"),
    )
    placed_before = case(
        "b",
        opened(1),
        e(2, "case_placed", "warning", placement_id="p3", amount_placed="500"),
        e(12, "placement_commission_accrued", "warning", placement_id="p3", amount="500"),
    )
    g = one([a, placed_before])
    assert parts(g, "liquidation_rate") == (250, 1000)


def test_by_stage_each_thing_counts_for_the_stage_it_happened_in() -> None:
    a = case(
        "a",
        opened(11),
        e(11, "contact_sent", "warning", channel="sms"),
        e(12, "stage_changed", "warning", "formal_notice", "open"),
        e(13, "contact_sent", "formal_notice", channel="letter"),
        e(13, "contact_sent", "formal_notice", channel="email"),
        e(14, "case_closed", "formal_notice", None, "open", "closed", exit="repaid"),
    )
    groups = {g.group: g for g in measure([a], START, END, GroupBy.STAGE)}
    assert set(groups) == {"warning", "formal_notice"}
    warning, notice = groups["warning"], groups["formal_notice"]
    assert warning.roll_rates_by_stage == {"warning": warning.measures["roll_rate"]}
    assert warning.measures["roll_rate"].value == 1.0
    assert parts(warning, "cure_rate") == (0, 1)  # it left warning by rolling
    assert parts(notice, "cure_rate") == (1, 1)
    assert parts(notice, "days_to_cure") == (2, 1)
    assert parts(notice, "contacts_per_cure") == (2, 1)
    assert warning.stage_funnel == {"warning": 1}
    assert notice.stage_funnel == {"formal_notice": 1}


def test_groups_by_variant_product_and_jurisdiction() -> None:
    a = case("a", opened(11), variant="champion")
    b = case("b", opened(11), variant="challenger")
    assert [g.group for g in measure([a, b], START, END, GroupBy.VARIANT)] == [
        "challenger",
        "champion",
    ]
    assert [g.group for g in measure([a, b], START, END, GroupBy.PRODUCT)] == ["consumer-loan"]
    assert [g.group for g in measure([a, b], START, END, GroupBy.JURISDICTION)] == ["GB"]


def test_nothing_to_measure_is_null_not_zero() -> None:
    g = one([case("a", opened(11))])
    assert g.measures["promise_kept_rate"].value is None
    assert g.measures["liquidation_rate"].value is None
    assert g.measures["days_to_cure"].value is None
    assert g.measures["cure_rate"].value == 0.0
    assert measure([], START, END, GroupBy.VARIANT) == []


def test_a_pre_delinquency_phase_counts_for_nothing_until_the_case_opens() -> None:
    early = Recorded(at(5), "pre_delinquency_opened", None, "warning", None, "open", {})
    a = case(
        "a",
        early,
        e(11, "contact_sent", "warning", channel="voice"),
        e(12, "arrangement_recorded", "warning", arrangement_id="p", instalments=1),
        e(13, "pre_delinquency_ended", "warning", None, "open"),
        Recorded(at(13), "case_opened", None, "warning", None, "open", {}),
        e(15, "case_closed", "warning", None, "open", "closed", exit="repaid"),
    )
    only_early = case(
        "b",
        early,
        e(12, "contact_sent", "warning", channel="sms"),
        e(14, "case_closed", "warning", None, "open", "closed", exit="repaid"),
    )
    g = one([a, only_early])
    assert g.cases == 1
    assert parts(g, "cure_rate") == (1, 1)
    assert parts(g, "days_to_cure") == (2, 1)
    assert parts(g, "contacts_per_cure") == (0, 1)
    assert parts(g, "right_party_contact_rate") == (0, 0)
    assert parts(g, "promise_kept_rate") == (0, 0)  # the plan ended with the phase
    assert g.stage_funnel["warning"] == 1


def test_the_gauges_are_set_to_the_figures_and_drop_a_variant_gone() -> None:
    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    both = measure(
        [case("a", opened(11)), case("b", opened(11), variant="challenger")],
        START,
        END,
        GroupBy.VARIANT,
    )
    publish(both, END - START, END)
    assert sample("collections_kpi_cases", variant="challenger") == 1
    promise = sample("collections_kpi_promise_kept_rate", variant="champion")
    assert promise is not None
    assert math.isnan(promise)  # nothing to measure
    assert sample("collections_kpi_refreshed_timestamp_seconds") == END.timestamp()
    publish(measure([case("a", opened(11))], START, END, GroupBy.VARIANT), END - START, END)
    assert sample("collections_kpi_cases", variant="challenger") is None
    assert sample("collections_kpi_cases", variant="champion") == 1
