"""Run the three services as real processes (demo, end-to-end tests, chaos).

Each service is started exactly as in production: ``python -m <service> migrate`` then
``python -m <service> serve``, configured only through its environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
# uvicorn re-raises SIGTERM once its graceful shutdown is done, so that is a clean exit.
CLEAN_EXIT = (0, -signal.SIGTERM, None)

# The first HTTP port of a fleet and the SMTP port its notifier sends to, unless its caller
# names them: movable from the environment, so that a second clone's fleets (a bench next to
# another checkout's tests) do not take the same ports.
DEFAULT_BASE_PORT = int(os.environ.get("FLEET_BASE_PORT", "18100"))
DEFAULT_SMTP_PORT = int(os.environ.get("FLEET_SMTP_PORT", "2525"))

# Which services each process that started a fleet has running: a test killed by pytest's
# timeout ends its process with os._exit, so no teardown stops its fleet, and the orphans
# hold their ports for the next run. The next fleet started from this clone reaps them.
FLEETS_DIR = ROOT / ".cache" / "fleets"

SERVICES: dict[str, tuple[str, str]] = {
    # name: (python module, env prefix)
    "workflow": ("workflow", "WORKFLOW_"),
    "ledger-sync": ("ledger_sync", "LEDGER_SYNC_"),
    "notifier": ("notifier", "NOTIFIER_"),
}


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def migrate(self) -> None:
        module = SERVICES[self.name][0]
        with self.log_path.open("ab") as log:
            subprocess.run(
                [sys.executable, "-m", module, "migrate"],
                env=self.env,
                check=True,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
            )

    def start(self) -> None:
        module = SERVICES[self.name][0]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _register(self.process.pid, module)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no cleanup, no offset commit, like a node dying."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _register(pid: int, module: str) -> None:
    FLEETS_DIR.mkdir(parents=True, exist_ok=True)
    with (FLEETS_DIR / f"{os.getpid()}.pids").open("a") as registry:
        registry.write(f"{pid} {module}\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(fleets_dir: Path = FLEETS_DIR) -> list[int]:
    """SIGKILL the services of fleets whose starting process has died; returns their pids.

    A recorded pid is killed only while its command line is still ``-m <module> serve``,
    so a pid the kernel has since given to another program is left alone."""
    reaped: list[int] = []
    for registry in sorted(fleets_dir.glob("*.pids")) if fleets_dir.is_dir() else []:
        if _alive(int(registry.stem)):
            continue
        for line in registry.read_text().splitlines():
            pid_text, module = line.split()
            try:
                argv = Path(f"/proc/{pid_text}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # gone already
            if _serves(argv, module):
                try:
                    os.kill(int(pid_text), signal.SIGKILL)
                    reaped.append(int(pid_text))
                except ProcessLookupError:
                    pass
        registry.unlink(missing_ok=True)
    return reaped


def _serves(argv: list[bytes], module: str) -> bool:
    wanted = [b"-m", module.encode(), b"serve"]
    return any(argv[i : i + 3] == wanted for i in range(len(argv)))


@dataclass
class Fleet:
    """The three services, each with ``replicas[name]`` processes in one consumer group.

    Replica keys are ``workflow``, ``workflow-2``, ...; ``fleet["workflow"]`` is the first.
    """

    database_url: str
    kafka_bootstrap: str
    topic_prefix: str
    log_dir: Path
    base_port: int = DEFAULT_BASE_PORT
    smtp_port: int = DEFAULT_SMTP_PORT
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    members: dict[str, ServiceProcess] = field(default_factory=dict)
    _next_port: int = 0

    def __post_init__(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._next_port = self.base_port
        for name in SERVICES:
            for _ in range(self.replicas.get(name, 1)):
                self._add(name)

    def _env(self, name: str, port: int) -> dict[str, str]:
        prefix = SERVICES[name][1]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("WORKFLOW_", "LEDGER_SYNC_", "NOTIFIER_", "COLLECTIONS_FAULT_"))
        }
        env.update(
            {
                f"{prefix}DATABASE_URL": self.database_url,
                f"{prefix}KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                f"{prefix}TOPIC_PREFIX": self.topic_prefix,
                f"{prefix}HTTP_PORT": str(port),
                f"{prefix}LOG_LEVEL": "INFO",
                "NOTIFIER_SMTP_PORT": str(self.smtp_port),
            }
        )
        env.update(self.extra_env.get(name, {}))
        return env

    def _add(self, name: str) -> ServiceProcess:
        count = sum(1 for m in self.members.values() if m.name == name)
        key = name if count == 0 else f"{name}-{count + 1}"
        port = self._next_port
        self._next_port += 1
        member = ServiceProcess(name, port, self._env(name, port), self.log_dir / f"{key}.log")
        self.members[key] = member
        return member

    def __getitem__(self, key: str) -> ServiceProcess:
        return self.members[key]

    def replicas_of(self, name: str) -> list[str]:
        return [key for key, m in self.members.items() if m.name == name]

    def start(self) -> None:
        reap_orphans()
        migrated: set[str] = set()
        for member in self.members.values():
            if member.name not in migrated:
                member.migrate()
                migrated.add(member.name)
        for member in self.members.values():
            member.start()
        for member in self.members.values():
            member.wait_ready()

    def add_replica(self, name: str) -> str:
        """Start one more replica (forces a consumer-group rebalance)."""
        member = self._add(name)
        member.start()
        member.wait_ready()
        return next(k for k, m in self.members.items() if m is member)

    def remove_replica(self, key: str) -> int | None:
        return self.members.pop(key).stop()

    def stop(self) -> dict[str, int | None]:
        return {key: member.stop() for key, member in self.members.items()}
