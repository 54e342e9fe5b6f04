"""Dead letters over REST, for operators (``admin`` scope): list what every consumer
dead-lettered to ``collections.dlq.v1`` and, after a fix, replay the original record to its
origin topic.

A dead letter's id is ``<partition>-<offset>`` on the DLQ topic. The listing reads the topic
with a short-lived consumer without a group (nothing is committed) and never returns the
original value, only its length: it may hold personal data. A replay re-publishes the original
key, headers and value (or a corrected value from the request) and answers with where it
landed; it is idempotent through ``Idempotency-Key`` (the workflow's ``idempotency_keys``
table). The letters of every service replay the same way: the key, headers and value are
the original bytes (collections_kit.consumer.original_record), and a consumer whose claim
of the event ended in a ``handler_failed`` letter takes the claim over when the replay
arrives (collections_kit.consumer), so no inbox is touched here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import datetime
from typing import Annotated, Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from fastapi import APIRouter, Body, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from collections_kit.auth import Principal, require
from collections_kit.consumer import DEAD_LETTER_HEADER_LIMIT, VALUE_TRUNCATED, original_record
from collections_kit.contract import DeadLetter
from collections_kit.envelope import MalformedMessageError, decode
from collections_kit.kafka import client_kwargs
from collections_kit.problems import PROBLEM_JSON, PROBLEM_RESPONSES, Problem, ProblemError
from collections_kit.runtime import Runtime
from collections_kit.topics import Topic
from workflow.app.commands import KeyReusedError, claim_or_replay, request_hash
from workflow.app.ports import StartUnitOfWork

Admin = Annotated[Principal, require("admin")]
LetterId = Annotated[
    str,
    Path(
        pattern=r"^[0-9]{1,6}-[0-9]{1,19}$",
        examples=["0-42"],
        description="`<partition>-<offset>` on the DLQ topic",
    ),
]
IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=8,
        max_length=200,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Unique per intended replay; a retry with the same key replays the answer.",
        examples=["0b6c6d0e-5a53-4a4e-9d7e-3f0a4c1d2e71"],
    ),
]
# Only identifiers are shown; anything else in a key or header may be personal data.
_IDENTIFIER = re.compile(r"^[A-Za-z0-9._:/-]{1,200}$")
_READ_TIMEOUT_S = 10.0

REPLAY_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **PROBLEM_RESPONSES,
    409: {
        "model": Problem,
        "description": "The letter cannot be replayed as it is",
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    },
}


class DeadLetterView(BaseModel):
    id: str = Field(description="`<partition>-<offset>` on the DLQ topic", examples=["0-42"])
    reason: str
    error_kind: str
    consumer_group: str
    origin_topic: str
    origin_partition: int
    origin_offset: int
    loan_id: str | None = Field(
        description="The origin record's key when it is an id, else the payload's loan_id "
        "when that is one"
    )
    event_id: str | None = Field(description="The origin record's CloudEvents id")
    event_type: str | None
    value_length: int = Field(description="Length of the original value (never shown)")
    value_encoding: str
    failed_at: datetime


class DeadLetterPage(BaseModel):
    dead_letters: list[DeadLetterView]
    next_after: str | None = Field(description="Pass as `after` for the next page.")


class ReplayRequest(BaseModel):
    value: str | None = Field(
        default=None,
        max_length=60_000,
        description="A corrected value (UTF-8 text) to publish instead of the original.",
    )
    reason: str = Field(default="", max_length=500, examples=["schema fix deployed"])


class ReplayResult(BaseModel):
    id: str
    origin_topic: str
    partition: int
    offset: int
    corrected: bool


router = APIRouter(prefix="/v1", tags=["dead letters"])


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _dlq_topic(runtime: Runtime) -> str:
    return runtime.settings.topic_prefix + Topic.DLQ.value


def _letter_of(record: ConsumerRecord[bytes, bytes]) -> DeadLetter | None:
    try:
        envelope = decode(record.key, record.value, record.headers)
    except MalformedMessageError:
        return None
    return envelope.data if isinstance(envelope.data, DeadLetter) else None


def _identifier(value: str | None) -> str | None:
    return value if value is not None and _IDENTIFIER.match(value) else None


def _loan_id(letter: DeadLetter) -> str | None:
    """What is known of the loan: the key, or (a key that is not UTF-8, say) the payload's
    loan_id. Only an identifier is shown; the rest of the value is never read out."""
    if letter.key_encoding == "utf-8" and _identifier(letter.origin_key):
        return letter.origin_key
    if letter.value_encoding != "utf-8" or VALUE_TRUNCATED in letter.reason:
        return None
    try:
        payload = json.loads(letter.origin_value)
    except ValueError:
        return None
    loan_id = payload.get("loan_id") if isinstance(payload, dict) else None
    return _identifier(loan_id) if isinstance(loan_id, str) else None


def _header_identifier(letter: DeadLetter, name: str) -> str | None:
    if letter.origin_header_encodings.get(name, "utf-8") != "utf-8":
        return None
    return _identifier(letter.origin_headers.get(name))


def _value_length(letter: DeadLetter) -> int:
    if letter.value_encoding == "base64":
        return len(base64.b64decode(letter.origin_value))
    return len(letter.origin_value.encode())


def _view(partition: int, offset: int, letter: DeadLetter) -> DeadLetterView:
    return DeadLetterView(
        id=f"{partition}-{offset}",
        reason=letter.reason,
        error_kind=letter.error_kind,
        consumer_group=letter.consumer_group,
        origin_topic=letter.origin_topic,
        origin_partition=letter.origin_partition,
        origin_offset=letter.origin_offset,
        loan_id=_loan_id(letter),
        event_id=_header_identifier(letter, "ce_id"),
        event_type=_header_identifier(letter, "ce_type"),
        value_length=_value_length(letter),
        value_encoding=letter.value_encoding,
        failed_at=letter.failed_at,
    )


def _consumer(runtime: Runtime) -> AIOKafkaConsumer:
    # No group: partitions are assigned by hand and no offset is ever committed.
    return AIOKafkaConsumer(
        **client_kwargs(runtime.settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"{runtime.settings.service_name}-dlq-reader",
    )


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
    return sorted(found or ())


def _parse_id(letter_id: str) -> tuple[int, int]:
    partition, offset = letter_id.split("-", 1)
    return int(partition), int(offset)


async def read_page(
    runtime: Runtime, *, after: str | None, limit: int, group: str | None
) -> DeadLetterPage:
    """Letters in (partition, offset) order after ``after``; reads only what it returns."""
    start = _parse_id(after) if after else (-1, -1)
    topic = _dlq_topic(runtime)
    consumer = _consumer(runtime)
    await consumer.start()
    found: list[DeadLetterView] = []
    more = False
    try:
        partitions = [p for p in await _partitions(consumer, topic) if p >= start[0]]
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return DeadLetterPage(dead_letters=[], next_after=None)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            first = start[1] + 1 if tp.partition == start[0] else 0
            if first >= ends[tp]:
                continue
            consumer.assign([tp])
            consumer.seek(tp, first)
            async with asyncio.timeout(_READ_TIMEOUT_S):
                while await consumer.position(tp) < ends[tp] and not more:
                    batch = await consumer.getmany(tp, timeout_ms=500, max_records=500)
                    for record in batch.get(tp, []):
                        if record.offset >= ends[tp]:
                            break
                        letter = _letter_of(record)
                        if letter is None or (group and letter.consumer_group != group):
                            continue
                        if len(found) == limit:
                            more = True
                            break
                        found.append(_view(tp.partition, record.offset, letter))
            if more:
                break
    except TimeoutError as exc:
        raise ProblemError(
            503, "Dead-letter topic unavailable", "Kafka did not answer in time."
        ) from exc
    finally:
        await consumer.stop()
    return DeadLetterPage(dead_letters=found, next_after=found[-1].id if more else None)


async def read_one(runtime: Runtime, letter_id: str) -> DeadLetter:
    partition, offset = _parse_id(letter_id)
    topic = _dlq_topic(runtime)
    tp = TopicPartition(topic, partition)
    consumer = _consumer(runtime)
    await consumer.start()
    try:
        if partition not in await _partitions(consumer, topic):
            raise _letter_not_found(letter_id)
        end = (await consumer.end_offsets([tp]))[tp]
        if offset >= end:
            raise _letter_not_found(letter_id)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        async with asyncio.timeout(_READ_TIMEOUT_S):
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
                for record in batch.get(tp, []):
                    letter = _letter_of(record) if record.offset == offset else None
                    if letter is None:
                        raise _letter_not_found(letter_id)
                    return letter
                if await consumer.position(tp) > offset:  # compacted or deleted away
                    raise _letter_not_found(letter_id)
    except TimeoutError as exc:
        raise ProblemError(
            503, "Dead-letter topic unavailable", "Kafka did not answer in time."
        ) from exc
    finally:
        await consumer.stop()


def _letter_not_found(letter_id: str) -> ProblemError:
    return ProblemError(
        404,
        "Dead letter not found",
        f"No dead letter {letter_id}.",
        type_="https://collections.example/problems/dead-letter-not-found",
    )


def _replayable_topic(runtime: Runtime, letter: DeadLetter) -> str:
    prefix = runtime.settings.topic_prefix
    allowed = {prefix + t.value for t in Topic if t is not Topic.DLQ}
    if letter.origin_topic not in allowed:
        raise ProblemError(
            409, "Not replayable", "The letter's origin topic is not one of the contract's topics."
        )
    if any(len(v) >= DEAD_LETTER_HEADER_LIMIT for v in letter.origin_headers.values()):
        raise ProblemError(
            409, "Not replayable", "A header of the original record was truncated in the letter."
        )
    return letter.origin_topic


def _check_value(letter: DeadLetter, corrected: str | None) -> None:
    """An oversized record's value is cut in its letter: only a corrected value replays it."""
    if corrected is None and VALUE_TRUNCATED in letter.reason:
        raise ProblemError(
            409,
            "Not replayable",
            "The original record's value was truncated in the letter; "
            "replay it with a corrected value.",
        )


@router.get(
    "/dead-letters",
    response_model=DeadLetterPage,
    responses=PROBLEM_RESPONSES,
    summary="Dead-lettered records of every consumer, in DLQ order (no values)",
)
async def list_dead_letters(
    request: Request,
    _: Admin,
    after: Annotated[str | None, Query(pattern=r"^[0-9]{1,6}-[0-9]{1,19}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    group: Annotated[
        str | None, Query(max_length=200, description="Only this consumer group's")
    ] = None,
) -> DeadLetterPage:
    return await read_page(_runtime(request), after=after, limit=limit, group=group)


@router.post(
    "/dead-letters/{letter_id}/replay",
    response_model=ReplayResult,
    responses=REPLAY_PROBLEMS,
    summary="Re-publish a dead letter's original record (or a corrected value) to its origin topic",
)
async def replay_dead_letter(
    letter_id: LetterId,
    request: Request,
    key: IdempotencyKey,
    caller: Admin,
    body: Annotated[ReplayRequest | None, Body()] = None,
) -> JSONResponse:
    runtime = _runtime(request)
    body = body or ReplayRequest()
    hashed = request_hash(
        {
            "route": "dead-letter-replay",
            "id": letter_id,
            "body": body.model_dump(),
            "actor": caller.subject,
        }
    )
    start: StartUnitOfWork = runtime.state["uow"]
    async with start(actor=caller.subject) as uow:
        # A concurrent retry with the same key waits here for this one's answer.
        try:
            kept = await claim_or_replay(uow.idempotency_keys, key, hashed)
        except KeyReusedError as exc:
            raise ProblemError(
                422, "Idempotency-Key reused", "This key was used for a different request."
            ) from exc
        if kept is not None:
            return JSONResponse(kept.body, status_code=kept.status)
        letter = await read_one(runtime, letter_id)
        topic = _replayable_topic(runtime, letter)
        _check_value(letter, body.value)
        record_key, value, headers = original_record(letter)
        if body.value is not None:
            value = body.value.encode()
        # Published inside the transaction: if Kafka refuses, the key is not used up. A
        # crash after the send and before the commit publishes twice on retry, which every
        # consumer's inbox absorbs (same CloudEvents id).
        meta = await runtime.producer.send_and_wait(
            topic, value=value, key=record_key, headers=headers
        )
        result = ReplayResult(
            id=letter_id,
            origin_topic=topic,
            partition=meta.partition,
            offset=meta.offset,
            corrected=body.value is not None,
        ).model_dump(mode="json")
        await uow.idempotency_keys.keep(key, 200, result)
        await uow.commit()
    return JSONResponse(result)
