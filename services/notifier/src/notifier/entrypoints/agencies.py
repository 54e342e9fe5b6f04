"""Contact details for collection agencies: only of the borrowers whose cases are placed
with the calling agency now (scope ``collections:agency``; the agency is its token's
subject). Which cases are placed with whom comes from the workflow's
``collections.placements.v1``; any other borrower is 403, whether or not we know them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from collections_kit.auth import Principal, require
from collections_kit.problems import PROBLEM_RESPONSES, ProblemError
from notifier.entrypoints.api import BorrowerIdPath, ContactDetailsView, GuarantorView, Work

Agency = Annotated[Principal, require("collections:agency")]

router = APIRouter(prefix="/v1", tags=["contact details"])


@router.get(
    "/agency/borrowers/{borrower_id}/contact-details",
    response_model=ContactDetailsView,
    responses=PROBLEM_RESPONSES,
    summary="An agency reads the contact details of a borrower whose case is placed with it",
)
async def get_placed_contact_details(
    borrower_id: BorrowerIdPath, uow: Work, caller: Agency
) -> ContactDetailsView:
    async with uow() as work:
        allowed = await work.agency_placements.placed_with(caller.subject, borrower_id)
        found = await work.contact_details.get(borrower_id) if allowed else None
    if not allowed:
        raise ProblemError(
            403,
            "Not placed with this agency",
            f"No case of borrower {borrower_id} is placed with you now; an agency reads "
            "the contact details of the cases placed with it only.",
            type_="https://collections.example/problems/not-placed-with-agency",
        )
    if found is None:
        raise ProblemError(
            404,
            "No contact details",
            f"No contact details are stored for borrower {borrower_id}.",
            type_="https://collections.example/problems/no-contact-details",
        )
    details, updated_at = found
    g = details.guarantor
    # Unmasked: the agency calls these numbers, each call under a contact permit.
    return ContactDetailsView(
        borrower_id=borrower_id,
        language=details.language,
        email=details.debtor.email,
        phone=details.debtor.phone,
        postal_address=details.debtor.postal_address,
        guarantor=GuarantorView(
            name=g.name or "", email=g.email, phone=g.phone, postal_address=g.postal_address
        )
        if g
        else None,
        updated_at=updated_at,
        masked=False,
    )
