"""Where token secrets are checked: keyed digests under a server pepper. I/O: a file, Postgres.

A secret is never recorded in an event, nor any digest of it that a reader of the log could
test guesses against. The table ``token_credentials`` maps HMAC-SHA256(pepper, secret) to
the token id; the pepper is kept outside the database, in ``MODELREG_TOKEN_PEPPER`` or in
the file ``token_pepper`` of the data dir (created 0600 on first start). With a dump of the
database and without the pepper, a guessed secret cannot be checked.

Every process that issues or checks tokens must use the same pepper: several replicas get
it from ``MODELREG_TOKEN_PEPPER``. The database keeps the pepper's fingerprint (an HMAC of a
fixed label, which reveals nothing of the pepper), so a process started with another one
stops at once with a message instead of refusing every token.

Tokens issued before 0.3 recorded an unkeyed SHA-256 in their ``token.issued`` event and
claimed the unique key ``token-sha256:<hex>``; they keep working through that key until an
operator rotates them (``legacy_token_ids`` lists them, ``modelreg serve`` warns).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

import asyncpg

from events.streams import TOKEN_TYPE, token_id_of

PEPPER_FILE = "token_pepper"
MIN_PEPPER_LENGTH = 32
LEGACY_KEY = "token-sha256:"
_FINGERPRINT_LABEL = b"modelreg token pepper fingerprint v1"


class PepperError(ValueError):
    """The pepper is missing, malformed, exposed, or not the one this database uses."""


class Pepper:
    """The server-side key of every token digest (and of what derives from it)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_PEPPER_LENGTH:
            raise PepperError(f"a token pepper needs at least {MIN_PEPPER_LENGTH} bytes")
        self._key = key

    @classmethod
    def generate(cls) -> Pepper:
        return cls(secrets.token_bytes(32))

    def __repr__(self) -> str:
        return "Pepper(<hidden>)"

    def digest(self, secret: str) -> bytes:
        """The keyed digest a secret is stored and looked up by."""
        return hmac.new(self._key, secret.encode(), hashlib.sha256).digest()

    def derive(self, purpose: str) -> bytes:
        """A key of its own for ``purpose`` (e.g. signing cursors), independent of digests."""
        return hmac.new(self._key, b"modelreg derive " + purpose.encode(), hashlib.sha256).digest()

    @property
    def fingerprint(self) -> bytes:
        return hmac.new(self._key, _FINGERPRINT_LABEL, hashlib.sha256).digest()


def legacy_digest(secret: str) -> str:
    """The unkeyed SHA-256 tokens issued before 0.3 were found by."""
    return hashlib.sha256(secret.encode()).hexdigest()


def load_pepper(configured: str | None, data_dir: Path, *, create: bool = True) -> Pepper:
    """The pepper from ``MODELREG_TOKEN_PEPPER`` when set, else from the data dir's file,
    which is created (0600, 256 random bits) when missing and ``create`` is set."""
    if configured is not None:
        if len(configured) < MIN_PEPPER_LENGTH:
            raise PepperError(
                f"MODELREG_TOKEN_PEPPER must be at least {MIN_PEPPER_LENGTH} characters"
                " (e.g. `openssl rand -hex 32`)"
            )
        return Pepper(configured.encode())
    path = data_dir.expanduser() / PEPPER_FILE
    if not create and not path.exists():
        raise PepperError(
            f"no token pepper: {path} does not exist; set MODELREG_TOKEN_PEPPER to the servers' one"
        )
    if not path.exists():
        _create_pepper_file(path)
    return _read_pepper_file(path)


def _create_pepper_file(path: Path) -> None:
    """Write a new pepper to a private file of its own, then link it into place: processes
    starting together on one data dir all end up reading the one complete file that won."""
    scratch = path.with_name(f"{PEPPER_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        # A process that linked first wins: its pepper stands, this one is dropped.
        with contextlib.suppress(FileExistsError):
            os.link(scratch, path)
    except OSError as exc:
        raise PepperError(
            f"cannot create the token pepper {path} ({exc.strerror}); set MODELREG_TOKEN_PEPPER"
        ) from None
    finally:
        scratch.unlink(missing_ok=True)


def _read_pepper_file(path: Path) -> Pepper:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PepperError(f"the token pepper {path} is readable by others: chmod 600 {path}")
    text = path.read_text().strip()
    if len(text) < MIN_PEPPER_LENGTH:
        raise PepperError(f"the token pepper {path} is damaged (fewer than 32 characters)")
    return Pepper(text.encode())


async def check_pepper(pool: asyncpg.Pool | asyncpg.Connection, pepper: Pepper) -> None:
    """Record the pepper's fingerprint on first use; refuse a pepper other than that one."""
    await pool.execute(
        "INSERT INTO token_pepper (id, fingerprint) VALUES (1, $1) ON CONFLICT DO NOTHING",
        pepper.fingerprint,
    )
    recorded: bytes = await pool.fetchval("SELECT fingerprint FROM token_pepper WHERE id = 1")
    if not hmac.compare_digest(bytes(recorded), pepper.fingerprint):
        raise PepperError(
            "this token pepper is not the one this registry's tokens were issued with: give"
            " every process the same MODELREG_TOKEN_PEPPER (or restore the data dir's"
            f" {PEPPER_FILE} file)"
        )


async def store_credential(
    conn: asyncpg.Connection, token_id: str, pepper: Pepper, secret: str
) -> None:
    """Keep the digest of ``token_id``'s secret (in the transaction that issues it)."""
    await conn.execute(
        "INSERT INTO token_credentials (token_id, digest) VALUES ($1, $2)",
        token_id,
        pepper.digest(secret),
    )


# The stream of the token a secret belongs to: by its keyed digest, else (a token issued
# before 0.3) by the unique key of its unkeyed digest. One round trip either way.
_FIND = f"""
SELECT s.stream_id, s.version FROM token_credentials c
  JOIN streams s ON s.stream_id = '{TOKEN_TYPE}:' || c.token_id WHERE c.digest = $1
UNION ALL
SELECT s.stream_id, s.version FROM unique_keys k
  JOIN streams s USING (stream_id) WHERE k.key = $2
LIMIT 1
"""


async def find_token_stream(
    pool: asyncpg.Pool, pepper: Pepper, secret: str
) -> tuple[str, int] | None:
    """(stream id, stream version) of the token whose secret this is, or None."""
    row = await pool.fetchrow(_FIND, pepper.digest(secret), LEGACY_KEY + legacy_digest(secret))
    return None if row is None else (row["stream_id"], row["version"])


async def legacy_token_ids(pool: asyncpg.Pool) -> list[str]:
    """Tokens verified by an unkeyed SHA-256 (issued before 0.3), revoked or not."""
    rows = await pool.fetch(
        "SELECT stream_id FROM unique_keys WHERE key LIKE $1 AND stream_id IS NOT NULL"
        " ORDER BY stream_id",
        LEGACY_KEY + "%",
    )
    return [token_id_of(r["stream_id"]) for r in rows]
