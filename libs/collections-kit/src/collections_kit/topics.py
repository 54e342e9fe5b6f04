"""The Kafka topics of the public contract.

Names are fixed: other systems code against them. Partition counts are configuration
(``COLLECTIONS_TOPIC_PARTITIONS``), because they bound how far each consumer group can
scale out and differ between a laptop and production.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum


class Topic(StrEnum):
    # inbound, published by the lending systems and the ledger
    LOANS_OVERDUE = "loans.overdue.v1"
    LOANS_REPAYMENT = "loans.repayment.v1"
    LEDGER_POSTINGS = "ledger.postings.v1"
    # early warning: risk signals about loans that are still current (published by the
    # lender's risk models; the workflow may open a pre-delinquency case)
    LOANS_RISK_SIGNALS = "loans.risk-signals.v1"
    # between our services
    BALANCE_CHECKS = "collections.balance-checks.v1"
    BALANCE_CONFIRMATIONS = "collections.balance-confirmations.v1"
    # outbound
    CONTACT_COMMANDS = "collections.contact-commands.v1"
    CONTACT_OUTCOMES = "collections.contact-outcomes.v1"
    CASE_EVENTS = "collections.case-events.v1"
    # to collection agencies: placements, recalls and what happens to placed cases
    PLACEMENTS = "collections.placements.v1"
    DLQ = "collections.dlq.v1"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int


DEFAULT_PARTITIONS = 6
# A week: long enough to replay after an outage; the DLQ keeps a month for investigation.
DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000
DLQ_RETENTION_DAYS = 30
DLQ_RETENTION_MS = DLQ_RETENTION_DAYS * 24 * 3600 * 1000


def topic_specs(prefix: str = "", partitions: int | None = None) -> list[TopicSpec]:
    """Every topic with its partition count, read from the environment when not given."""
    count = partitions or int(os.environ.get("COLLECTIONS_TOPIC_PARTITIONS", DEFAULT_PARTITIONS))
    return [
        TopicSpec(
            name=prefix + topic.value,
            partitions=count,
            retention_ms=DLQ_RETENTION_MS if topic is Topic.DLQ else DEFAULT_RETENTION_MS,
        )
        for topic in Topic
    ]
