"""The short reliability run: a couple of thousand loans, one kill per replica.

The full run (`make chaos`, 20,000 loans, broker and PostgreSQL restarts) is in the README.
"""

from __future__ import annotations

import pytest

from scripts.chaos import Config, run, verdict


# Settling alone may take up to 300 s on a slow machine; the run stays bounded.
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("stack")
async def test_a_short_chaos_run_loses_nothing_and_doubles_nothing() -> None:
    report = await run(
        Config(loans=1500, kills_per_replica=1, restart_infrastructure=False, settle_timeout_s=300)
    )
    checks = report["checks"]
    assert verdict(checks) == [], checks
    assert sum(report["faults"]["kills"].values()) >= 6
    assert checks["malformed_in_dlq"]["produced"] > 0
    # The early-warning path ran under the faults too (verdict fails on none opened).
    assert checks["risk_signals_sent"] > 0
    assert checks["replay_equal"]["pre_delinquency_opened"] > 0
