"""REST for collection managers: the measures (KPIs) of a period, per variant, stage,
product or jurisdiction, computed when asked from the case timelines (``domain/measures``);
docs/measures.md defines each. The same figures are the ``collections_kpi_*`` gauges on
``/metrics`` (``app/kpis.py``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from collections_kit.problems import PROBLEM_RESPONSES
from workflow.app.kpis import measured
from workflow.domain.measures import GroupBy, GroupMeasures, Ratio
from workflow.entrypoints.api import Reader, Reads, Timestamp

router = APIRouter(prefix="/v1", tags=["reports"])

# The longest period one request may ask for: the answer reads every case touched in it.
MAX_PERIOD = timedelta(days=366)
DEFAULT_PERIOD = timedelta(days=30)


class Measure(BaseModel):
    value: float | None = Field(
        description="numerator / denominator; null when the denominator is 0 (nothing to "
        "measure, which is not a rate of 0)."
    )
    numerator: float
    denominator: float

    @classmethod
    def of(cls, ratio: Ratio) -> Measure:
        return cls(
            value=ratio.value,
            numerator=float(ratio.numerator),
            denominator=float(ratio.denominator),
        )


class Measures(BaseModel):
    roll_rate: Measure = Field(
        description="Of the cases in a stage that can roll (warning to litigation) at the "
        "start of the period or entering it during the period, the share that moved from "
        "it to a later stage within the period. Numerator and denominator are summed over "
        "the stages (a case counts once per stage)."
    )
    cure_rate: Measure = Field(
        description="Of the cases that entered the group in the period (opened in it; by "
        "stage: entered that stage in it), the share closed repaid or settled at the end "
        "of the period (by stage: closed from that stage)."
    )
    promise_kept_rate: Measure = Field(
        description="Of the promises judged in the period (each instalment of a promise "
        "to pay or a plan, judged at its due date, or earlier when the whole arrangement "
        "was fulfilled), the share kept: paid in full by then, partial payments adding "
        "up. Instalments whose arrangement was cancelled first are not judged."
    )
    right_party_contact_rate: Measure = Field(
        description="Of the calls made in the period (automated voice contacts handed to "
        "the channel, collectors' recorded results, agencies' permit results), the share "
        "that reached the borrower themself (an automated call to the borrower answered; "
        "a collector's right-party result on a borrower task; an agency's conversation "
        "with the borrower)."
    )
    contacts_per_cure: Measure = Field(
        description="Contact attempts (any channel, automated, collector or agency) in "
        "the period on the cases of the cure rate's cohort, per cure of that cohort."
    )
    days_to_cure: Measure = Field(
        description="Mean days from a cured case's entry into the group (its opening; by "
        "stage: its last entry into that stage) to its closure: numerator = total days, "
        "denominator = cures."
    )
    liquidation_rate: Measure = Field(
        description="Of the amounts placed with agencies by placements begun in the "
        "period (the outstanding balance at placement), the share collected under them "
        "(net of reversals) by the end of the period. Amounts are summed as recorded, "
        "without currency conversion."
    )


class KpiGroup(BaseModel):
    group: str = Field(
        description="The variant, stage, product or jurisdiction ('' for cases of a "
        "product without variants)."
    )
    cases: int = Field(
        description="Cases of the group not closed at some moment of the period (by "
        "stage: in that stage, not closed)."
    )
    measures: Measures
    roll_rates_by_stage: dict[str, Measure] = Field(
        description="The roll rate of each stage that can roll (by stage: of that stage)."
    )
    stage_funnel: dict[str, int] = Field(
        description="Per stage, the cases of the group that entered it in the period "
        "(opened in warning, escalated, or stepped back into it)."
    )
    suppressed_contacts: dict[str, int] = Field(
        description="Contacts withheld in the period, by reason code, each contact once "
        "per reason: the notifier's decisions to block, cancel or defer (e.g. "
        "outside_contact_window, opted_out_sms, repaid), the workflow's own when the "
        "ledger could not confirm the balance, and contacts the workflow cancelled while "
        "they waited (repaid, held, ...)."
    )


class KpiReport(BaseModel):
    from_: datetime = Field(alias="from", description="The period's start (included).")
    to: datetime = Field(description="The period's end (excluded).")
    group_by: GroupBy
    groups: list[KpiGroup] = Field(
        description="Every group with a case exposed at the start or an entry in the "
        "period, in name order."
    )

    model_config = {"populate_by_name": True}


def _group(g: GroupMeasures) -> KpiGroup:
    return KpiGroup(
        group=g.group,
        cases=g.cases,
        measures=Measures(**{name: Measure.of(r) for name, r in g.measures.items()}),
        roll_rates_by_stage={s: Measure.of(r) for s, r in g.roll_rates_by_stage.items()},
        stage_funnel=dict(g.stage_funnel),
        suppressed_contacts=dict(g.suppressed_contacts),
    )


def _invalid(parameter: str, message: str) -> RequestValidationError:
    """A problem document naming the parameter, as for any other invalid parameter."""
    return RequestValidationError(
        [{"loc": ("query", parameter), "type": "value_error", "msg": message}]
    )


@router.get(
    "/kpis",
    response_model=KpiReport,
    response_model_by_alias=True,
    responses=PROBLEM_RESPONSES,
    summary="Collection measures of a period, per variant, stage, product or jurisdiction",
    description="Computed when asked from what the cases recorded (their timelines), not "
    "from counters: roll rate, cure rate, promise-kept rate, right-party-contact rate, "
    "contacts per cure, days to cure, liquidation rate, the stage funnel and suppressed "
    "contacts by reason. The period is [from, to): at most 366 days; from defaults to 30 "
    "days before to, to to now. Definitions: docs/measures.md.",
)
async def get_kpis(
    uow: Reads,
    _: Reader,
    from_: Annotated[
        Timestamp | None,
        Query(alias="from", description="Start, RFC 3339 with an offset (included)."),
    ] = None,
    to: Annotated[
        Timestamp | None,
        Query(description="End, RFC 3339 with an offset (excluded); after from."),
    ] = None,
    group_by: Annotated[GroupBy, Query(description="What the groups are.")] = GroupBy.VARIANT,
) -> KpiReport:
    async with uow() as work:
        end = to or work.now
        start = from_ or end - DEFAULT_PERIOD
        if end <= start:
            raise _invalid("to", "must be after from")
        if end - start > MAX_PERIOD:
            raise _invalid("from", f"the period is at most {MAX_PERIOD.days} days")
        groups = await measured(work, start, end, group_by)
    return KpiReport(from_=start, to=end, group_by=group_by, groups=[_group(g) for g in groups])
