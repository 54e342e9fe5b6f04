"""Hostile HTTP input: schemathesis fuzzes each service's OpenAPI document against the
running service (a real process, as deployed) with a token holding every scope.

Every phase schemathesis has for a document without links runs (the documented examples,
boundary coverage, then property-based fuzzing, valid and invalid input) with all its
checks: no server error, every status code, content type, header and body as documented,
invalid input refused, valid input accepted, authentication enforced. The example loan
(L-000123) and borrower (B-000123) exist, so writes reach the case logic rather than 404.
``SCHEMATHESIS_EXAMPLES`` and ``SCHEMATHESIS_SEED`` widen or vary the run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from collections_kit.auth import ALL_SCOPES, dev_headers, dev_token
from scripts import lending
from scripts.infra import producer
from scripts.services import ROOT, Fleet
from tests.support import eventually, fleet_running

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "40"))
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261122")


@pytest.fixture
async def fleet(
    stack: dict[str, str], database_url: str, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[Fleet]:
    async with fleet_running(
        stack,
        database_url,
        topic_prefix,
        tmp_path,
        base_port=18260,
        smtp_port=2539,
    ) as fleet:
        yield fleet


async def seed(fleet: Fleet, stack: dict[str, str], prefix: str) -> None:
    kafka = await producer(stack["kafka_bootstrap"])
    try:
        lender = lending.Lender(kafka, prefix)
        await lender.publish(lending.disbursement("L-000123", Decimal("5000.00")))
        await lender.publish(
            lending.overdue("L-000123", Decimal("5000.00"), borrower_id="B-000123")
        )
    finally:
        await kafka.stop()
    async with httpx.AsyncClient(timeout=10, headers=dev_headers()) as http:
        put = await http.put(
            f"{fleet['notifier'].base_url}/v1/borrowers/B-000123/contact-details",
            json={"language": "zh-CN", "email": "zhang.san@example.com", "phone": "+8613812341234"},
        )
        assert put.status_code == 204, put.text

        async def case_open() -> bool:
            r = await http.get(f"{fleet['workflow'].base_url}/v1/cases/L-000123")
            return r.status_code == 200

        await eventually(case_open, within=30)


def fuzz(base_url: str, token: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        f"{base_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        SEED,
        "--no-color",
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.security.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )


async def test_schemathesis_finds_no_failure_in_any_service(
    fleet: Fleet, stack: dict[str, str], topic_prefix: str
) -> None:
    await seed(fleet, stack, topic_prefix)
    token = dev_token(ALL_SCOPES, subject="schemathesis")
    failed = {}
    for name in ("workflow", "ledger-sync", "notifier"):
        result = await asyncio.to_thread(fuzz, fleet[name].base_url, token)
        summary = result.stdout.strip().splitlines()[-1:] if result.stdout else []
        print(f"{name}: exit {result.returncode} {summary}")
        if result.returncode != 0:
            # The failure's header (operation and check) first: a long generated body
            # can push it out of the tail.
            out = result.stdout
            start = max(out.find("FAILURES"), 0)
            failed[name] = (
                out[start : start + 3000] + "\n...\n" + out[-3000:] + result.stderr[-2000:]
            )
    assert not failed, "\n\n".join(f"=== {n}\n{out}" for n, out in failed.items())
    # Nothing the fuzzer sent made a service log an unhandled error.
    for log in (fleet.log_dir).glob("*.log"):
        assert '"level": "ERROR"' not in log.read_text(), log.name
