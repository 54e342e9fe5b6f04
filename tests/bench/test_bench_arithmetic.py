"""The bench's arithmetic: which runs a ratio is taken from, and how the pipeline's plumbing
is priced. The bench itself is not part of the suite (it takes twenty minutes and its
figures are timings); what it computes from its measurements is."""

from __future__ import annotations

import os
from typing import Any

import pytest

from bench.run import (
    Baseline,
    WorkDone,
    cost_ratio,
    per_part_us,
    per_unit_us,
    plumbing,
    process_cpu_s,
    rows_by_table,
    scale_order,
)


def _run(existing: int, us: float, cpu: float | None = None) -> dict[str, Any]:
    return {
        "existing_cases": existing,
        "us_per_event": us,
        "machine_cpu_us_per_event": cpu if cpu is not None else us * 2,
    }


def test_the_smallest_size_brackets_the_largest() -> None:
    assert scale_order((1_000_000, 10_000, 100_000)) == [10_000, 100_000, 1_000_000, 10_000]
    assert scale_order((5_000,)) == [5_000]  # one size: nothing to bracket


def test_the_ratio_divides_by_the_mean_of_the_smallest_size_runs() -> None:
    runs = [_run(10_000, 70.0), _run(100_000, 80.0), _run(1_000_000, 90.0), _run(10_000, 110.0)]
    ratio = cost_ratio(runs)
    # 90 / mean(70, 110) = 1.0, where the first run alone would have said 1.286.
    assert ratio["cost_ratio_largest_vs_smallest"] == 1.0
    assert ratio["machine_cpu_cost_ratio_largest_vs_smallest"] == 1.0
    assert ratio["smallest_size_us_per_event"] == [70.0, 110.0]


def test_the_cpu_ratio_is_absent_without_cpu_figures() -> None:
    runs = [{**_run(10_000, 70.0), "machine_cpu_us_per_event": None}, _run(1_000_000, 90.0)]
    assert cost_ratio(runs)["machine_cpu_cost_ratio_largest_vs_smallest"] is None


def test_plumbing_prices_each_record_and_row_at_the_baselines() -> None:
    flow = {"messages_consumed_per_loan": 7.0, "rows_written_per_loan": 38.0}
    priced = plumbing(flow, Baseline(14_000.0, 43.5), Baseline(52_000.0, 18.8))
    assert priced["plumbing_cpu_us_per_loan"] == pytest.approx(7 * 43.5 + 38 * 18.8)
    cores = priced["ceiling_loans_per_s"] * priced["plumbing_cpu_us_per_loan"] / 1e6
    assert cores == pytest.approx(os.cpu_count() or 1, rel=1e-3)


def test_plumbing_is_not_priced_without_the_baselines_cpu() -> None:
    flow = {"messages_consumed_per_loan": 7.0, "rows_written_per_loan": 38.0}
    assert plumbing(flow, Baseline(14_000.0, None), Baseline(52_000.0, 18.8)) == {}


def test_cpu_per_unit() -> None:
    assert per_unit_us(10.0, 12.5, 1_000) == 2500.0
    assert per_unit_us(None, 12.5, 1_000) is None
    assert per_unit_us(10.0, 12.5, 0) is None


def test_rows_by_table_splits_each_tables_writes_per_loan() -> None:
    before = WorkDone(0, {"w.outbox": (10, 0, 10), "w.cases": (5, 5, 0), "n.idle": (3, 0, 0)})
    after = WorkDone(
        0,
        {
            "w.outbox": (210, 0, 210),
            "w.cases": (105, 105, 0),
            "n.idle": (3, 0, 0),
            "n.new": (100, 0, 0),
        },
    )
    assert rows_by_table(before, after, 100) == {
        "w.outbox": {"inserted": 2.0, "deleted": 2.0},
        "w.cases": {"inserted": 1.0, "updated": 1.0},
        "n.new": {"inserted": 1.0},
    }
    assert after.rows_written - before.rows_written == 700


def test_each_part_is_priced_per_loan_from_its_own_processes() -> None:
    started = {"workflow": 1.0, "postgresql": 2.0}
    ended = {"workflow": 1.5, "postgresql": 2.25, "bench": 0.1}

    # A part seen only at the end (its process started meanwhile) counts from zero.
    assert per_part_us(started, ended, 1000) == {
        "workflow": 500.0,
        "postgresql": 250.0,
        "bench": 100.0,
    }
    assert per_part_us(started, ended, 0) == {}


def test_a_process_cpu_is_read_and_a_gone_one_is_zero() -> None:
    sum(i * i for i in range(200_000))  # some CPU of our own

    assert process_cpu_s(os.getpid()) > 0
    assert process_cpu_s(2**22 + 1) == 0.0  # above the kernel's pid limit: no such process
