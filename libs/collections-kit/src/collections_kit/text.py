"""Text PostgreSQL can store, for every REST input of every service.

A ``text`` column cannot hold NUL, and a lone surrogate (JSON allows ``"\\ud800"``) cannot
be encoded as UTF-8: either answered 500 from the database wherever a request carried one
(the ``after`` cursor, a hold's reason, an opt-out's note...). :data:`GUARD` refuses
them before any handler runs, as a 422 problem naming the field, in path and query
parameters and anywhere in a JSON body, so no request model or route has to remember it.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError

UNSTORABLE = "string_unstorable"
_MESSAGE = "text must not contain NUL or unpaired surrogate characters"


def storable(value: str) -> bool:
    """Whether PostgreSQL can store ``value`` in a ``text`` column."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unstorable_locations(value: Any, loc: tuple[str | int, ...]) -> list[tuple[str | int, ...]]:
    """Where in a decoded JSON value a string (a key or a value) cannot be stored."""
    if isinstance(value, str):
        return [] if storable(value) else [loc]
    if isinstance(value, list):
        return [
            found for i, item in enumerate(value) for found in unstorable_locations(item, (*loc, i))
        ]
    if isinstance(value, dict):
        found: list[tuple[str | int, ...]] = []
        for key, item in value.items():
            if not storable(key):
                found.append(loc)
            found.extend(unstorable_locations(item, (*loc, key)))
        return found
    return []


async def _storable_inputs(request: Request) -> None:
    found: list[tuple[str | int, ...]] = [
        ("path", name)
        for name, value in request.path_params.items()
        if isinstance(value, str) and not storable(value)
    ]
    found += [
        ("query", name)
        for name, value in request.query_params.multi_items()
        if not (storable(name) and storable(value))
    ]
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            # Already read and parsed for the route's body parameter; cached on the request.
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None  # FastAPI answers an unparsable body itself
        found += unstorable_locations(body, ("body",))
    if found:
        raise RequestValidationError(
            [{"loc": loc, "type": UNSTORABLE, "msg": _MESSAGE} for loc in found]
        )


# An app-wide dependency (``FastAPI(dependencies=[GUARD])``): it runs before the route's own
# parameters are validated. A caller without a valid token is still told 401 first: the
# problem handler authenticates before answering any 422 (collections_kit.problems).
GUARD = Depends(_storable_inputs)


__all__ = ["GUARD", "UNSTORABLE", "storable", "unstorable_locations"]
