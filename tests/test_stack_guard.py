"""`make unit` runs no test that needs the stack: the marking rules and the guard."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys

import pytest

from scripts.stack import PG_PORT as PORT
from tests.stack_guard import STACK_FIXTURES, Guard, StackTouchedError, guard, needs_stack

# The database's port as this run configures it (PG_PORT), not its default: a checkout on
# other ports (a second stack beside the first) runs the same tests.


def test_no_unit_test_of_this_run_asks_for_the_stack(request: pytest.FixtureRequest) -> None:
    unit = [item for item in request.session.items if item.get_closest_marker("unit")]
    assert request.node in unit
    assert [
        i.nodeid for i in unit if STACK_FIXTURES.intersection(getattr(i, "fixturenames", ()))
    ] == []
    assert [i.nodeid for i in unit if needs_stack(i)] == []


def test_a_connection_to_a_port_of_the_stack_is_refused() -> None:
    with pytest.raises(StackTouchedError, match=f"127.0.0.1:{PORT}"), guard().watching():
        socket.create_connection(("127.0.0.1", PORT), timeout=1)


def test_starting_a_process_is_refused() -> None:
    with pytest.raises(StackTouchedError, match=r"subprocess\.Popen"), guard().watching():
        subprocess.run([sys.executable, "-c", "pass"], check=False)


def test_a_refusal_the_code_swallowed_still_fails_the_test() -> None:
    hook = Guard(frozenset({PORT}))
    # The code under test swallows the refusal, as a client that retries on any error would.
    with (
        pytest.raises(StackTouchedError, match="reached for a connection"),
        hook.watching(),
        contextlib.suppress(StackTouchedError),
    ):
        hook("socket.connect", (None, ("127.0.0.1", PORT)))


def test_other_ports_and_unwatched_code_pass() -> None:
    hook = Guard(frozenset({PORT}))
    hook("socket.connect", (None, ("127.0.0.1", PORT)))
    hook("subprocess.Popen", ("python", [], None, None))
    with hook.watching():
        hook("socket.connect", (None, ("127.0.0.1", PORT + 1)))
        hook("socket.connect", (None, "/tmp/a-unix-socket"))
