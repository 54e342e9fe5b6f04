"""Personal data at rest: AES-256-GCM under a key ring from settings.

A sealed value is self-describing, ``pii1:<key id>:<base64(nonce || ciphertext+tag)>`` for
text (bytes: the same with raw bytes after the second colon), so keys can rotate: new
values are sealed under the active key, old ones open under whichever key sealed them
while that key stays in the ring (re-sealing moves them to the active key).

Each value is sealed with associated data naming where it lives (table, column and row),
so a sealed value copied into another row or column does not open: nobody with write
access to the database can move one borrower's phone number onto another borrower.

The ring is configured as ``kid1:<base64 32-byte key>,kid2:...`` plus the active key id.
``dev_ring()`` is a fixed, public key for development and tests only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "pii1:"
_PREFIX_BYTES = PREFIX.encode()
_NONCE = 12
_KID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
DEV_KID = "dev1"
DEV_KEYS = (
    f"{DEV_KID}:"
    + base64.b64encode(
        hashlib.sha256(
            b"collections-kit development PII key; public, never for production"
        ).digest()
    ).decode()
)


class PiiError(Exception):
    """A sealed value that cannot be opened (unknown key, tampered, moved, malformed)."""


class KeyRing:
    def __init__(self, keys: dict[str, bytes], active: str) -> None:
        if active not in keys:
            raise ValueError(f"the active key id {active!r} is not in the key ring")
        for kid, key in keys.items():
            if not _KID.match(kid):
                raise ValueError(f"key id {kid!r}: letters, digits, '.', '_', '-' only")
            if len(key) != 32:
                raise ValueError(f"key {kid!r} must be 32 bytes (AES-256), got {len(key)}")
        self._keys = {kid: AESGCM(key) for kid, key in keys.items()}
        self.active = active

    @classmethod
    def parse(cls, spec: str, active: str | None = None) -> KeyRing:
        """``kid1:<base64>,kid2:<base64>``; the active key defaults to the last one."""
        keys: dict[str, bytes] = {}
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            kid, sep, encoded = part.partition(":")
            if not sep:
                raise ValueError("each key is <key id>:<base64 key>")
            try:
                keys[kid.strip()] = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"key {kid.strip()!r} is not valid base64") from None
        if not keys:
            raise ValueError("the key ring is empty")
        return cls(keys, active or list(keys)[-1])

    @property
    def kids(self) -> set[str]:
        return set(self._keys)

    # --- text ---------------------------------------------------------------------------

    def seal(self, value: str | None, *, aad: str) -> str | None:
        if value is None:
            return None
        return (
            PREFIX + self.active + ":" + base64.b64encode(self._seal(value.encode(), aad)).decode()
        )

    def open(self, token: str | None, *, aad: str) -> str | None:
        if token is None:
            return None
        if not token.startswith(PREFIX):
            raise PiiError("not a sealed value")
        kid, sep, encoded = token[len(PREFIX) :].partition(":")
        if not sep:
            raise PiiError("malformed sealed value")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise PiiError("malformed sealed value") from None
        return self._open(kid, raw, aad).decode()

    # --- bytes --------------------------------------------------------------------------

    def seal_bytes(self, value: bytes, *, aad: str) -> bytes:
        return _PREFIX_BYTES + self.active.encode() + b":" + self._seal(value, aad)

    def open_bytes(self, token: bytes, *, aad: str) -> bytes:
        if not token.startswith(_PREFIX_BYTES):
            raise PiiError("not a sealed value")
        kid, sep, raw = token[len(_PREFIX_BYTES) :].partition(b":")
        if not sep:
            raise PiiError("malformed sealed value")
        return self._open(kid.decode(errors="replace"), raw, aad)

    def key_id(self, token: str | bytes) -> str | None:
        """Which key sealed ``token`` (None: not a sealed value)."""
        text = token.decode(errors="replace") if isinstance(token, bytes) else token
        if not text.startswith(PREFIX):
            return None
        return text[len(PREFIX) :].split(":", 1)[0]

    def _seal(self, plaintext: bytes, aad: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._keys[self.active].encrypt(nonce, plaintext, aad.encode())

    def _open(self, kid: str, raw: bytes, aad: str) -> bytes:
        cipher = self._keys.get(kid)
        if cipher is None:
            raise PiiError(f"sealed under key {kid!r}, which is not in the key ring")
        try:
            return cipher.decrypt(raw[:_NONCE], raw[_NONCE:], aad.encode())
        except (InvalidTag, ValueError):
            raise PiiError("sealed value does not open (tampered or moved)") from None


def dev_ring() -> KeyRing:
    return KeyRing.parse(DEV_KEYS, DEV_KID)
