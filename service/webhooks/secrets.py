"""Webhook signing secrets: made here, kept encrypted at rest, read back to sign. I/O: Postgres.

A secret is Standard Webhooks' ``whsec_`` + base64 of 32 random bytes, shown once, at
creation. It never enters an event. Unlike a token secret (kept as a keyed digest), the
registry needs it back to sign each delivery, so ``webhook_secrets`` holds it AES-256-GCM
encrypted under a key derived from the token pepper, which lives outside the database
(``service.commands.token_secrets``): a dump of the database alone does not reveal it. The
subscription id is the associated data, so a row copied to another subscription fails.
"""

from __future__ import annotations

import base64
import binascii
import secrets

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from events.errors import ValidationError
from service.commands.token_secrets import Pepper

PREFIX = "whsec_"
_KEY_PURPOSE = "webhook-secrets v1"
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64


class SecretUnavailableError(RuntimeError):
    """No secret for a subscription, or it cannot be decrypted with this pepper."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def check_secret(secret: str) -> str:
    """A caller's own secret: ``whsec_`` + base64 of 24 to 64 bytes (422 otherwise)."""
    body = secret.removeprefix(PREFIX)
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not secret.startswith(PREFIX) or not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValidationError(
            "secret",
            "pattern",
            f"a webhook secret is {PREFIX} + base64 of {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes"
            " (or leave it out and one is generated)",
        )
    return secret


class SecretBox:
    """Encrypts and decrypts webhook secrets under the pepper-derived key."""

    def __init__(self, pepper: Pepper) -> None:
        self._aead = AESGCM(pepper.derive(_KEY_PURPOSE))

    def __repr__(self) -> str:
        return "SecretBox(<hidden>)"

    def seal(self, subscription_id: str, secret: str) -> tuple[bytes, bytes]:
        nonce = secrets.token_bytes(12)
        return nonce, self._aead.encrypt(nonce, secret.encode(), subscription_id.encode())

    def open(self, subscription_id: str, nonce: bytes, ciphertext: bytes) -> str:
        try:
            return self._aead.decrypt(nonce, ciphertext, subscription_id.encode()).decode()
        except InvalidTag:
            raise SecretUnavailableError(
                f"the secret of webhook {subscription_id} does not decrypt: another token pepper?"
            ) from None


async def store_secret(
    conn: asyncpg.Connection, box: SecretBox, subscription_id: str, secret: str
) -> None:
    """Keep ``secret`` (in the transaction that creates the subscription)."""
    nonce, ciphertext = box.seal(subscription_id, secret)
    await conn.execute(
        "INSERT INTO webhook_secrets (subscription_id, nonce, ciphertext) VALUES ($1, $2, $3)",
        subscription_id,
        nonce,
        ciphertext,
    )


async def load_secret(
    conn: asyncpg.Connection | asyncpg.Pool, box: SecretBox, subscription_id: str
) -> str:
    row = await conn.fetchrow(
        "SELECT nonce, ciphertext FROM webhook_secrets WHERE subscription_id = $1",
        subscription_id,
    )
    if row is None:
        raise SecretUnavailableError(f"webhook {subscription_id} has no secret")
    return box.open(subscription_id, bytes(row["nonce"]), bytes(row["ciphertext"]))


async def forget_secret(conn: asyncpg.Connection | asyncpg.Pool, subscription_id: str) -> None:
    """A deleted subscription signs nothing any more: its secret goes."""
    await conn.execute("DELETE FROM webhook_secrets WHERE subscription_id = $1", subscription_id)
