"""Pseudonymous subjects: the one place that links a subject id to a person's name. I/O.

Events name people by subject id (``events.subjects``); the ``subjects`` table (migration
0009) maps each id to its principal. The write path asks ``subject_for`` before deciding,
so deciders compare stable ids; the read path asks ``names_of`` (and ``comments_of``) for
every answer that names someone, and an erased subject then reads as ``ERASED``.

The read path answers from memory only while this process LISTENs for changes to those
rows (``listen``; migration 0011 NOTIFYs each changed subject id or comment reference at
commit), as authentication does for tokens: a NOTIFY drops what it names, a lost or
regained LISTEN drops everything, and with no LISTEN every answer asks Postgres. The write
path's ids and names are kept for at most ``ttl_seconds`` whether listening or not (a
NOTIFY drops them earlier): another process may record a just-erased name's acts under
its old id until then (its tokens are revoked at once, so only identity provider sign-ins
can), and those acts then read as erased too.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import TypeVar

import asyncpg
import msgspec

from eventlog.listener import Listener
from events.subjects import is_subject_id

_V = TypeVar("_V")

ERASED = "erased subject"
ERASED_COMMENT = "erased comment"
_KEEP_COMMENT = (
    "INSERT INTO erasable_comments (ref, subject_id, salt, body) VALUES ($1, $2, $3, $4)"
)
_COMMENTS = "SELECT ref, subject_id, body FROM erasable_comments WHERE ref = ANY ($1::text[])"

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


def subjects_channel(schema: str) -> str:
    """The channel a changed subject or kept comment NOTIFYs (migration 0011)."""
    return f"modelreg_subjects_{schema}"[:63]


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
        # Kept only while the LISTEN is up: id -> the name it reads as, ref -> (its
        # author's subject id, its text). Only what Postgres knows: a row created later
        # sends no NOTIFY, so an unknown id is asked again.
        self._shown: OrderedDict[str, str] = OrderedDict()
        self._texts: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._generation = 0  # moves on every drop: a look-up begun before is not kept
        self._listener: Listener | None = None
        self.notices = 0  # NOTIFYs acted on, so a test can await one instead of sleeping

    def listen(self, connect: Callable[[], Awaitable[asyncpg.Connection]], schema: str) -> Listener:
        """The LISTEN that lets ``names_of`` and ``comments_of`` answer from memory; run it."""
        self._listener = Listener(connect, subjects_channel(schema), self.clear, self._notified)
        return self._listener

    def clear(self) -> None:
        """Drop all that is kept (the LISTEN came or went: a NOTIFY may have been missed)."""
        self._shown.clear()
        self._texts.clear()
        self._ids.clear()
        self._names.clear()
        self._generation += 1

    def remembers(self, key: str) -> bool:
        """Would the name of this subject id, or the text of this comment reference, be
        answered from memory right now?"""
        return self._caching() and (key in self._shown or key in self._texts)

    def _caching(self) -> bool:
        return self._listener is not None and self._listener.listening

    def _notified(self, key: str) -> None:
        self._drop(key)
        self.notices += 1

    def _drop(self, key: str) -> None:
        """Forget all kept about ``key``: a subject id (its name, its comments, the name
        that led to it) or a comment reference."""
        self._generation += 1
        self._shown.pop(key, None)
        self._texts.pop(key, None)
        self._names.pop(key, None)
        # Erasure is rare, and these are bounded: a scan costs less than a reverse index.
        for ref in [r for r, (author, _) in self._texts.items() if author == key]:
            del self._texts[ref]
        for principal in [p for p, (_, i) in self._ids.items() if i == key]:
            del self._ids[principal]

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
        caching = self._caching()
        found, missing = _recalled(self._shown if caching else None, subject_ids)
        if not missing:
            return found
        generation = self._generation
        rows = await self.pool.fetch(_NAMES, missing)
        names = {r["subject_id"]: r["principal"] or ERASED for r in rows}
        # Kept only if nothing was dropped meanwhile: the NOTIFY may be about these rows.
        if caching and generation == self._generation and self._caching():
            self._keep(self._shown, names)
        return found | names

    def _keep(self, cache: OrderedDict[str, _V], found: dict[str, _V]) -> None:
        cache.update(found)
        while len(cache) > self.size:
            cache.popitem(last=False)

    async def keep_comment(self, subject_id: str, text: str) -> str:
        """Keep ``text`` (by ``subject_id``) beside the log; the reference an event holds."""
        salt = secrets.token_bytes(16)
        ref = "cmt_" + hashlib.sha256(salt + text.encode()).hexdigest()
        await self.pool.execute(_KEEP_COMMENT, ref, subject_id, salt, text)
        return ref

    async def comments_of(self, refs: Iterable[str]) -> dict[str, str]:
        """The text of each known comment reference (``ERASED_COMMENT`` once erased)."""
        caching = self._caching()
        found, missing = _recalled(self._texts if caching else None, refs)
        if not missing:
            return {ref: text for ref, (_, text) in found.items()}
        generation = self._generation
        rows = await self.pool.fetch(_COMMENTS, missing)
        texts = {
            r["ref"]: (r["subject_id"], r["body"] if r["body"] is not None else ERASED_COMMENT)
            for r in rows
        }
        if caching and generation == self._generation and self._caching():
            self._keep(self._texts, texts)
        return {ref: text for ref, (_, text) in (found | texts).items()}

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
        """Drop what this process keeps about a subject it just erased, before answering:
        the NOTIFY reaches the other processes (and this one) a moment later."""
        self._ids.pop(principal, None)
        self._drop(subject_id)

    async def pseudonymous(self, actor: str) -> tuple[str, tuple[str, ...]]:
        """The subject id to record ``actor`` under, and the other id (its name) that
        events recorded before subjects existed name the same actor by."""
        if is_subject_id(actor):
            name = await self.principal_of(actor)
            return actor, (name,) if name else ()
        return await self.subject_for(actor), (actor,)


def _recalled(
    cache: OrderedDict[str, _V] | None, keys: Iterable[str]
) -> tuple[dict[str, _V], list[str]]:
    """What ``cache`` holds of ``keys`` (freshly used), and the keys it lacks, sorted."""
    wanted = sorted(set(keys))
    if cache is None:
        return {}, wanted
    found: dict[str, _V] = {}
    for key in wanted:
        if key in cache:
            cache.move_to_end(key)
            found[key] = cache[key]
    return found, [k for k in wanted if k not in found]
