"""The DBOS Transact peer ``make bench`` measures (bench/peers/dbos), end to end on the real
broker, PostgreSQL and an SMTP server: the figures it is compared on are only worth
something if it does the job. Every loan still owed gets exactly one e-mail; a loan repaid
while its contact is held gets none, and its contact is reported cancelled."""

from __future__ import annotations

import pytest

from bench.peer import dbos_peer


@pytest.mark.timeout(120)
async def test_the_peer_mails_each_loan_once_and_no_repaid_one(stack: dict[str, str]) -> None:
    figures = await dbos_peer(
        stack["database_url"], stack["kafka_bootstrap"], loans=20, repaid=2, count_rows=False
    )

    assert figures["mailed_once"] == 20
    assert figures["mailed_twice_or_more"] == 0
    assert figures["repaid_mailed"] == 0
    assert figures["repaid_cancelled"] == 2
    # One outcome per workflow: 20 sent, 2 cancelled.
    assert figures["outcomes_published"] == 22
    # Its durability is ours: the same server, commits waiting for the WAL flush.
    assert figures["synchronous_commit"] == "on"
