"""How `make chaos` tells a lost record from one still on its way.

Two full runs of 2026-12-04 reported events lost that were not: the services run on while
the check reads, and the workflow's re-check timers (five minutes after a blocked contact)
fired then. Their messages reached the topics after the check had read the inboxes, and
each was counted lost. A record is lost only below its group's committed offset, read
before the inbox; past it, it is in flight, and is accounted again until handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from collections_kit import contract as c
from collections_kit.envelope import Envelope, MalformedMessageError
from scripts.chaos import account, verdict

TOPIC = "t.case-events"


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int = 0


AT = datetime(2026, 12, 4, tzinfo=UTC)


def envelope(event_id: str, data: c.Message) -> Envelope:
    return Envelope(id=event_id, type="t", source="test", time=AT, subject="L-1", data=data)


def handled(offset: int, partition: int = 0) -> tuple[Record, Envelope]:
    data = c.RepaymentReceived(
        repayment_id=f"R-{partition}-{offset}",
        loan_id="L-1",
        currency="CNY",
        amount=Decimal("1"),
        outstanding_balance_after=Decimal("0"),
        received_at=AT,
    )
    return Record(TOPIC, partition, offset), envelope(f"e-{partition}-{offset}", data)


HANDLES: set[type[c.Message]] = {c.RepaymentReceived}


def test_a_record_past_the_committed_offset_is_in_flight_not_lost() -> None:
    records = [handled(0), handled(1), handled(2)]
    # Offsets 0 and 1 committed; the inbox read after holds both. Offset 2 arrived after
    # the inbox was read (a timer fired meanwhile): in flight.
    accounted = account(records, {f"{TOPIC}/0": 2}, {"e-0-0", "e-0-1"}, HANDLES)
    assert accounted.lost == []
    assert [r.offset for r, _ in accounted.in_flight] == [2]


def test_a_record_below_the_committed_offset_without_a_claim_is_lost() -> None:
    records = [handled(0), handled(1), handled(2), handled(3)]
    accounted = account(records, {f"{TOPIC}/0": 4}, {"e-0-0"}, HANDLES)
    assert [event_id for _, event_id, _ in accounted.lost] == ["e-0-1", "e-0-2", "e-0-3"]
    assert accounted.lost_runs == {f"{TOPIC}/0": [[1, 3]]}


def test_a_partition_never_committed_is_all_in_flight() -> None:
    accounted = account([handled(0, partition=3)], {}, set(), HANDLES)
    assert (accounted.lost, len(accounted.in_flight)) == ([], 1)


def test_a_malformed_record_is_looked_for_by_its_origin_and_skipped_types_not_at_all() -> None:
    bad = (Record(TOPIC, 0, 0), MalformedMessageError("invalid", "no"))
    opened = c.CaseOpened(
        case_id="c-1",
        loan_id="L-1",
        borrower_id="B-1",
        stage="warning",
        policy_version="v1",
        opened_at=AT,
    )
    skipped = (Record(TOPIC, 0, 1), envelope("e-0-1", opened))
    accounted = account([bad, skipped], {f"{TOPIC}/0": 2}, set(), HANDLES)
    assert [event_id for _, event_id, _ in accounted.lost] == [f"{TOPIC}/0/0"]
    assert accounted.in_flight == []


@given(
    committed=st.integers(min_value=0, max_value=30),
    claimed=st.sets(st.integers(min_value=0, max_value=29)),
)
def test_every_handled_record_is_lost_claimed_or_in_flight_exactly_once(
    committed: int, claimed: set[int]
) -> None:
    records = [handled(offset) for offset in range(30)]
    accounted = account(records, {f"{TOPIC}/0": committed}, {f"e-0-{o}" for o in claimed}, HANDLES)
    lost = {r.offset for r, _, _ in accounted.lost}
    in_flight = {r.offset for r, _ in accounted.in_flight}
    assert lost == {o for o in range(committed) if o not in claimed}
    assert in_flight == set(range(committed, 30))


def test_risk_signals_that_opened_no_case_fail_the_run() -> None:
    """A replay equality over cases the early-warning path never reached proves nothing
    about it: signals sent and no pre-delinquency case opened is a failure of its own."""
    clean = {
        "events_lost": {"workflow": 0},
        "commands_dispatched_twice": 0,
        "contacts_after_repayment": {"beyond_race_window": 0},
        "contacts_outside_window": 0,
        "contacts_over_cap": 0,
        "malformed_in_dlq": {"share": 1.0},
        "replay_equal": {"share": 1.0, "pre_delinquency_opened": 12},
        "risk_signals_sent": 150,
    }
    assert verdict(clean) == []
    unopened = {**clean, "replay_equal": {"share": 1.0, "pre_delinquency_opened": 0}}
    assert verdict(unopened) == ["risk signals opened no pre-delinquency case"]
    assert verdict({**unopened, "risk_signals_sent": 0}) == []
