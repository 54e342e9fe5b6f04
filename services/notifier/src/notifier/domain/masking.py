"""Masked views of personal data: enough to recognise a record, not to use it."""

from __future__ import annotations


def mask_email(email: str) -> str:
    local, at, domain = email.rpartition("@")
    if not at or not local:
        return "***"
    return f"{local[0]}***@{domain}"


def mask_phone(phone: str) -> str:
    # Keeps the country code and the last four digits, which is what people check.
    if len(phone) <= 7:
        return "*" * max(len(phone) - 2, 0) + phone[-2:]
    return phone[:3] + "*" * (len(phone) - 7) + phone[-4:]


def mask_text(text: str, keep: int = 3) -> str:
    """A postal address or a name: its first few characters only."""
    stripped = text.strip()
    if len(stripped) <= keep:
        return stripped[:1] + "***"
    return stripped[:keep] + "***"
