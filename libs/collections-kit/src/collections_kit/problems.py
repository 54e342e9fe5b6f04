"""RFC 9457 problem details for every HTTP error."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match

from collections_kit.db import database_unavailable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# nginx's "client closed request": the answer to a request whose client went away. Nobody
# reads it; it only names the case wherever responses are counted.
CLIENT_CLOSED_REQUEST = 499


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class ProblemError(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.problem = Problem(type=type_, title=title, status=status, detail=detail)
        self.headers = headers or {}


def problem_response(
    problem: Problem, request: Request, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = problem.model_copy(update={"instance": str(request.url.path)})
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "model": Problem,
        "description": title,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for status, title in ((404, "Not found"), (422, "Invalid request"))
}

_CHALLENGE = {
    "WWW-Authenticate": {
        "description": "RFC 6750 challenge: the error and, for 403, the scope needed.",
        "schema": {"type": "string"},
    }
}
# Added by the runtime to every operation that needs a token (401, 403) or takes a body (413).
AUTH_RESPONSES: dict[str, dict[str, Any]] = {
    "401": {
        "description": "No valid bearer token (missing, malformed, expired, wrong "
        "audience or issuer)",
        "headers": _CHALLENGE,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    },
    "403": {
        "description": "The token lacks the scope this operation needs",
        "headers": _CHALLENGE,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    },
}
MALFORMED_BODY_RESPONSE: dict[str, Any] = {
    "description": "The request body cannot be parsed at all",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
TOO_LARGE_RESPONSE: dict[str, Any] = {
    "description": "The request body is larger than allowed",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    # Asked of the router, method by method: an included router is one route whose own
    # ``methods`` is empty (the Allow header came out empty), but it matches fully when
    # one of its routes takes the method at this path.
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]


def install(
    app: FastAPI,
    *,
    refusal_before_input: Callable[[Request], Awaitable[ProblemError | None]] | None = None,
) -> None:
    """``refusal_before_input``: what to answer instead of a 400/422 about the request's
    input, if anything (the runtime passes authentication: a caller without a valid token
    is told 401 however malformed its body)."""

    async def refused_first(request: Request) -> JSONResponse | None:
        refusal = await refusal_before_input(request) if refusal_before_input else None
        return problem_response(refusal.problem, request, refusal.headers) if refusal else None

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProblemError)
        return problem_response(exc.problem, request, exc.headers)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and (refused := await refused_first(request)):
            return refused
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405:
            # Starlette names only the first matching route's method; list them all.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem_response(
            Problem(title=str(exc.detail), status=exc.status_code), request, headers or None
        )

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if refused := await refused_first(request):
            return refused
        errors = [
            {"loc": list(e.get("loc", ())), "type": e.get("type"), "msg": e.get("msg")}
            for e in exc.errors()
        ]
        return problem_response(
            Problem(
                title="Invalid request",
                status=422,
                detail="The request failed validation.",
                errors=errors,
            ),
            request,
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        if database_unavailable(exc):
            # Transient by nature (a restart, a failover, a connection that died with the
            # server, which also resets the pool): the caller should retry.
            return problem_response(
                Problem(
                    title="Service unavailable",
                    status=503,
                    detail="The database is unreachable; retry shortly.",
                ),
                request,
                headers={"Retry-After": "1"},
            )
        return problem_response(Problem(title="Internal error", status=500), request)

    async def on_disconnect(request: Request, _exc: Exception) -> Response:
        # The client went away while its body was being read (closed the connection,
        # gave up waiting): nothing failed here, so one info line and no traceback. The
        # route's template, not its path: a path can carry a borrower's id.
        route = getattr(request.scope.get("route"), "path", None) or request.url.path
        log.info("client disconnected before the answer (%s %s)", request.method, route)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)
