"""The operator CLI, ``collections-ops`` (or ``python -m workflow.cli``): works only through
the workflow's REST API, with the operator's bearer token.

    collections-ops case show L-000123
    collections-ops case timeline L-000123
    collections-ops case hold L-000123 --kind hardship --reason "borrower in hospital"
    collections-ops case resume L-000123 --reason "documents received"
    collections-ops dlq list [--group workflow]
    collections-ops dlq replay 0-42 [--value-file fixed.json] [--reason "schema fixed"]

The API URL and token come from ``--url`` / ``--token`` or ``COLLECTIONS_API_URL`` /
``COLLECTIONS_TOKEN``. ``--json`` prints the API's answer as it is. Personal data is never
printed: the tables leave out recipients, and the API masks contact details anyway.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer

app = typer.Typer(
    help="Operate the collections workflow through its REST API.",
    no_args_is_help=True,
    add_completion=False,
)
case_app = typer.Typer(help="Show and change cases.", no_args_is_help=True)
dlq_app = typer.Typer(
    help="Dead-lettered messages: list, replay after a fix.", no_args_is_help=True
)
app.add_typer(case_app, name="case")
app.add_typer(dlq_app, name="dlq")

# Keys of the case view that may carry personal data; the tables never print them.
_PERSONAL = {"recipient", "borrower_id"}


class Api:
    def __init__(self, url: str, token: str | None, as_json: bool) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=30.0)
        self.as_json = as_json

    def call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        try:
            answer = self.client.request(
                method,
                path,
                json=body,
                headers=headers,
                params={k: v for k, v in (params or {}).items() if v is not None},
            )
        except httpx.HTTPError as exc:
            fail(f"cannot reach the API: {type(exc).__name__}: {exc}")
        if answer.status_code >= 400:
            try:
                problem = answer.json()
                message = f"{problem.get('title', 'error')}: {problem.get('detail') or ''}"
                errors = problem.get("errors")
                if errors:
                    message += " " + "; ".join(
                        f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', '')}"
                        for e in errors
                    )
            except ValueError:
                message = answer.text[:500]
            fail(f"{answer.status_code} {message}")
        return answer.json()


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _api(ctx: typer.Context) -> Api:
    api: Api = ctx.obj
    return api


@app.callback()
def main_options(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option(envvar="COLLECTIONS_API_URL", help="The workflow's base URL")
    ] = "http://127.0.0.1:8001",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="COLLECTIONS_TOKEN", help="Bearer token (cases:read, cases:write, admin)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON answer")] = False,
) -> None:
    ctx.obj = Api(url, token, as_json)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)[:80]
    return str(value).replace("\n", " ")[:80]


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def _print_case(case: dict[str, Any]) -> None:
    for name in (
        "loan_id",
        "case_id",
        "stage",
        "status",
        "phase",
        "exit",
        "currency",
        "outstanding",
        "amount_overdue",
        "days_past_due",
        "jurisdiction",
        "policy_version",
        "opened_at",
        "updated_at",
        "next_action_at",
        "unanswered_contacts",
    ):
        typer.echo(f"{name + ':':<22}{_cell(case.get(name))}")
    hold = case.get("hold")
    if hold:
        typer.echo(
            f"{'hold:':<22}{hold['kind']} since {hold['started_at']} by {hold['actor']}"
            f" until {_cell(hold.get('until'))}: {hold['reason']}"
        )
    arrangement = case.get("arrangement")
    if arrangement:
        typer.echo(
            f"{'arrangement:':<22}{arrangement['kind']} total {arrangement['total']} "
            f"paid {arrangement['paid']}"
        )
    if case.get("milestones"):
        typer.echo(f"{'milestones:':<22}{', '.join(case['milestones'])}")
    intents = [{k: v for k, v in i.items() if k not in _PERSONAL} for i in case.get("intents", [])]
    if intents:
        typer.echo("")
        _table(intents, ["intent_id", "stage", "channel", "status", "reason", "created_at"])


# --- case ----------------------------------------------------------------------------------


@case_app.command("show")
def case_show(ctx: typer.Context, loan_id: str) -> None:
    """A case: stage, status, hold, arrangement and its contact intents."""
    api = _api(ctx)
    case = api.call("GET", f"/v1/cases/{loan_id}")
    if api.as_json:
        _print_json(case)
    else:
        _print_case(case)


@case_app.command("timeline")
def case_timeline(
    ctx: typer.Context,
    loan_id: str,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 200,
    after: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Every audited step of a case, oldest first."""
    api = _api(ctx)
    page = api.call("GET", f"/v1/cases/{loan_id}/timeline", params={"limit": limit, "after": after})
    if api.as_json:
        _print_json(page)
        return
    rows = [
        {
            **e,
            "stage": f"{e['stage_before'] or ''}>{e['stage_after'] or ''}"
            if e["stage_before"] != e["stage_after"]
            else e["stage_after"],
            "status": f"{e['status_before'] or ''}>{e['status_after'] or ''}"
            if e["status_before"] != e["status_after"]
            else e["status_after"],
        }
        for e in page["entries"]
    ]
    _table(rows, ["id", "at", "kind", "cause", "actor", "stage", "status"])
    if page.get("next_after") is not None:
        typer.echo(f"more: --after {page['next_after']}")


@case_app.command("hold")
def case_hold(
    ctx: typer.Context,
    loan_id: str,
    kind: Annotated[str, typer.Option(help="hardship, dispute, breathing_space or operator")],
    reason: Annotated[str, typer.Option(help="Why (on the timeline)")],
    until: Annotated[str | None, typer.Option(help="RFC 3339 end of the hold")] = None,
) -> None:
    """Put a case on hold: no escalation, no contact until resumed."""
    api = _api(ctx)
    body: dict[str, Any] = {"kind": kind, "reason": reason}
    if until:
        body["until"] = until
    case = api.call(
        "POST", f"/v1/cases/{loan_id}/holds", body=body, idempotency_key=str(uuid.uuid4())
    )
    if api.as_json:
        _print_json(case)
    else:
        _print_case(case)


@case_app.command("resume")
def case_resume(
    ctx: typer.Context,
    loan_id: str,
    reason: Annotated[str, typer.Option(help="Why (on the timeline)")],
    verification_outcome: Annotated[
        str | None, typer.Option(help="Required for a disputed debt")
    ] = None,
) -> None:
    """Resume a held case; contacts wait for a fresh ledger confirmation."""
    api = _api(ctx)
    body: dict[str, Any] = {"reason": reason}
    if verification_outcome:
        body["verification_outcome"] = verification_outcome
    case = api.call(
        "POST", f"/v1/cases/{loan_id}/resume", body=body, idempotency_key=str(uuid.uuid4())
    )
    if api.as_json:
        _print_json(case)
    else:
        _print_case(case)


# --- dlq -----------------------------------------------------------------------------------


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    group: Annotated[str | None, typer.Option(help="Only this consumer group")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
    after: Annotated[str | None, typer.Option(help="Page after this id")] = None,
) -> None:
    """Dead-lettered messages of every consumer (never their values)."""
    api = _api(ctx)
    page = api.call(
        "GET", "/v1/dead-letters", params={"group": group, "limit": limit, "after": after}
    )
    if api.as_json:
        _print_json(page)
        return
    rows = [
        {**d, "origin": f"{d['origin_topic']}/{d['origin_partition']}@{d['origin_offset']}"}
        for d in page["dead_letters"]
    ]
    _table(rows, ["id", "failed_at", "consumer_group", "error_kind", "origin", "loan_id", "reason"])
    typer.echo(f"{len(rows)} dead letters")
    if page.get("next_after"):
        typer.echo(f"more: --after {page['next_after']}")


@dlq_app.command("replay")
def dlq_replay(
    ctx: typer.Context,
    letter_id: str,
    value_file: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            readable=True,
            help="Publish this corrected value (UTF-8) instead of the original",
        ),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why, for the record")] = "",
    idempotency_key: Annotated[
        str | None, typer.Option(help="Reuse to retry safely (default: a new one)")
    ] = None,
) -> None:
    """Re-publish a dead letter's original record (or a corrected value) to its topic."""
    api = _api(ctx)
    body: dict[str, Any] = {"reason": reason}
    if value_file is not None:
        body["value"] = value_file.read_text(encoding="utf-8")
    key = idempotency_key or str(uuid.uuid4())
    result = api.call(
        "POST", f"/v1/dead-letters/{letter_id}/replay", body=body, idempotency_key=key
    )
    if api.as_json:
        _print_json(result)
        return
    typer.echo(
        f"replayed {result['id']} to {result['origin_topic']}/{result['partition']}"
        f"@{result['offset']}" + (" (corrected value)" if result["corrected"] else "")
    )
    typer.echo(f"idempotency key: {key}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
