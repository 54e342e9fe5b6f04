"""The demo's measures per variant: the table it prints and the chart it writes, from a
fixed ``GET /v1/kpis`` document (the endpoint's shape, docs/measures.md)."""

from __future__ import annotations

import copy
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts import demo
from scripts.measures import (
    draw_chart,
    format_measure,
    format_measures,
    period,
    stage_order,
)
from workflow.entrypoints.kpis import KpiReport


def m(value: float | None, numerator: float, denominator: float) -> dict[str, Any]:
    return {"value": value, "numerator": numerator, "denominator": denominator}


def group(name: str, cases: int, roll: float, placements: bool) -> dict[str, Any]:
    return {
        "group": name,
        "cases": cases,
        "measures": {
            "roll_rate": m(roll, 204, 658),
            "cure_rate": m(0.42, 190, 452),
            "promise_kept_rate": m(0.7, 35, 50),
            "right_party_contact_rate": m(None, 0, 0),
            "contacts_per_cure": m(3.1, 589, 190),
            "days_to_cure": m(6.4, 1216.25, 190),
            "liquidation_rate": m(0.18, 5400.0, 30000.0) if placements else m(None, 0, 0),
        },
        "roll_rates_by_stage": {
            "warning": m(0.4, 180, 450),
            "formal_notice": m(0.125, 20, 160),
            "guarantor_recourse": m(0.2, 4, 20),
            "litigation": m(None, 0, 0),
        },
        "stage_funnel": {
            "warning": 452,
            "formal_notice": 180,
            "guarantor_recourse": 20,
            "litigation": 4,
            "enforcement": 0,
        },
        "suppressed_contacts": {"outside_contact_window": 97, "repaid": 31}
        if placements
        else {"repaid": 12, "opted_out_sms": 2},
    }


REPORT: dict[str, Any] = {
    "from": "2026-11-01T00:00:00Z",
    "to": "2026-12-01T00:00:00Z",
    "group_by": "variant",
    "groups": [group("challenger", 488, 0.25, False), group("champion", 512, 0.31, True)],
}


def test_the_fixture_is_what_the_endpoint_answers() -> None:
    # The document these tests draw from has the endpoint's shape, not a guess at it.
    parsed = KpiReport.model_validate(REPORT)
    assert parsed.model_dump(mode="json", by_alias=True)["groups"] == REPORT["groups"]


def test_a_measure_prints_its_value_and_what_it_was_computed_from() -> None:
    assert format_measure(m(0.31, 204, 658), share=True) == "31.0% (204/658)"
    assert format_measure(m(6.4, 1216.25, 190), share=False) == "6.40 (1,216.25/190)"
    # Nothing to measure is not a rate of 0.
    assert format_measure(m(None, 0, 0), share=True) == "n/a (0/0)"


def test_the_table_has_a_column_per_variant_and_a_row_per_measure() -> None:
    table = format_measures(REPORT)
    lines = table.splitlines()
    assert "2026-11-01 00:00 to 2026-12-01 00:00 UTC" in lines[0]
    assert lines[1].split() == ["challenger", "champion"]
    rows = {line.split("  ")[1].strip(): line for line in lines[2:]}
    assert list(rows)[:8] == [
        "cases",
        "roll rate",
        "cure rate",
        "promise-kept rate",
        "right-party-contact rate",
        "contacts per cure",
        "days to cure",
        "liquidation rate",
    ]
    assert rows["roll rate"].split()[-4:] == ["25.0%", "(204/658)", "31.0%", "(204/658)"]
    # The challenger had no agency placements: its liquidation rate is absent, not 0.
    assert rows["liquidation rate"].split()[-4:] == ["n/a", "(0/0)", "18.0%", "(5,400/30,000)"]
    # Every reason either variant had, 0 where the other had none.
    assert rows["suppressed: opted_out_sms"].split()[-2:] == ["2", "0"]
    assert rows["suppressed: outside_contact_window"].split()[-2:] == ["0", "97"]
    # Columns line up: every row is as long as the header.
    assert len({len(line) for line in lines[1:]}) == 1


def test_a_product_without_variants_and_an_empty_period_read_plainly() -> None:
    report = copy.deepcopy(REPORT)
    report["groups"] = [group("", 3, 0.5, False)]
    assert format_measures(report).splitlines()[1].strip() == "(no variant)"
    report["groups"] = []
    assert "(no cases in the period)" in format_measures(report)


def test_the_period_reads_to_the_minute_in_utc() -> None:
    report = {"from": "2026-12-04T15:06:59.123456Z", "to": "2026-12-06T16:08:00+01:00"}
    assert period(report) == "2026-12-04 15:06 to 2026-12-06 15:08 UTC"


def test_stages_follow_escalation_order_and_unknown_ones_are_kept() -> None:
    groups = copy.deepcopy(REPORT["groups"])
    groups[0]["stage_funnel"] = {"pre_delinquency": 3, **groups[0]["stage_funnel"]}
    assert stage_order(groups, "roll_rates_by_stage") == [
        "warning",
        "formal_notice",
        "guarantor_recourse",
        "litigation",
    ]
    assert stage_order(groups, "stage_funnel") == [
        "warning",
        "formal_notice",
        "guarantor_recourse",
        "litigation",
        "enforcement",
        "pre_delinquency",
    ]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_chart_is_a_png_of_the_funnel_and_roll_rates(tmp_path: Path) -> None:
    path = draw_chart(REPORT, tmp_path / "charts" / "measures.png")
    assert path == tmp_path / "charts" / "measures.png"
    assert png_size(path) == (1300, 550)
    # Two panels of bars, labels and legends: far more than an empty canvas.
    assert path.stat().st_size > 20_000


def test_the_chart_draws_even_with_nothing_to_show(tmp_path: Path) -> None:
    empty = {**REPORT, "groups": []}
    assert png_size(draw_chart(empty, tmp_path / "empty.png")) == (1300, 550)


async def test_the_demo_asks_the_workflow_for_the_measures_per_variant() -> None:
    asked: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, json=REPORT)

    start = datetime(2026, 11, 1, tzinfo=UTC)
    end = datetime(2026, 12, 1, tzinfo=UTC)
    report = await demo.measures_by_variant(
        "http://workflow", start, end, transport=httpx.MockTransport(answer)
    )
    assert report == REPORT
    (request,) = asked
    assert request.url.path == "/v1/kpis"
    assert dict(request.url.params) == {
        "group_by": "variant",
        "from": "2026-11-01T00:00:00+00:00",
        "to": "2026-12-01T00:00:00+00:00",
    }
    assert request.headers["authorization"].startswith("Bearer ")


async def test_the_demo_fails_loudly_without_the_endpoint() -> None:
    def missing(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"title": "Not Found"})

    now = datetime(2026, 12, 1, tzinfo=UTC)
    # A missing endpoint must not pass for an empty report.
    with pytest.raises(httpx.HTTPStatusError) as raised:
        await demo.measures_by_variant(
            "http://workflow", now, now, transport=httpx.MockTransport(missing)
        )
    assert raised.value.response.status_code == 404
