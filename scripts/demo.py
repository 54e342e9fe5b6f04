"""``make demo``: the three services doing their job on a 1,000-loan portfolio.

Starts the local stack if needed, a real SMTP server on loopback and the three services as
processes; publishes loan, ledger and repayment events through Kafka the way a lender
would; waits until the system settles; prints what happened; stops what it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_UP, Decimal
from typing import Any

import httpx
from aiosmtpd.controller import Controller

from collections_kit.auth import dev_headers
from scripts import lending
from scripts import measures as measures_report
from scripts import stack as local_stack
from scripts.infra import create_database, create_topics, delete_topics, drop_database, producer
from scripts.services import CLEAN_EXIT, ROOT, Fleet

LOANS = int(os.environ.get("DEMO_LOANS", "1000"))
# The services trust the development signing key in dev: the demo is a client like any.
DEMO_AUTH = dev_headers(["contacts:write", "admin"], subject="demo-loader")
SMTP_PORT = int(os.environ.get("DEMO_SMTP_PORT", "2526"))
# Borrowers spread over time zones, so that at any hour some are inside their contact window
# and some are not: the notifier defers the latter to their next lawful moment.
ZONES = (
    ("CN", "Asia/Shanghai", "CNY"),
    ("US", "America/New_York", "USD"),
    ("US", "America/Los_Angeles", "USD"),
    ("US", "Pacific/Honolulu", "USD"),
    ("UK", "Europe/London", "GBP"),
)


class MailSink:
    """An SMTP server that only counts: the demo's stand-in for a mail relay."""

    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, _server: Any, _session: Any, _envelope: Any) -> str:  # noqa: N802
        self.received += 1
        return "250 OK"


@dataclass
class Loan:
    loan_id: str
    borrower_id: str
    jurisdiction: str
    zone: str
    currency: str
    principal: Decimal
    kind: str  # contacted | repaid_early | repaid_later | unknown_to_ledger


def portfolio(rng: random.Random) -> list[Loan]:
    loans = []
    for i in range(LOANS):
        jurisdiction, zone, currency = ZONES[i % len(ZONES)]
        roll = rng.random()
        kind = (
            "repaid_early"
            if roll < 0.15
            else "repaid_later"
            if roll < 0.25
            else "unknown_to_ledger"
            if roll < 0.30
            else "contacted"
        )
        loans.append(
            Loan(
                f"L-{i:06d}",
                f"B-{i:06d}",
                jurisdiction,
                zone,
                currency,
                Decimal(rng.randrange(2_000, 500_000)) / 100,
                kind,
            )
        )
    return loans


async def register_contacts(base_url: str, loans: list[Loan]) -> None:
    """Contact details go to the notifier over REST: personal data never rides on Kafka."""
    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=base_url, timeout=10, headers=DEMO_AUTH) as http:

        async def put(loan: Loan) -> None:
            n = int(loan.loan_id[2:])
            body = {
                "language": "zh-CN" if loan.jurisdiction == "CN" else "en",
                "email": f"borrower{n}@example.com",
                "phone": f"+8613{n:09d}",
                "postal_address": f"{n} Example Road",
            }
            async with sem:
                response = await http.put(
                    f"/v1/borrowers/{loan.borrower_id}/contact-details", json=body
                )
                response.raise_for_status()

        await asyncio.gather(*(put(loan) for loan in loans))


# People who call (issue 23): two collectors and an agency, each asking for a permit first.
PERMIT_ACTORS = (
    dev_headers(["contacts:permit", "collections:work"], subject="collector-1"),
    dev_headers(["contacts:permit", "collections:work"], subject="collector-2"),
    dev_headers(["contacts:permit", "collections:agency"], subject="agency-1"),
)


async def work_permits(base_url: str, loans: list[Loan], rng: random.Random) -> list[Any]:
    """Collectors and the agency ask for a permit before each call on part of the
    portfolio and report what came of the granted ones; returns the permits by reason."""
    sample = [loan for loan in loans if loan.kind in ("contacted", "repaid_later")][:90]
    clients = [httpx.AsyncClient(base_url=base_url, timeout=10, headers=h) for h in PERMIT_ACTORS]
    try:
        for n, loan in enumerate(sample):
            http = clients[n % len(clients)]
            ask = {"loan_id": loan.loan_id, "person": "debtor", "channel": "voice"}
            answer = await http.post("/v1/contact-permits", json=ask)
            if answer.status_code == 201:
                result = rng.choice(["connected", "unanswered", "conversation"])
                await http.post(
                    f"/v1/contact-permits/{answer.json()['permit_id']}/result",
                    json={"result": result},
                )
    finally:
        for http in clients:
            await http.aclose()
    async with httpx.AsyncClient(base_url=base_url, timeout=10, headers=DEMO_AUTH) as http:
        summary: list[Any] = (await http.get("/v1/contact-permits/summary")).json()
    return summary


def print_permits(summary: list[Any]) -> None:
    print("\nContact permits (notifier), by decision/reason and who asked:")
    for row in summary:
        label = f"{row['decision']}/{row['reason']} ({row['actor_kind']})"
        print(f"  {label:<52} {row['count']:>6}")


# One agency (issue 23): cases 5 days past due or more are placed with it for 90 days; a
# repayment recalls them at once, and what was repaid while placed earns it 20%.
AGENCY = "agency-1"
PLACEMENT_POLICY = f"""version = "placements/demo"

[[tiers]]
tier = "primary"
stages = ["warning", "formal_notice"]
min_days_past_due = 5
min_balance = "100.00"
period_days = 90

[[tiers.agencies]]
agency = "{AGENCY}"
share = 1
commission_rate = "0.20"
"""


async def agency_report(base_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10, headers=DEMO_AUTH) as http:
        report: dict[str, Any] = (await http.get(f"/v1/agencies/{AGENCY}/commission")).json()
    return report


def print_agency(report: dict[str, Any]) -> None:
    placed, running = report["placements"], report["running"]
    print(f"\nAgency placement (workflow): {report['agency']}")
    print(f"  placed {placed}, still placed {running}, recalled {placed - running}")
    for line in report["by_currency"]:
        print(
            f"  {line['currency']}: {line['payments']} payments while placed, "
            f"collected {line['collected']}, commission {line['commission']}"
        )


# Collectors working the queues (issue 23): the cases past their formal notice wait as tasks.
# Their groups (the token's `groups` claim) are the queues' access in policies/queues.toml:
# the Chinese desk works the -zh queues, a senior negotiator the large balances, legal staff
# the legal reviews; a queue a collector may not work answers them 403.
QUEUE_WORKERS = {
    "collector-1": ("zh-CN", "senior-negotiators"),
    "collector-2": ("zh-CN",),
    "collector-3": ("legal",),
}
RESULTS = ("no_answer", "right_party_contact", "refused_to_pay", "promise_to_pay", "wrong_number")


async def work_queues(
    base_url: str,
    rng: random.Random,
    *,
    rounds: int = 10,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[Counter[str], list[Any]]:
    """Three collectors ask every queue for next at the same moment and record a result for
    what they get; returns the results recorded and the queues afterwards."""
    clients = [
        httpx.AsyncClient(
            base_url=base_url,
            timeout=10,
            transport=transport,
            headers=dev_headers(["collections:work"], subject=who, groups=groups),
        )
        for who, groups in QUEUE_WORKERS.items()
    ]
    worked: Counter[str] = Counter()
    try:
        listed = (await clients[0].get("/v1/queues")).json()["queues"]
        for _ in range(rounds):
            for queue in [q["queue"] for q in listed]:
                answers = await asyncio.gather(
                    *(c.post(f"/v1/queues/{queue}/next") for c in clients)
                )
                for client, answer in zip(clients, answers, strict=True):
                    if answer.status_code != 200:
                        continue  # nothing (else) to work here, or not their queue (403)
                    result = rng.choice(RESULTS)
                    body: dict[str, Any] = {"action": "outbound_call", "result": result}
                    if result == "promise_to_pay":
                        due = datetime.now(UTC) + timedelta(days=7)
                        body["promise"] = {"amount": "50.00", "due_at": due.isoformat()}
                    done = await client.post(
                        f"/v1/tasks/{answer.json()['task_id']}/result", json=body
                    )
                    worked[result if done.status_code == 200 else f"refused/{result}"] += 1
        after: list[Any] = (await clients[0].get("/v1/queues")).json()["queues"]
    finally:
        for client in clients:
            await client.aclose()
    return worked, after


def print_work(worked: Counter[str], queues: list[Any]) -> None:
    print(f"\nWork queues (workflow): tasks worked by {len(QUEUE_WORKERS)} collectors, by result:")
    for label, count in sorted(worked.items()):
        print(f"  {label:<40} {count:>6}")
    print("  still waiting, by queue:")
    for q in queues:
        if q["depth"] or q["leased"]:
            print(f"    {q['queue']:<38} {q['depth']:>6}  (leased {q['leased']})")


# Champion-challenger (issue 24 item 3): the shipped consumer-loan policy with a 50/50
# split; the challenger texts only (no warning e-mail) and sends the formal notice at 20
# days past due instead of 30. Each loan's variant is fixed by its loan id.
VARIANTS = """
[variants.champion]
share = 50

[variants.challenger]
share = 50
stages.formal_notice.min_days_past_due = 20
stages.warning.contacts = [{ channel = "sms", recipient = "debtor", template = "warning-reminder" }]
"""
CONSUMER_LOAN_POLICY = ROOT / "services/workflow/src/workflow/policies/consumer-loan.toml"


def variant_counts(snapshot: dict[str, Any]) -> Counter[str]:
    """Cases per champion-challenger variant, from the workflow's summary."""
    counts: Counter[str] = Counter()
    for row in snapshot["workflow"]["cases"]:
        counts[row.get("variant") or "(none)"] += row["count"]
    return counts


# Negotiation (issue 24): borrowers propose terms through the lender's portal and the
# product's negotiation policy answers (docs/negotiation.md): 10% down and the rest within
# six months is accepted and becomes the plan, 5% down is countered with the policy's
# minimum, and a borrower whose third proposal in 90 days is far under it (2% down) has
# made the "clearly unreasonable proposal" that sends the case to litigation by itself.
PORTAL = dev_headers(["cases:read", "cases:write"], subject="borrower-portal")


def proposal(outstanding: Decimal, down_share: Decimal, now: datetime) -> dict[str, Any]:
    """A down payment tomorrow and the rest in five monthly instalments, the last one
    taking the rounding, so that the payments add up to what is owed."""
    # Rounded up: a down payment a fraction of a cent under the policy's share is countered.
    down = (outstanding * down_share).quantize(Decimal("0.01"), rounding=ROUND_UP)
    each = ((outstanding - down) / 5).quantize(Decimal("0.01"))
    amounts = [each] * 4 + [outstanding - down - each * 4]
    return {
        "down_payment": {"due_at": (now + timedelta(days=1)).isoformat(), "amount": str(down)},
        "instalments": [
            {"due_at": (now + timedelta(days=30 * (k + 1))).isoformat(), "amount": str(a)}
            for k, a in enumerate(amounts)
        ],
        "note": f"{down_share:.0%} down (demo)",
    }


async def negotiate(base_url: str, loans: list[Loan]) -> Counter[str]:
    """Proposals on 30 contacted loans; returns the answers (and the litigations fired)."""
    # From the end of the portfolio: the permits and the queues work its start.
    sample = [loan for loan in loans if loan.kind == "contacted"][-30:]
    answers: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=10, headers=PORTAL) as http:
        for n, loan in enumerate(sample):
            read = await http.get(f"/v1/cases/{loan.loan_id}")
            read.raise_for_status()
            case = read.json()
            owed, now = Decimal(case["outstanding"]), datetime.now(UTC)
            shares = [Decimal("0.10")], [Decimal("0.05")], [Decimal("0.02")] * 3
            for share in shares[n % 3]:
                answer = await http.post(
                    f"/v1/cases/{loan.loan_id}/proposals",
                    json=proposal(owed, share, now),
                    headers={"Idempotency-Key": str(uuid.uuid4())},
                )
                if answer.status_code != 200:
                    answers[f"answered {answer.status_code}"] += 1
                    break
                body = answer.json()
                answers[f"{share:.0%} down: {body['verdict']}"] += 1
                if body["unreasonable"]:
                    answers["then litigation: proposal_unreasonable"] += 1
    return answers


def print_negotiation(answers: Counter[str]) -> None:
    print("\nNegotiation (workflow): proposals from the borrower portal, by answer:")
    for label, count in sorted(answers.items()):
        print(f"  {label:<44} {count:>6}")


def print_variants(snapshot: dict[str, Any]) -> None:
    counts = variant_counts(snapshot)
    total = sum(counts.values()) or 1
    print("\nChampion-challenger (workflow): cases per variant")
    for name, count in sorted(counts.items()):
        print(f"  {name:<28} {count:>6}  ({100 * count / total:.1f}%)")


# The measures per variant (issue 24 item 4), as a collections manager would read them: from
# the workflow's GET /v1/kpis, computed from the case timelines (docs/measures.md).
KPI_READER = dev_headers(["cases:read"], subject="demo-manager")
MEASURES_CHART = ROOT / ".cache" / "demo" / "measures-per-variant.png"


async def measures_by_variant(
    base_url: str,
    start: datetime,
    end: datetime,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """GET /v1/kpis?group_by=variant over [start, end). An error answer fails the demo:
    what may legitimately be missing (no placements, so no liquidation rate) is inside the
    document as a null value, never a missing endpoint."""
    params = {"group_by": "variant", "from": start.isoformat(), "to": end.isoformat()}
    async with httpx.AsyncClient(
        base_url=base_url, timeout=30, headers=KPI_READER, transport=transport
    ) as http:
        response = await http.get("/v1/kpis", params=params)
        response.raise_for_status()
        report: dict[str, Any] = response.json()
    return report


def print_measures(report: dict[str, Any]) -> None:
    print()
    print(measures_report.format_measures(report))
    chart = measures_report.draw_chart(report, MEASURES_CHART)
    print(f"\nChart (stage funnel and roll rates per variant): {chart}")


# Early warning (issue 24 item 2): every 20th loan that will fall overdue gets a risk signal
# first, while it is still current.
def early_warning_loans(loans: list[Loan]) -> list[Loan]:
    return [loan for loan in loans if loan.kind == "contacted" and int(loan.loan_id[2:]) % 20 == 0]


def early_warning_counts(timelines: dict[str, list[str]]) -> dict[str, int]:
    """Of the signalled loans' case timelines (entry kinds, in order): pre-delinquency
    cases opened, contacted before their loan fell due, and become ordinary cases since."""

    def before_overdue(kinds: list[str]) -> list[str]:
        end = "pre_delinquency_ended"
        return kinds[: kinds.index(end)] if end in kinds else kinds

    opened = [k for k in timelines.values() if "pre_delinquency_opened" in k]
    return {
        "signalled": len(timelines),
        "opened": len(opened),
        "contacted": sum("contact_commanded" in before_overdue(k) for k in opened),
        "ordinary": sum("pre_delinquency_ended" in k for k in opened),
    }


async def early_warning_report(base_url: str, loans: list[Loan]) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10, headers=KPI_READER) as http:
        timelines = {}
        for loan in loans:
            response = await http.get(f"/v1/cases/{loan.loan_id}/timeline?limit=500")
            # A loan with no case has none (404); any other answer is the demo's own fault.
            if response.status_code != 404:
                response.raise_for_status()
            entries = response.json().get("entries", []) if response.status_code == 200 else []
            timelines[loan.loan_id] = [e["kind"] for e in entries]
    return early_warning_counts(timelines)


def print_early_warning(counts: dict[str, int]) -> None:
    print(
        f"\nEarly warning (workflow): {counts['signalled']} risk signals on current loans, "
        f"{counts['opened']} pre-delinquency cases opened, {counts['contacted']} contacted "
        f"(the borrower only), {counts['ordinary']} became ordinary cases once overdue"
    )


async def wait_until_settled(fleet: Fleet, *, within: float = 180.0) -> dict[str, Any]:
    """Settled = nothing awaits a confirmation and the picture is stable for 3 s."""
    deadline = time.monotonic() + within
    last: Any = None
    stable_since = time.monotonic()
    async with httpx.AsyncClient(timeout=10, headers=DEMO_AUTH) as http:
        while time.monotonic() < deadline:
            wf = (await http.get(f"{fleet['workflow'].base_url}/v1/summary")).json()
            nt = (await http.get(f"{fleet['notifier'].base_url}/v1/contacts/summary")).json()
            snapshot = {"workflow": wf, "notifier": nt}
            awaiting = sum(
                i["count"] for i in wf["intents"] if i["status"] == "awaiting_confirmation"
            )
            if snapshot != last:
                last, stable_since = snapshot, time.monotonic()
            elif awaiting == 0 and time.monotonic() - stable_since > 3.0:
                return snapshot
            await asyncio.sleep(0.5)
    raise TimeoutError("the system did not settle in time")


def print_summary(snapshot: dict[str, Any], mails: int, loans: list[Loan], elapsed: float) -> None:
    wf, nt = snapshot["workflow"], snapshot["notifier"]
    stages: Counter[str] = Counter()
    for row in wf["cases"]:
        label = row["stage"] if row["status"] == "open" else f"closed ({row['exit']})"
        stages[label] += row["count"]
    intents: Counter[str] = Counter()
    for row in wf["intents"]:
        intents[f"{row['status']}{'/' + row['reason'] if row['reason'] else ''}"] += row["count"]
    kinds = Counter(loan.kind for loan in loans)
    print("\n=== Collections demo summary ===")
    print(f"loans published: {len(loans)}  ({', '.join(f'{k}: {v}' for k, v in kinds.items())})")
    print(f"settled in {elapsed:.1f}s")
    print("\nCases by stage:")
    for label, count in sorted(stages.items()):
        print(f"  {label:<28} {count:>6}")
    print("\nContact intents (workflow):")
    for label, count in sorted(intents.items()):
        print(f"  {label:<40} {count:>6}")
    decisions: Counter[str] = Counter()
    for row in nt.get("by_decision", []):
        decisions[row["decision"] + ("/" + row["reason"] if row["reason"] else "")] += row["count"]
    print("\nContact decisions (notifier):")
    for label, count in sorted(decisions.items()):
        print(f"  {label:<40} {count:>6}")
    sent = sum(r["count"] for r in nt.get("by_decision", []) if r["decision"] == "sent")
    repaid = sum(v for k, v in intents.items() if "repaid" in k or "nothing_owed" in k) + sum(
        r["count"]
        for r in nt.get("by_decision", [])
        if r["decision"] == "cancelled" and "repaid" in r["reason"]
    )
    # Refused by the ledger for now (stale, gap, unknown loan): re-checked later with backoff.
    unconfirmed = sum(
        v
        for k, v in intents.items()
        if k.startswith(("refused/", "awaiting_recheck/")) and "nothing_owed" not in k
    )
    print("\nHeadline:")
    print(
        f"  contacts sent                             {sent:>6}"
        f"  (e-mails received by SMTP: {mails})"
    )
    print(f"  contacts suppressed, loan repaid          {repaid:>6}")
    print(f"  contacts suppressed, balance unconfirmed  {unconfirmed:>6}")


async def run() -> int:
    started_stack = not local_stack.is_up()
    local_stack.ensure_up()
    admin_url = os.environ.get("DATABASE_URL", local_stack.DATABASE_URL)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", local_stack.KAFKA_BOOTSTRAP)
    run_id = uuid.uuid4().hex[:8]
    db_name, prefix = f"demo_{run_id}", f"demo{run_id}."
    database_url = await create_database(admin_url, db_name)
    await create_topics(bootstrap, prefix, partitions=6)
    sink = MailSink()
    smtp = Controller(sink, hostname="127.0.0.1", port=SMTP_PORT)
    smtp.start()
    placement_policy = ROOT / ".cache" / "demo" / f"placements-{run_id}.toml"
    placement_policy.parent.mkdir(parents=True, exist_ok=True)
    placement_policy.write_text(PLACEMENT_POLICY)
    product_policy = placement_policy.parent / f"consumer-loan-{run_id}.toml"
    product_policy.write_text(CONSUMER_LOAN_POLICY.read_text() + VARIANTS)
    fleet = Fleet(
        database_url=database_url,
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        log_dir=ROOT / ".cache" / "demo" / run_id,
        smtp_port=SMTP_PORT,
        extra_env={
            "workflow": {
                "WORKFLOW_PLACEMENT_POLICY_FILE": str(placement_policy),
                "WORKFLOW_POLICY_FILES": json.dumps([str(product_policy)]),
            }
        },
    )
    rng = random.Random(20261122)
    loans = portfolio(rng)
    try:
        print(f"starting workflow, ledger-sync and notifier (logs in {fleet.log_dir})")
        await asyncio.to_thread(fleet.start)
        await register_contacts(fleet["notifier"].base_url, loans)
        t0 = time.monotonic()
        started_at = datetime.now(UTC)
        kafka = await producer(bootstrap)
        lender = lending.Lender(kafka, prefix)
        try:
            now = datetime.now(UTC)
            await lender.publish_many(
                lending.disbursement(
                    loan.loan_id,
                    loan.principal,
                    currency=loan.currency,
                    at=now - timedelta(days=60),
                )
                for loan in loans
                if loan.kind != "unknown_to_ledger"
            )
            # Paid, but the lending system's overdue feed has not caught up yet.
            await lender.publish_many(
                lending.repayment(
                    loan.loan_id, loan.principal, Decimal("0"), currency=loan.currency
                )
                for loan in loans
                if loan.kind == "repaid_early"
            )
            # Early warning: risk signals before the loans fall due; their pre-delinquency
            # cases contact the borrowers before the overdue feed below arrives.
            signalled = early_warning_loans(loans)
            await lender.publish_many(
                lending.risk_signal(
                    loan.loan_id,
                    loan.principal,
                    observed_at=now - timedelta(hours=1),
                    currency=loan.currency,
                    tz=loan.zone,
                    jurisdiction=loan.jurisdiction,
                    borrower_id=loan.borrower_id,
                )
                for loan in signalled
            )
            await wait_until_settled(fleet)
            await lender.publish_many(
                lending.overdue(
                    loan.loan_id,
                    loan.principal,
                    dpd=5,
                    currency=loan.currency,
                    tz=loan.zone,
                    jurisdiction=loan.jurisdiction,
                    as_of=now,
                    borrower_id=loan.borrower_id,
                )
                for loan in loans
            )
            print(f"published {lender.sent} events; waiting for the first wave to settle")
            await wait_until_settled(fleet)
            # Second wave: some borrowers pay in full; the next day's overdue feed arrives
            # for everyone (30 days past due now: formal notice for those still owing).
            await lender.publish_many(
                lending.repayment(
                    loan.loan_id, loan.principal, Decimal("0"), currency=loan.currency
                )
                for loan in loans
                if loan.kind == "repaid_later"
            )
            await asyncio.sleep(1.0)
            await lender.publish_many(
                lending.overdue(
                    loan.loan_id,
                    loan.principal,
                    dpd=30,
                    currency=loan.currency,
                    tz=loan.zone,
                    jurisdiction=loan.jurisdiction,
                    as_of=now + timedelta(days=1),
                    borrower_id=loan.borrower_id,
                )
                for loan in loans
                if loan.kind in ("contacted", "repaid_later")
            )
            print(f"published {lender.sent} events in all; waiting for the second wave")
            snapshot = await wait_until_settled(fleet)
            permits = await work_permits(fleet["notifier"].base_url, loans, rng)
            worked, queues = await work_queues(fleet["workflow"].base_url, rng)
            agency = await agency_report(fleet["workflow"].base_url)
            negotiation = await negotiate(fleet["workflow"].base_url, loans)
            early_warning = await early_warning_report(fleet["workflow"].base_url, signalled)
            # The whole run: the workflow dates what it records by its own clock (not the
            # overdue feed's as_of, a day ahead in the second wave), so [start, now) holds it.
            measures = await measures_by_variant(
                fleet["workflow"].base_url,
                started_at - timedelta(minutes=1),
                datetime.now(UTC),
            )
        finally:
            await kafka.stop()
        print_summary(snapshot, sink.received, loans, time.monotonic() - t0)
        print_permits(permits)
        print_work(worked, queues)
        print_agency(agency)
        print_negotiation(negotiation)
        print_early_warning(early_warning)
        print_variants(snapshot)
        print_measures(measures)
        return 0
    finally:
        codes = await asyncio.to_thread(fleet.stop)
        smtp.stop()
        await delete_topics(bootstrap, prefix)
        await drop_database(admin_url, db_name)
        if started_stack:
            local_stack.ensure_down()
        if any(code not in CLEAN_EXIT for code in codes.values()):
            print(f"a service exited badly: {codes}", file=sys.stderr)


def main() -> int:
    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
