"""The DBOS peer's pure parts: when it holds a contact (outside the borrower's local contact
hours, until they start), and how the bench judges its figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from bench.peers.dbos.app import CONTACT_HOURS, seconds_until_contact_hours
from bench.run import peer_floors, peer_rows


def test_inside_the_hours_nothing_is_held() -> None:
    # 12:00 UTC is 13:00 in London in winter.
    assert seconds_until_contact_hours("Europe/London", datetime(2026, 12, 4, 12, tzinfo=UTC)) == 0


def test_at_night_the_contact_waits_for_eight_oclock_local() -> None:
    # 23:30 UTC is 07:30 the next day in Shanghai: half an hour to wait.
    at = datetime(2026, 12, 4, 23, 30, tzinfo=UTC)
    assert seconds_until_contact_hours("Asia/Shanghai", at) == 1800
    # 21:00 in London: eleven hours to 08:00 the next morning.
    assert seconds_until_contact_hours("Europe/London", datetime(2026, 12, 4, 21, tzinfo=UTC)) == (
        11 * 3600
    )


@given(
    st.datetimes(timezones=st.just(UTC)),
    st.sampled_from(["Asia/Shanghai", "America/New_York", "Europe/London"]),
)
def test_the_wait_ends_inside_the_hours_and_within_a_day(at: datetime, zone: str) -> None:
    wait = seconds_until_contact_hours(zone, at)
    assert 0 <= wait < 24 * 3600
    if wait:
        assert (at + timedelta(seconds=wait)).astimezone(ZoneInfo(zone)).hour in CONTACT_HOURS


def _result(peer: dict[str, Any]) -> dict[str, Any]:
    return {"pipeline": {"loans_per_s": 900.0}, "peer": {"dbos": peer}}


def _peer(**changes: Any) -> dict[str, Any]:
    figures = {
        "loans": 100,
        "loans_per_s": 450.0,
        "machine_cpu_us_per_loan": 4000.0,
        "peer_process_cpu_us_per_loan": 2000.0,
        "smtp_sink_cpu_us_per_loan": 300.0,
        "rows_written_per_loan": 9.0,
        "mailed_once": 100,
        "mailed_twice_or_more": 0,
        "repaid": 2,
        "repaid_mailed": 0,
        "repaid_cancelled": 2,
    }
    return {**figures, **changes}


def test_the_pipeline_must_run_at_twice_the_peers_rate() -> None:
    assert peer_floors(_result(_peer()))["pipeline >= 2 x DBOS peer"]
    assert not peer_floors(_result(_peer(loans_per_s=450.1)))["pipeline >= 2 x DBOS peer"]


def test_a_peer_that_mailed_a_repaid_loan_or_one_twice_fails_its_floor() -> None:
    floor = "DBOS peer: each contact mailed once, each repaid one cancelled"
    assert peer_floors(_result(_peer()))[floor]
    assert not peer_floors(_result(_peer(repaid_mailed=1)))[floor]
    assert not peer_floors(_result(_peer(mailed_twice_or_more=1, mailed_once=99)))[floor]
    assert not peer_floors(_result(_peer(repaid_cancelled=1)))[floor]


def test_a_failed_peer_is_reported_and_fails_without_a_rate() -> None:
    failed = _result({"error": "TimeoutError('waiting for every e-mail')"})
    assert peer_floors(failed) == {"DBOS peer ran": False}
    assert peer_rows(failed) == [("peer.dbos", "failed: TimeoutError('waiting for every e-mail')")]


def test_a_result_without_a_peer_has_no_peer_floors_or_rows() -> None:
    assert peer_floors({"pipeline": {"loans_per_s": 900.0}}) == {}
    assert peer_rows({}) == []


def test_issue_25s_floors_are_checked_on_the_run() -> None:
    from bench.run import floors

    result = _result(_peer())
    result.update(
        ingest={"events_per_s": 12_000, "share_of_kafka_baseline": 0.51},
        suppression_ms={"p99": 29.0},
        scale={"cost_ratio_largest_vs_smallest": 1.0, "peak_rss_mb": {"workflow": 200}},
    )
    result["pipeline"].update(
        loans_per_s=2_000.0,
        rows_written_per_loan=20.0,
        machine_cpu_us_per_loan=1_500.0,
        plumbing={"plumbing_cpu_us_per_loan": 750.0},
    )
    assert all(floors(result).values()), floors(result)
    result["pipeline"].update(rows_written_per_loan=24.04, machine_cpu_us_per_loan=1_600.0)
    result["suppression_ms"]["p99"] = 46.9
    result["ingest"]["share_of_kafka_baseline"] = 0.49
    missed = {k for k, ok in floors(result).items() if not ok}
    assert missed == {
        "ingest >= 0.5 x kafka baseline",
        "pipeline rows written per loan <= 20",
        "pipeline machine CPU per loan <= 2 x plumbing alone",
        "suppression p99 <= 30 ms",
    }
