"""The polling worker every background loop runs in: wake, interval, backoff, heartbeat, stop.

Its waits run on fake ticks: time moves only when a test (or, ``auto``, the wait itself)
moves it, so nothing here waits for real.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from collections_kit.runtime import STALL_AFTER_S
from collections_kit.worker import (
    BACKOFF_CAP_S,
    BEAT_EVERY_S,
    MIN_IDLE_S,
    PollingWorker,
    RealTicks,
    backoff_after,
)


class FakeTicks:
    """A monotonic clock and waits that end when the clock passes their end (or an event is
    set). ``auto``: every wait moves the clock by its own length at once."""

    def __init__(self, *, auto: bool = False) -> None:
        self.now = 1000.0
        self.auto = auto
        self.waits: list[float] = []
        self._moved = asyncio.Event()

    def monotonic(self) -> float:
        return self.now

    async def wait(self, seconds: float, *events: asyncio.Event) -> None:
        self.waits.append(seconds)
        if self.auto:
            if not any(event.is_set() for event in events):
                self.now += seconds
            await asyncio.sleep(0)
            return
        end = self.now + seconds
        while self.now < end and not any(event.is_set() for event in events):
            waiters = [asyncio.ensure_future(e.wait()) for e in (self._moved, *events)]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        self._moved.set()
        self._moved = asyncio.Event()
        await settle()


async def settle() -> None:
    """Let every task run until it waits on something."""
    for _ in range(20):
        await asyncio.sleep(0)


class Rounds:
    """A round that counts its calls and does what the test has queued (else returns False)."""

    def __init__(self) -> None:
        self.calls = 0
        self.script: list[Callable[[], Awaitable[bool]]] = []

    async def __call__(self) -> bool:
        self.calls += 1
        if self.script:
            return await self.script.pop(0)()
        return False


def returns(more: bool) -> Callable[[], Awaitable[bool]]:
    async def round_() -> bool:
        return more

    return round_


def raises(error: Exception) -> Callable[[], Awaitable[bool]]:
    async def round_() -> bool:
        raise error

    return round_


def waits_for(event: asyncio.Event) -> Callable[[], Awaitable[bool]]:
    async def round_() -> bool:
        await event.wait()
        return False

    return round_


class Running:
    """A worker's run() as a task, stopped and awaited at the end of the test."""

    def __init__(self, worker: PollingWorker) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(worker.run(self.stop))

    async def __aenter__(self) -> Running:
        await settle()
        return self

    async def __aexit__(self, *_: object) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=1)


async def test_a_wake_starts_the_next_round_before_the_interval() -> None:
    ticks, rounds = FakeTicks(), Rounds()
    worker = PollingWorker("w", rounds, interval_s=60, ticks=ticks)
    async with Running(worker):
        assert rounds.calls == 1
        worker.wake()
        await settle()
        assert rounds.calls == 2
        assert ticks.now == 1000.0  # no time had to pass


async def test_a_wake_during_a_round_is_not_lost() -> None:
    ticks, rounds = FakeTicks(), Rounds()
    worker = PollingWorker("w", rounds, interval_s=60, ticks=ticks)

    async def notified_meanwhile() -> bool:
        worker.wake()  # a pg_notify while the round still runs
        return False

    rounds.script = [notified_meanwhile]
    async with Running(worker):
        await settle()
        assert rounds.calls == 2
        assert ticks.now == 1000.0


async def test_an_idle_worker_rounds_again_after_the_interval() -> None:
    ticks, rounds = FakeTicks(), Rounds()
    async with Running(PollingWorker("w", rounds, interval_s=3, ticks=ticks)):
        assert rounds.calls == 1
        await ticks.advance(2.9)
        assert rounds.calls == 1
        await ticks.advance(0.1)
        assert rounds.calls == 2


async def test_a_round_with_more_waiting_is_followed_at_once() -> None:
    ticks, rounds = FakeTicks(), Rounds()
    rounds.script = [returns(True), returns(True)]
    async with Running(PollingWorker("w", rounds, interval_s=3, ticks=ticks)):
        assert rounds.calls == 3
        assert ticks.waits == [3]


@pytest.mark.parametrize(
    ("due_in", "idled"),
    [(1.5, 1.5), (None, 3.0), (100.0, 3.0), (0.0, MIN_IDLE_S), (-5.0, MIN_IDLE_S)],
)
async def test_idle_for_brings_the_next_round_forward_but_never_past_the_interval(
    due_in: float | None, idled: float
) -> None:
    ticks, rounds = FakeTicks(), Rounds()

    async def idle_for() -> float | None:
        return due_in

    async with Running(PollingWorker("w", rounds, interval_s=3, idle_for=idle_for, ticks=ticks)):
        assert ticks.waits == pytest.approx([idled])


async def test_a_scheduled_worker_waits_one_interval_before_its_first_round() -> None:
    ticks, rounds = FakeTicks(), Rounds()
    async with Running(PollingWorker("w", rounds, interval_s=12, idle_first=True, ticks=ticks)):
        assert rounds.calls == 0
        await ticks.advance(11)
        assert rounds.calls == 0
        await ticks.advance(1)
        assert rounds.calls == 1


def test_the_backoff_doubles_up_to_its_one_cap() -> None:
    assert [backoff_after(n) for n in range(1, 10)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        3.2,
        BACKOFF_CAP_S,
        BACKOFF_CAP_S,
        BACKOFF_CAP_S,
    ]


async def test_failed_rounds_back_off_to_the_cap_and_start_over_after_a_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="collections_kit.worker")
    ticks, rounds = FakeTicks(auto=True), Rounds()
    worker = PollingWorker("the relay", rounds, interval_s=60, ticks=ticks)
    stop = asyncio.Event()
    rounds.script = [raises(RuntimeError("broker away")) for _ in range(8)]
    rounds.script += [returns(True), raises(RuntimeError("again"))]

    async def last() -> bool:
        stop.set()
        return False

    rounds.script.append(last)
    await asyncio.wait_for(worker.run(stop), timeout=1)  # never raised: logged
    assert ticks.waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 0.1]
    failures = [r for r in caplog.records if r.name == "collections_kit.worker"]
    assert len(failures) == 9
    assert failures[0].getMessage() == "the relay failed; retrying in 0.1s"
    assert failures[0].exc_info is not None
    assert str(failures[0].exc_info[1]) == "broker away"


async def test_a_worker_told_its_errors_may_quote_contact_details_logs_frames_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="collections_kit.worker")
    ticks, rounds = FakeTicks(), Rounds()
    rounds.script = [raises(ValueError("zhang.san@example.com"))]
    async with Running(PollingWorker("w", rounds, interval_s=60, quote_errors=False, ticks=ticks)):
        pass
    (record,) = [r for r in caplog.records if r.name == "collections_kit.worker"]
    assert record.exc_info is None
    assert vars(record)["error"] == "ValueError"
    assert "zhang.san" not in f"{record.getMessage()} {vars(record)}"


async def test_the_heartbeat_advances_after_a_round_and_while_idle() -> None:
    ticks, rounds = FakeTicks(), Rounds()
    worker = PollingWorker("w", rounds, interval_s=600, ticks=ticks)
    ticks.now = 1010.0
    async with Running(worker):
        assert worker.heartbeat == 1010.0
        for _ in range(20):  # ten minutes idle, never longer than a beat without one
            await ticks.advance(BEAT_EVERY_S)
            assert worker.heartbeat == ticks.now
        assert rounds.calls == 1


async def test_the_heartbeat_stands_still_while_a_round_hangs_so_liveness_sees_a_stall() -> None:
    ticks, rounds = FakeTicks(), Rounds()
    worker = PollingWorker("w", rounds, interval_s=1, ticks=ticks)
    released = asyncio.Event()
    rounds.script = [returns(False), waits_for(released)]
    async with Running(worker):
        await ticks.advance(1)  # the second round starts, and hangs
        assert rounds.calls == 2
        beaten = worker.heartbeat
        await ticks.advance(STALL_AFTER_S + 1)
        assert worker.heartbeat == beaten
        assert ticks.now - worker.heartbeat > STALL_AFTER_S
        released.set()
        await settle()
        assert worker.heartbeat == ticks.now


async def test_a_round_beats_from_inside_as_it_makes_progress() -> None:
    ticks, rounds = FakeTicks(), Rounds()
    worker = PollingWorker("w", rounds, interval_s=60, ticks=ticks)
    page_done = asyncio.Event()

    async def long_pass() -> bool:
        ticks.now += 30
        worker.beat()
        page_done.set()
        await worker.stopping.wait()  # the rest takes long
        return False

    rounds.script = [long_pass]
    async with Running(worker):
        assert page_done.is_set()
        assert worker.heartbeat == 1030.0


async def test_the_heartbeat_stands_still_while_every_round_fails() -> None:
    ticks = FakeTicks(auto=True)
    started = ticks.now
    stop = asyncio.Event()

    async def failing() -> bool:
        if ticks.now - started > STALL_AFTER_S + 10:
            stop.set()
        raise ConnectionError("database away")

    worker = PollingWorker("w", failing, interval_s=1, ticks=ticks)
    await asyncio.wait_for(worker.run(stop), timeout=1)
    assert worker.heartbeat == started


async def test_stop_ends_an_idle_wait_at_once_and_runs_on_stop() -> None:
    ticks, rounds, closed = FakeTicks(), Rounds(), asyncio.Event()

    async def close() -> None:
        closed.set()

    worker = PollingWorker("w", rounds, interval_s=3600, on_stop=close, ticks=ticks)
    async with Running(worker) as running:
        running.stop.set()
        await asyncio.wait_for(running.task, timeout=1)
    assert closed.is_set()
    assert rounds.calls == 1
    assert ticks.now == 1000.0


async def test_stop_ends_a_backoff_at_once() -> None:
    ticks, rounds = FakeTicks(), Rounds()
    rounds.script = [raises(RuntimeError("down"))]
    async with Running(PollingWorker("w", rounds, interval_s=60, ticks=ticks)) as running:
        assert ticks.waits == [0.1]
        running.stop.set()
        await asyncio.wait_for(running.task, timeout=1)
    assert rounds.calls == 1


async def test_stop_lets_a_round_in_progress_finish() -> None:
    ticks, rounds = FakeTicks(), Rounds()
    worker = PollingWorker("w", rounds, interval_s=60, ticks=ticks)
    finished = asyncio.Event()

    async def finishes_when_stopping() -> bool:
        await worker.stopping.wait()  # a round may wait on the worker's stop too
        finished.set()
        return True  # more waiting: not taken, the worker is stopping

    rounds.script = [finishes_when_stopping]
    async with Running(worker) as running:
        running.stop.set()
        await asyncio.wait_for(running.task, timeout=1)
    assert finished.is_set()
    assert rounds.calls == 1


async def test_on_stop_runs_when_the_worker_is_cancelled_mid_round() -> None:
    ticks, closed = FakeTicks(), asyncio.Event()

    async def close() -> None:
        closed.set()

    worker = PollingWorker(
        "w", waits_for(asyncio.Event()), interval_s=60, on_stop=close, ticks=ticks
    )
    task = asyncio.create_task(worker.run(asyncio.Event()))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()


async def test_real_ticks_wait_ends_when_an_event_is_set_or_the_time_is_up() -> None:
    ticks, event = RealTicks(), asyncio.Event()
    waiting = asyncio.create_task(ticks.wait(60, asyncio.Event(), event))
    await settle()
    assert not waiting.done()
    event.set()
    await asyncio.wait_for(waiting, timeout=1)
    await asyncio.wait_for(ticks.wait(0.001, asyncio.Event()), timeout=1)
    await asyncio.wait_for(ticks.wait(0.001), timeout=1)
    started = ticks.monotonic()
    await ticks.wait(60, event)  # already set: no wait at all
    assert ticks.monotonic() - started < 1
