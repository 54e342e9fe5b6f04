"""REST: an operator's decision about a contact in doubt (notifier.domain.in_doubt).

A contact handed to a channel that cannot be asked (SMTP, letters) just before a crash is
never sent again by a timer. Someone who found out that it did not arrive (the relay's
log, the print run) may order it sent again; the order is recorded with who gave it and
why, and the command is decided afresh (a cancellation, a hold or a cap may stop it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, StringConstraints

from collections_kit.auth import Principal, require
from collections_kit.problems import PROBLEM_RESPONSES, ProblemError
from notifier.adapters.uow import SqlNotifierUnitOfWork
from notifier.app.dispatcher import Dispatcher
from notifier.domain.policy import DispatchPolicy

# No control character (NUL among them): the reason goes to a column and the audit trail.
Reason = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=500, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+$"
    ),
]
CommandIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]


class ResendIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"reason": "relay log shows no delivery of this Message-ID"}]
        },
    )

    reason: Reason


router = APIRouter(prefix="/v1")


@router.post(
    "/contacts/{command_id}/resend",
    status_code=204,
    responses={404: PROBLEM_RESPONSES[404], 422: PROBLEM_RESPONSES[422]},
    tags=["contacts"],
    summary="Order a contact in doubt sent again (decided afresh)",
)
async def order_resend(
    request: Request,
    command_id: CommandIdPath,
    body: ResendIn,
    who: Annotated[Principal, require("contacts:write")],
) -> Response:
    policy: DispatchPolicy = request.app.state.runtime.state["policy"]
    start: Callable[[], SqlNotifierUnitOfWork] = request.app.state.runtime.state["uow"]
    async with start() as work:
        repo = work.dispatches
        dispatch = await repo.in_doubt(command_id)
        if dispatch is None:
            raise ProblemError(404, "Not found", "no contact in doubt with this command id")
        await repo.order_resend(
            dispatch,
            reason=body.reason,
            actor=who.subject,
            policy_version=policy.version,
            now=work.now,
        )
        await work.commit()
    dispatcher: Dispatcher = request.app.state.runtime.state["dispatcher"]
    dispatcher.wake()
    return Response(status_code=204)
