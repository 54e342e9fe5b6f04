"""The measures (domain/measures.py) read from the case timelines, and the
``collections_kpi_*`` gauges kept from them (docs/measures.md).

The gauges are set, never counted up: each refresh recomputes them from the database over
the trailing window, so a restart or another replica shows the same figures. One polling
worker of the runtime does it, at a long interval (the query reads every case touched in
the window)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta

from collections_kit.clock import Clock
from collections_kit.worker import PollingWorker, RunsOnAPollingWorker
from workflow.app.ports import StartUnitOfWork, WorkflowUnitOfWork
from workflow.domain.measures import GroupBy, GroupMeasures, Measurement, Ratio
from workflow.metrics import (
    KPI_CASES,
    KPI_DENOMINATOR,
    KPI_NUMERATOR,
    KPI_RATIOS,
    KPI_REFRESHED,
    KPI_STAGE_FUNNEL,
    KPI_STAGE_ROLL_RATE,
    KPI_SUPPRESSED,
    KPI_WINDOW,
)

# Cases read per page: memory holds one page of timelines, not the portfolio.
PAGE = 2_000


async def measured(
    uow: WorkflowUnitOfWork,
    start: datetime,
    end: datetime,
    group_by: GroupBy,
    *,
    page: int = PAGE,
) -> list[GroupMeasures]:
    """The measures of ``[start, end)`` per group, from what the cases recorded, read a
    page of cases at a time in one transaction (one snapshot)."""
    measurement = Measurement(start, end, group_by)
    after = ""
    while True:
        histories = await uow.cases.histories(start, end, after=after, limit=page)
        measurement.add(histories)
        if len(histories) < page:
            return measurement.groups()
        after = histories[-1].case_id


def _gauge_value(ratio: Ratio) -> float:
    value = ratio.value
    return math.nan if value is None else value


def publish(groups: Sequence[GroupMeasures], window: timedelta, at: datetime) -> None:
    """Set the gauges to ``groups`` (by variant); a variant no longer there is dropped.
    Synchronous: a scrape never sees a half-set family."""
    families = (
        *KPI_RATIOS.values(),
        KPI_NUMERATOR,
        KPI_DENOMINATOR,
        KPI_CASES,
        KPI_STAGE_ROLL_RATE,
        KPI_STAGE_FUNNEL,
        KPI_SUPPRESSED,
    )
    for family in families:
        family.clear()
    for g in groups:
        KPI_CASES.labels(g.group).set(g.cases)
        for name, ratio in g.measures.items():
            KPI_RATIOS[name].labels(g.group).set(_gauge_value(ratio))
            KPI_NUMERATOR.labels(g.group, name).set(float(ratio.numerator))
            KPI_DENOMINATOR.labels(g.group, name).set(float(ratio.denominator))
        for stage, ratio in g.roll_rates_by_stage.items():
            KPI_STAGE_ROLL_RATE.labels(g.group, stage).set(_gauge_value(ratio))
        for stage, n in g.stage_funnel.items():
            KPI_STAGE_FUNNEL.labels(g.group, stage).set(n)
        for reason, n in g.suppressed_contacts.items():
            KPI_SUPPRESSED.labels(g.group, reason).set(n)
    KPI_WINDOW.set(window.total_seconds())
    KPI_REFRESHED.set(at.timestamp())


class KpiGauges(RunsOnAPollingWorker):
    """Recomputes the KPI gauges every ``every_s`` seconds over the trailing ``window``."""

    def __init__(
        self, uow: StartUnitOfWork, clock: Clock, *, window: timedelta, every_s: float
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._window = window
        # The first refresh one interval after the start: a restart (or a fleet of them)
        # does not read every timeline at once.
        self._worker = PollingWorker(
            "kpi gauges", self.refresh, interval_s=every_s, idle_first=True
        )

    async def refresh(self) -> bool:
        end = self._clock.now()
        async with self._uow() as uow:
            groups = await measured(uow, end - self._window, end, GroupBy.VARIANT)
        publish(groups, self._window, end)
        return False
