"""Generate the public contract from the code: ``python -m scripts.contracts [--check] [DIR]``.

Writes under ``contracts/``: ``asyncapi.json`` (AsyncAPI 3.0, every topic and message),
``schemas/<type>.json`` (a JSON Schema per message) and ``openapi/<service>.json``. With
``--check`` it writes nothing and exits 1 when the committed files differ.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from collections_kit.contract import MESSAGES, MessageSpec
from collections_kit.topics import DEFAULT_PARTITIONS, Topic, topic_specs

ROOT = Path(__file__).resolve().parent.parent
CE_HEADERS = {
    "type": "object",
    "description": "CloudEvents 1.0 Kafka binary mode: attributes travel as ce_* headers.",
    "required": [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "ce_subject",
        "content-type",
    ],
    "properties": {
        "ce_specversion": {"type": "string", "const": "1.0"},
        "ce_id": {"type": "string", "description": "Unique per event; consumers dedupe on it."},
        "ce_source": {"type": "string", "description": "The publishing system or service."},
        "ce_type": {"type": "string", "description": "The message type, e.g. loan.overdue.v1."},
        "ce_time": {"type": "string", "format": "date-time"},
        "ce_subject": {"type": "string", "description": "The loan id (also the record key)."},
        "content-type": {"type": "string", "const": "application/json"},
        "ce_traceparent": {"type": "string", "description": "W3C trace context, optional."},
    },
}


def _channel_id(topic: Topic) -> str:
    return topic.value.replace(".", "-")


def _service_topics() -> dict[str, tuple[Topic, ...]]:
    from ledger_sync.entrypoints import bootstrap as ledger_sync
    from notifier.entrypoints import bootstrap as notifier
    from workflow.entrypoints import bootstrap as workflow

    return {
        "workflow": workflow.CONSUMED,
        "ledger-sync": ledger_sync.CONSUMED,
        "notifier": notifier.CONSUMED,
    }


def asyncapi() -> dict[str, Any]:
    _, definitions = models_json_schema(
        [(spec.model, "validation") for spec in MESSAGES],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = dict(sorted(definitions.get("$defs", {}).items()))
    schemas["CloudEventsHeaders"] = CE_HEADERS
    partitions = {t.name: t.partitions for t in topic_specs(partitions=DEFAULT_PARTITIONS)}
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic in Topic:
        specs = [s for s in MESSAGES if s.topic is topic]
        channels[_channel_id(topic)] = {
            "address": topic.value,
            "messages": {
                s.model.__name__: {"$ref": f"#/components/messages/{s.model.__name__}"}
                for s in specs
            },
            "bindings": {
                "kafka": {
                    "topic": topic.value,
                    "partitions": partitions[topic.value],
                    "bindingVersion": "0.5.0",
                }
            },
        }
        for s in specs:
            messages[s.model.__name__] = {
                "name": s.ce_type,
                "title": s.model.__name__,
                "summary": s.summary,
                "contentType": "application/json",
                "headers": {"$ref": "#/components/schemas/CloudEventsHeaders"},
                "payload": {"$ref": f"#/components/schemas/{s.model.__name__}"},
                "bindings": {
                    "kafka": {
                        "key": {"type": "string", "description": "loan id"},
                        "bindingVersion": "0.5.0",
                    }
                },
                "x-producer": s.producer,
            }
    operations: dict[str, Any] = {}

    def add(service: str, action: str, topic: Topic, specs: list[MessageSpec]) -> None:
        channel = _channel_id(topic)
        operations[f"{service}.{action}.{channel}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"{service} {action}s on {topic.value}",
            "messages": [
                {"$ref": f"#/channels/{channel}/messages/{s.model.__name__}"} for s in specs
            ],
        }

    for service, consumed in _service_topics().items():
        for topic in consumed:
            add(service, "receive", topic, [s for s in MESSAGES if s.topic is topic])
    for service in ("workflow", "ledger-sync", "notifier"):
        for topic in Topic:
            mine = [s for s in MESSAGES if s.topic is topic and s.producer == service]
            if mine:
                add(service, "send", topic, mine)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Collections workflow events",
            "version": "1.0.0",
            "description": "Kafka contract of the collections services. CloudEvents 1.0 "
            "binary mode, JSON payloads, record key = loan id. Amounts are "
            "decimal strings, never floats.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:19092",
                "protocol": "kafka",
                "description": "The local single-node broker (make stack-up).",
            }
        },
        "channels": channels,
        "operations": dict(sorted(operations.items())),
        "components": {"messages": messages, "schemas": schemas},
    }


def message_schemas() -> dict[str, dict[str, Any]]:
    out = {}
    for spec in MESSAGES:
        schema = spec.model.model_json_schema()
        out[spec.ce_type] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://collections.example/schemas/{spec.ce_type}.json",
            "x-topic": spec.topic.value,
            **schema,
        }
    return out


async def _openapi_docs() -> dict[str, dict[str, Any]]:
    from ledger_sync.entrypoints import bootstrap as ledger_sync
    from ledger_sync.settings import LedgerSyncSettings
    from notifier.entrypoints import bootstrap as notifier
    from notifier.settings import NotifierSettings
    from workflow.entrypoints import bootstrap as workflow
    from workflow.settings import WorkflowSettings

    docs = {}
    for name, module, settings in (
        ("workflow", workflow, WorkflowSettings()),
        ("ledger-sync", ledger_sync, LedgerSyncSettings()),
        ("notifier", notifier, NotifierSettings()),
    ):
        runtime = module.build_runtime(settings)
        docs[name] = module.create_app(runtime, manage_runtime=False).openapi()
        await runtime.producer.stop()
        await runtime.engine.dispose()
    return docs


def lifecycle_doc() -> str:
    """The workflow's transition table, rendered for people (docs/lifecycle.md)."""
    from workflow.domain.lifecycle import TRANSITIONS, Phase, Trigger

    lines = [
        "# Case lifecycle",
        "",
        "Generated by `make contracts` from `workflow/domain/lifecycle.py`; do not edit.",
        "",
        "```mermaid",
        lifecycle_mermaid().rstrip(),
        "```",
        "",
        "## Every phase and trigger",
        "",
        "| trigger | " + " | ".join(p.value for p in Phase) + " |",
        "|---|" + "---|" * len(Phase),
    ]
    for trigger in Trigger:
        cells = [TRANSITIONS[(phase, trigger)].rule.value for phase in Phase]
        lines.append(f"| {trigger.value} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def lifecycle_mermaid() -> str:
    from workflow.domain.lifecycle import mermaid

    return mermaid()


def render() -> dict[str, str]:
    files = {"asyncapi.json": asyncapi()}
    files.update({f"schemas/{name}.json": s for name, s in message_schemas().items()})
    files.update({f"openapi/{n}.json": d for n, d in asyncio.run(_openapi_docs()).items()})
    rendered = {
        path: json.dumps(doc, indent=2, sort_keys=False) + "\n" for path, doc in files.items()
    }
    rendered["../docs/lifecycle.md"] = lifecycle_doc()
    return rendered


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv[1:] if not a.startswith("--")]
    target = Path(args[0]) if args else ROOT / "contracts"
    rendered = render()
    if check:
        stale = [
            p
            for p, text in rendered.items()
            if not (target / p).exists() or (target / p).read_text() != text
        ]
        extra = sorted(
            str(p.relative_to(target))
            for p in target.rglob("*.json")
            if str(p.relative_to(target)) not in rendered
        )
        for path in stale + extra:
            print(f"contracts/{path} differs from the code; run `make contracts`")
        return 1 if stale or extra else 0
    for path, text in rendered.items():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        (target / path).write_text(text)
    print(f"wrote {len(rendered)} contract files to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
