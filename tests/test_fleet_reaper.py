"""A fleet left behind by a process that died without its teardown is reaped by the next."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.services import reap_orphans

# Real processes, no stack: `make unit` leaves these to the full run.
pytestmark = pytest.mark.subprocess

# A process whose command line reads like a service's (``-m workflow serve``), but which
# only sleeps: ``python -c`` takes everything after its code as the script's arguments.
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)", "-m", "workflow", "serve"]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_services_of_a_dead_owner_are_killed_and_its_registry_removed(tmp_path: Path) -> None:
    service = subprocess.Popen(SLEEPER)
    try:
        registry = tmp_path / f"{_dead_pid()}.pids"
        registry.write_text(f"{service.pid} workflow\n")
        assert reap_orphans(tmp_path) == [service.pid]
        assert service.wait(timeout=10) < 0
        assert not registry.exists()
    finally:
        service.kill()


def test_services_of_a_live_owner_are_left_running(tmp_path: Path) -> None:
    service = subprocess.Popen(SLEEPER)
    try:
        (tmp_path / f"{os.getpid()}.pids").write_text(f"{service.pid} workflow\n")
        assert reap_orphans(tmp_path) == []
        assert service.poll() is None
    finally:
        service.kill()
        service.wait()


def test_a_pid_now_running_another_program_is_left_alone(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / f"{_dead_pid()}.pids").write_text(f"{other.pid} workflow\n")
        assert reap_orphans(tmp_path) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
