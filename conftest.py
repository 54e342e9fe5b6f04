"""Fixtures shared by every test suite.

Integration and end-to-end tests run against the real local stack (``make stack-up``): a
real Kafka broker and a real PostgreSQL. Each test gets its own database and its own topic
prefix, so tests never see each other's data.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


from tests import stack_guard  # noqa: E402 - needs the root on sys.path, set just above

if TYPE_CHECKING:
    from scripts.lending import Lender
    from tests.provider_double import ProviderDouble
    from tests.smtp_sink import SmtpSink


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # By folder and fixtures (tests/stack_guard.py): `make unit` runs the tests marked unit.
    for item in items:
        stack_guard.mark(item)


# The guard of a run of unit tests alone (tests/stack_guard.py).
GUARD = pytest.StashKey[stack_guard.Guard]()


def pytest_collection_finish(session: pytest.Session) -> None:
    # Only a run of unit tests alone is guarded: in a mixed run a broker client an
    # integration test left closing may still connect while a unit test runs.
    if session.items and not any(stack_guard.needs_stack(i) for i in session.items):
        session.config.stash[GUARD] = stack_guard.guard()


def _watching(item: pytest.Item) -> AbstractContextManager[None]:
    guard = item.config.stash.get(GUARD, None)
    return guard.watching() if guard is not None else nullcontext()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _watching(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _watching(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    with _watching(item):
        return (yield)


@pytest.fixture(scope="session")
def stack() -> dict[str, str]:
    """Start the local stack unless it runs already; return where to reach it."""
    from scripts import stack as local_stack

    local_stack.ensure_up()
    return {
        "kafka_bootstrap": os.environ.get("KAFKA_BOOTSTRAP", local_stack.KAFKA_BOOTSTRAP),
        "database_url": os.environ.get("DATABASE_URL", local_stack.DATABASE_URL),
    }


@pytest.fixture
async def database_url(stack: dict[str, str]) -> AsyncIterator[str]:
    from scripts.infra import create_database, drop_database

    name = f"t_{uuid.uuid4().hex[:12]}"
    url = await create_database(stack["database_url"], name)
    yield url
    await drop_database(stack["database_url"], name)


@pytest.fixture
async def topic_prefix(stack: dict[str, str]) -> AsyncIterator[str]:
    from scripts.infra import create_topics, delete_topics

    prefix = f"t{uuid.uuid4().hex[:10]}."
    await create_topics(stack["kafka_bootstrap"], prefix)
    yield prefix
    await delete_topics(stack["kafka_bootstrap"], prefix)


@pytest.fixture
async def lender(stack: dict[str, str], topic_prefix: str) -> AsyncIterator[Lender]:
    """The lending system, publishing to this test's topics on the real broker."""
    from scripts import lending
    from scripts.infra import producer

    kafka = await producer(stack["kafka_bootstrap"])
    try:
        yield lending.Lender(kafka, topic_prefix)
    finally:
        await kafka.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A real SMTP server on loopback that accepts and keeps every e-mail."""
    from tests.smtp_sink import SmtpSink

    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def provider_double() -> Iterator[ProviderDouble]:
    """The real HTTP SMS/voice provider double on loopback."""
    from tests.provider_double import ProviderDouble

    double = ProviderDouble().start()
    try:
        yield double
    finally:
        double.stop()
