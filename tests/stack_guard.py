"""What keeps ``make unit`` a unit run: which tests need the stack, and a guard that fails a
unit test reaching for it anyway.

A test needs the stack if it asks for the ``stack`` fixture, directly or through another
fixture (``database_url`` and ``topic_prefix`` do), if it lives in an ``integration``,
``e2e`` or ``chaos`` folder, or if it says so with a marker. The root conftest marks it by
these rules, so a new test cannot forget it; every other test is marked ``unit``.

The rules cannot see a test that builds its own connection or starts a program itself, so
a run of unit tests alone (``make unit``, or a folder of them) runs each under a guard: an
audit hook (``sys.addaudithook``) that refuses a connection to a port of the stack and the
start of a process, and fails the test even if the test's code swallowed the refusal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import pytest

STACK_FIXTURES = frozenset({"stack"})
# Folders whose tests run against the stack: integration/ in-process, e2e/ and chaos/ as
# processes.
STACK_FOLDERS = {"integration": "integration", "e2e": "e2e", "chaos": "e2e"}
# Markers of a test that is not a unit test (registered in pyproject.toml).
NOT_UNIT = ("integration", "e2e", "subprocess")

PROCESS_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.posix_spawn", "os.spawn", "os.exec", "os.fork"}
)


class StackTouchedError(RuntimeError):
    """A unit test reached for the stack or started a process."""


def mark(item: pytest.Item) -> None:
    """Marks ``item`` ``integration``/``e2e`` by its folder and fixtures, else ``unit``."""
    for folder in item.path.parts:
        if folder in STACK_FOLDERS:
            item.add_marker(STACK_FOLDERS[folder])
    if STACK_FIXTURES.intersection(getattr(item, "fixturenames", ())) and not needs_stack(item):
        item.add_marker(pytest.mark.integration)
    if not needs_stack(item):
        item.add_marker(pytest.mark.unit)


def needs_stack(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(name) for name in NOT_UNIT)


def stack_ports() -> frozenset[int]:
    """The ports the local stack listens on, as configured for this run."""
    from scripts import stack

    ports = {stack.KAFKA_PORT, stack.KAFKA_CONTROLLER_PORT, stack.PG_PORT}
    if database := os.environ.get("DATABASE_URL"):
        ports.add(urlsplit(database).port or 5432)
    for server in os.environ.get("KAFKA_BOOTSTRAP", "").split(","):
        if server.rpartition(":")[2].isdigit():
            ports.add(int(server.rpartition(":")[2]))
    return frozenset(ports)


class Guard:
    """An audit hook, inert until :meth:`watching` turns it on for one test phase."""

    def __init__(self, ports: frozenset[int]) -> None:
        self.ports = ports
        self._active = False
        self._touched: list[str] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self._active:
            return
        if event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple) and len(address) >= 2 and address[1] in self.ports:
                self._refuse(f"a connection to {address[0]}:{address[1]}")
        elif event in PROCESS_EVENTS:
            self._refuse(f"a process ({event} {args[0]!r})")

    def _refuse(self, what: str) -> None:
        self._touched.append(what)
        raise StackTouchedError(
            f"a unit test may not open {what}: use the stack fixtures (they mark the test "
            "integration) or mark it integration, e2e or subprocess"
        )

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Refuse while inside; then raise :class:`StackTouchedError` if anything was refused,
        whether or not the code under test let the refusal through."""
        outer = self._active, self._touched
        self._active, self._touched = True, []
        try:
            yield
        finally:
            touched = self._touched
            self._active, self._touched = outer
        if touched:
            raise StackTouchedError("a unit test reached for " + "; ".join(touched))


@cache
def guard() -> Guard:
    """The process's one guard (an audit hook cannot be removed, so it is added once)."""
    hook = Guard(stack_ports())
    sys.addaudithook(hook)
    return hook
