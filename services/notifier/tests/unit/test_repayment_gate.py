"""The repayment gate's logic, over a fake of the repayments topic's offsets (the port)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from notifier.app.repayment_gate import RepaymentGate


class FakeLog:
    """Log end and committed offsets per partition, as a test sets them."""

    def __init__(self, partitions: int = 2) -> None:
        self.end = dict.fromkeys(range(partitions), 0)
        self.committed = dict.fromkeys(range(partitions), 0)
        self.failing: Exception | None = None
        self.closed = False

    async def ends(self) -> dict[int, int]:
        if self.failing is not None:
            raise self.failing
        return dict(self.end)

    async def consumed(self, ends: Mapping[int, int]) -> dict[int, int]:
        return {p: self.committed[p] for p in ends}

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def gate_over(log: FakeLog, clock: Clock) -> RepaymentGate:
    return RepaymentGate(log, max_lag_s=2.0, look_every_s=0.25, monotonic=clock)


async def test_closed_until_a_first_look_and_open_on_a_quiet_topic() -> None:
    log, clock = FakeLog(), Clock()
    gate = gate_over(log, clock)
    assert not gate.is_open()
    await gate.look()
    assert gate.is_open()
    assert gate.held() is None


async def test_repayments_not_committed_on_any_partition_close_it_until_they_are() -> None:
    # Partition 1 is another replica's: this replica's own being current is not enough.
    log, clock = FakeLog(), Clock()
    log.end = {0: 5, 1: 7}
    log.committed = {0: 5, 1: 4}
    gate = gate_over(log, clock)
    await gate.look()
    assert not gate.is_open()
    assert gate.held() == (
        "contact dispatch held: repayments not yet known applied (3 records behind)"
    )
    clock.t += 0.25
    log.committed[1] = 7
    await gate.look()
    assert gate.is_open()


async def test_under_steady_traffic_it_stays_open_while_marks_are_reached_in_time() -> None:
    log, clock = FakeLog(1), Clock()
    gate = gate_over(log, clock)
    for _ in range(20):  # each look sees 10 new records; the group commits the previous 10
        log.end[0] += 10
        await gate.look()
        log.committed[0] = log.end[0]
        clock.t += 0.25
    assert gate.is_open()
    # The group stops committing (its replica died); records keep coming.
    for _ in range(7):
        log.end[0] += 10
        await gate.look()
        clock.t += 0.25
    assert gate.is_open()  # current as of 2 s ago: still within the allowed lag
    log.end[0] += 10
    await gate.look()
    clock.t += 0.25
    assert not gate.is_open()
    assert gate.held() == (
        "contact dispatch held: repayments known applied only up to 2.2s ago (80 records behind)"
    )
    # The new owner catches up: every mark taken meanwhile is reached.
    log.committed[0] = log.end[0]
    await gate.look()
    assert gate.is_open()


async def test_a_partition_of_no_new_records_keeps_it_open_while_the_group_is_down() -> None:
    log, clock = FakeLog(), Clock()
    log.end = log.committed = {0: 3, 1: 3}
    gate = gate_over(log, clock)
    for _ in range(40):  # ten seconds of a rebalance, no repayment published: nothing missed
        await gate.look()
        clock.t += 0.25
    assert gate.is_open()


async def test_without_a_good_look_it_ages_and_closes_and_says_the_topic_is_unreadable() -> None:
    log, clock = FakeLog(), Clock()
    gate = gate_over(log, clock)
    await gate.look()
    log.failing = ConnectionError("broker down")
    stop = asyncio.Event()
    running = asyncio.create_task(gate.run(stop))
    await asyncio.sleep(0.05)
    assert gate.is_open()  # a look 0 s ago
    clock.t += 2.5
    assert not gate.is_open()
    assert gate.held() == ("contact dispatch held: repayments topic unreadable (ConnectionError)")
    stop.set()
    await running
    assert log.closed


async def test_opened_returns_when_a_look_opens_it_or_when_the_time_is_up() -> None:
    log = FakeLog(1)
    log.end[0] = 1
    gate = RepaymentGate(log, max_lag_s=2.0, look_every_s=0.01)  # the real clock: run() waits
    stop = asyncio.Event()
    running = asyncio.create_task(gate.run(stop))
    try:
        await gate.opened(stop, within=0.1)
        assert not gate.is_open()
        log.committed[0] = 1
        await asyncio.wait_for(gate.opened(stop, within=10), timeout=1)
        assert gate.is_open()
    finally:
        stop.set()
        await running
