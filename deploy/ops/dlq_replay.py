"""List, and on request replay, a consumer group's dead letters (docs/runbook.md).

Runs anywhere Python and aiokafka are, e.g. inside a service pod, reading itself from stdin:

    kubectl -n collections exec -i deploy/workflow -- python - \\
        --env-prefix WORKFLOW_ --group ledger-sync < deploy/ops/dlq_replay.py

(``--env-prefix`` connects as the pod's service does, TLS and SASL included; ``--bootstrap
host:port`` instead connects in plaintext.)

Without ``--apply`` it only reads ``collections.dlq.v1`` from the beginning (no consumer
group, no offsets committed) and lists the group's dead letters. With ``--apply`` it
re-publishes each selected letter's *original* record (same key, headers and value, so the
same CloudEvents id, the same bytes even where they are not UTF-8) to its origin topic with
an idempotent producer. A consumer whose claim of the event ended in a ``handler_failed``
letter takes the claim over when the replay arrives, so no inbox needs touching; every
other group reading the origin topic skips the replayed record through its own inbox.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

DLQ_TOPIC = "collections.dlq.v1"
# DeadLetter truncates each origin header to this many characters, and an oversized
# record's value, saying "value truncated here" in its reason: the same as the kit's
# collections_kit.consumer.DEAD_LETTER_HEADER_LIMIT and VALUE_TRUNCATED, spelled out so
# that this script runs where only aiokafka is.
HEADER_LIMIT = 1024


@dataclass(frozen=True)
class Letter:
    dlq_offset: str
    payload: dict[str, Any]

    @property
    def origin(self) -> tuple[str, int, int]:
        p = self.payload
        return p["origin_topic"], int(p["origin_partition"]), int(p["origin_offset"])

    @property
    def event_id(self) -> str | None:
        value = self.payload.get("origin_headers", {}).get("ce_id")
        return str(value) if value is not None else None

    def record(self) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
        # As collections_kit.consumer.original_record: text, or base64 where the letter
        # says so, back to the original bytes.
        p = self.payload
        key = (
            _bytes_of(p["origin_key"], p.get("key_encoding", "utf-8"))
            if p.get("origin_key") is not None
            else None
        )
        value = _bytes_of(p["origin_value"], p["value_encoding"])
        encodings = p.get("origin_header_encodings", {})
        headers = [
            (name, _bytes_of(str(v), encodings.get(name, "utf-8")))
            for name, v in p.get("origin_headers", {}).items()
        ]
        return key, value, headers

    def truncated(self) -> bool:
        # An oversized record's value is cut in its dead letter (max_record_bytes).
        return "value truncated" in str(self.payload.get("reason", "")) or any(
            len(str(v)) >= HEADER_LIMIT for v in self.payload.get("origin_headers", {}).values()
        )


def _bytes_of(text: str, encoding: str) -> bytes:
    return base64.b64decode(text) if encoding == "base64" else text.encode()


def connection(bootstrap: str | None, env_prefix: str | None) -> dict[str, Any]:
    """Where and how to connect: inside a service pod, ``--env-prefix WORKFLOW_`` takes the
    service's own Kafka settings (bootstrap, TLS, SASL) through the kit; ``--bootstrap``
    alone connects in plaintext."""
    kwargs: dict[str, Any] = {}
    if env_prefix:
        from collections_kit.kafka import client_kwargs
        from collections_kit.settings import ServiceSettings

        kwargs = client_kwargs(ServiceSettings(_env_prefix=env_prefix))
    if bootstrap:
        kwargs["bootstrap_servers"] = bootstrap
    if "bootstrap_servers" not in kwargs:
        raise SystemExit("give --bootstrap or --env-prefix")
    return kwargs


async def read_letters(kafka: dict[str, Any], topic: str) -> list[Letter]:
    # No group: every partition is assigned to us, nothing is committed.
    consumer = AIOKafkaConsumer(
        topic,
        **kafka,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        client_id="dlq-replay",
    )
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            raise SystemExit(f"topic {topic} does not exist")
        partitions: list[TopicPartition] = []
        for _ in range(100):
            partitions = sorted(consumer.assignment())
            if partitions:
                break
            await asyncio.sleep(0.1)
        if not partitions:
            raise SystemExit(f"no partitions of {topic} were assigned")
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        letters: list[Letter] = []

        async def behind() -> bool:
            for tp in partitions:
                if await consumer.position(tp) < ends[tp]:
                    return True
            return False

        while await behind():
            batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp] or record.value is None:
                        continue
                    try:
                        payload = json.loads(record.value)
                    except ValueError:
                        print(f"skipping {tp.partition}@{record.offset}: not JSON", file=sys.stderr)
                        continue
                    letters.append(Letter(f"{tp.partition}@{record.offset}", payload))
        return letters
    finally:
        await consumer.stop()


def select(letters: list[Letter], args: argparse.Namespace) -> list[Letter]:
    since = datetime.fromisoformat(args.since) if args.since else None
    chosen: dict[tuple[str, int, int], Letter] = {}
    for letter in letters:
        p = letter.payload
        if p.get("consumer_group") != args.group:
            continue
        if args.kind and p.get("error_kind") not in args.kind:
            continue
        if args.origin_topic and p.get("origin_topic") != args.origin_topic:
            continue
        if since and datetime.fromisoformat(p["failed_at"]) < since:
            continue
        chosen.setdefault(letter.origin, letter)  # one origin record, one replay
    return list(chosen.values())


async def replay(kafka: dict[str, Any], letters: list[Letter]) -> int:
    producer = AIOKafkaProducer(
        **kafka, enable_idempotence=True, acks="all", client_id="dlq-replay"
    )
    await producer.start()
    sent = 0
    try:
        for letter in letters:
            key, value, headers = letter.record()
            topic, _, _ = letter.origin
            await producer.send_and_wait(topic, value=value, key=key, headers=headers)
            sent += 1
    finally:
        await producer.stop()
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (plaintext)")
    parser.add_argument(
        "--env-prefix",
        help="take the Kafka settings (bootstrap, TLS, SASL) "
        "from a service's environment, e.g. WORKFLOW_",
    )
    parser.add_argument("--group", required=True, help="the consumer group: workflow, ...")
    parser.add_argument("--topic-prefix", default="", help="the services' TOPIC_PREFIX")
    parser.add_argument(
        "--kind",
        action="append",
        choices=[
            "undecodable",
            "invalid",
            "unknown_type",
            "handler_failed",
            "conflicting_duplicate",
        ],
    )
    parser.add_argument("--origin-topic", help="only letters from this topic")
    parser.add_argument("--since", help="only letters that failed at or after this ISO time")
    parser.add_argument("--apply", action="store_true", help="re-publish (default: list only)")
    args = parser.parse_args(argv)

    kafka = connection(args.bootstrap, args.env_prefix)
    letters = select(asyncio.run(read_letters(kafka, args.topic_prefix + DLQ_TOPIC)), args)
    for letter in letters:
        p = letter.payload
        topic, partition, offset = letter.origin
        print(
            f"{p['failed_at']}  {p['error_kind']:<14} {topic}/{partition}@{offset}  "
            f"id={letter.event_id}  {p['reason'][:100]}"
        )
    print(f"{len(letters)} dead letters of group {args.group}")
    skipped = [letter for letter in letters if letter.truncated()]
    for letter in skipped:
        print(f"not replayable, a header was truncated: {letter.origin}", file=sys.stderr)
    replayable = [letter for letter in letters if not letter.truncated()]
    if not args.apply:
        return 0
    sent = asyncio.run(replay(kafka, replayable))
    print(f"replayed {sent} records to their origin topics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
