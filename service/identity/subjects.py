"""Pseudonymous subjects: the one place that links a subject id to a person's name. I/O.

Events name people by subject id (``events.subjects``); the ``subjects`` table (migration
0009) maps each id to its principal. The write path asks ``subject_for`` before deciding,
so deciders compare stable ids; the read path asks ``names_of`` when answering, and an
erased subject then reads as ``ERASED``. Nothing here is ever cached across an erasure
for longer than ``ttl_seconds``: another process may still record a just-erased name's
acts under its old id for that long (its tokens are revoked at once, so only identity
provider sign-ins can), and those acts then read as erased too.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime

import asyncpg
import msgspec

from events.subjects import is_subject_id

ERASED = "erased subject"
ERASED_COMMENT = "erased comment"
_KEEP_COMMENT = (
    "INSERT INTO erasable_comments (ref, subject_id, salt, body) VALUES ($1, $2, $3, $4)"
)
_COMMENTS = "SELECT ref, body FROM erasable_comments WHERE ref = ANY ($1::text[])"

_CREATE = (
    "INSERT INTO subjects (subject_id, principal) VALUES ($1, $2)"
    " ON CONFLICT (principal) DO NOTHING RETURNING subject_id"
)
_BY_PRINCIPAL = "SELECT subject_id FROM subjects WHERE principal = $1"
_NAMES = "SELECT subject_id, principal FROM subjects WHERE subject_id = ANY ($1::text[])"
_ROW = (
    "SELECT subject_id, principal, created_at, erased_at, erased_by, reason FROM subjects"
    " WHERE subject_id = $1 OR principal = $1"
)


def new_subject_id() -> str:
    """``subj_`` and 26 base32 characters: 130 random bits, unguessable and never a name."""
    return "subj_" + base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


class Subject(msgspec.Struct, frozen=True, kw_only=True):
    subject_id: str
    principal: str | None  # None once erased
    created_at: datetime
    erased_at: datetime | None
    erased_by: str | None
    reason: str | None

    @property
    def erased(self) -> bool:
        return self.erased_at is not None


class SubjectDirectory:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl_seconds: float = 30.0,
        size: int = 10_000,
        erasable_comments: bool = False,
    ):
        """``erasable_comments``: keep comments beside the log (``keep_comment``)."""
        self.pool = pool
        self.erasable_comments = erasable_comments
        self.ttl_seconds = ttl_seconds
        self.size = size
        self._ids: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._names: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    async def subject_for(self, principal: str) -> str:
        """The subject id of ``principal``, created on its first write. A subject id is its
        own subject (a token issued since subjects exist names its principal by id)."""
        if is_subject_id(principal):
            return principal
        cached = self._ids.get(principal)
        if cached is not None and time.monotonic() - cached[0] < self.ttl_seconds:
            self._ids.move_to_end(principal)
            return cached[1]
        subject_id = await self._find_or_create(principal)
        self._ids[principal] = (time.monotonic(), subject_id)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return subject_id

    async def _find_or_create(self, principal: str) -> str:
        # Two first writes at once: the unique index makes the second INSERT wait for the
        # first's commit and then do nothing, and its SELECT (a new snapshot) sees the row.
        # A loop, not one retry: the row found may be erased in between (principal cleared).
        while True:
            created = await self.pool.fetchval(_CREATE, new_subject_id(), principal)
            if created is not None:
                return str(created)
            found = await self.pool.fetchval(_BY_PRINCIPAL, principal)
            if found is not None:
                return str(found)

    async def principal_of(self, subject_id: str) -> str | None:
        """The name behind a subject id (None: erased or unknown), cached like ids."""
        cached = self._names.get(subject_id)
        if cached is not None and time.monotonic() - cached[0] < self.ttl_seconds:
            return cached[1]
        name = await self.pool.fetchval(
            "SELECT principal FROM subjects WHERE subject_id = $1", subject_id
        )
        self._names[subject_id] = (time.monotonic(), name)
        while len(self._names) > self.size:
            self._names.popitem(last=False)
        return None if name is None else str(name)

    async def names_of(self, subject_ids: Iterable[str]) -> dict[str, str]:
        """The name each known id reads as (``ERASED`` once erased); unknown ids are left out."""
        wanted = sorted(set(subject_ids))
        if not wanted:
            return {}
        rows = await self.pool.fetch(_NAMES, wanted)
        return {r["subject_id"]: r["principal"] or ERASED for r in rows}

    async def keep_comment(self, subject_id: str, text: str) -> str:
        """Keep ``text`` (by ``subject_id``) beside the log; the reference an event holds."""
        salt = secrets.token_bytes(16)
        ref = "cmt_" + hashlib.sha256(salt + text.encode()).hexdigest()
        await self.pool.execute(_KEEP_COMMENT, ref, subject_id, salt, text)
        return ref

    async def comments_of(self, refs: Iterable[str]) -> dict[str, str]:
        """The text of each known comment reference (``ERASED_COMMENT`` once erased)."""
        wanted = sorted(set(refs))
        if not wanted:
            return {}
        rows = await self.pool.fetch(_COMMENTS, wanted)
        return {r["ref"]: r["body"] if r["body"] is not None else ERASED_COMMENT for r in rows}

    async def find(self, who: str) -> Subject | None:
        """The subject named by its id or by its (not erased) principal name."""
        row = await self.pool.fetchrow(_ROW, who)
        return None if row is None else Subject(**dict(row))

    async def aliases(self, who: str) -> tuple[str, ...]:
        """Every id ``who`` is recorded under: the name itself (events from before subjects)
        and its subject id, given either."""
        found = await self.find(who)
        if found is None:
            return (who,)
        return tuple(dict.fromkeys(n for n in (who, found.subject_id, found.principal) if n))

    def forget(self, principal: str, subject_id: str) -> None:
        self._ids.pop(principal, None)
        self._names.pop(subject_id, None)

    async def pseudonymous(self, actor: str) -> tuple[str, tuple[str, ...]]:
        """The subject id to record ``actor`` under, and the other id (its name) that
        events recorded before subjects existed name the same actor by."""
        if is_subject_id(actor):
            name = await self.principal_of(actor)
            return actor, (name,) if name else ()
        return await self.subject_for(actor), (actor,)
