"""Erasing a person: their name leaves the registry, the log stays verifiable. I/O.

The name lives in one row of ``subjects`` (migration 0009); events hold the subject id.
Erasure revokes the person's tokens, records ``subject.erased`` (the id only) and clears
the name in one transaction, then deletes their refused-request rows (``denials``) and the
answers kept for their retried writes (``idempotency_keys``), both outside the log. The
hashed events are not touched, so ``audit verify`` and replays still pass; events recorded
before subjects existed name the person in clear and cannot be changed, so the report
counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from events.access import TOKENS
from events.errors import ConflictError, NotFoundError
from events.streams import TOKEN_TYPE, subject_stream
from events.subjects import SUBJECTS, EraseSubject
from service.commands.executor import CommandExecutor, Outcome
from service.commands.tokens import LastAdminError, active_admin_ids, revoke_token
from service.identity.subjects import Subject, SubjectDirectory

MAX_REASON = 1000
_ERASE = (
    "UPDATE subjects SET principal = NULL, erased_at = $2, erased_by = $3, reason = $4"
    " WHERE subject_id = $1 AND principal IS NOT NULL"
)
# Events that hold the name as a JSON string value (an actor, a token's principal, an
# owner) from before subjects existed: bytes that can never change.
_LEGACY = "SELECT count(*) FROM events WHERE position($1::bytea IN envelope) > 0"
# Their comments kept beside the log (MODELREG_ERASABLE_COMMENTS), erased with them.
_COMMENTS = (
    "UPDATE erasable_comments SET salt = NULL, body = NULL, erased_at = $2"
    " WHERE subject_id = $1 AND body IS NOT NULL"
)
_DENIALS = "DELETE FROM denials WHERE principal = ANY ($1::text[])"
# Remembered answers to retried writes are keyed by the principal's name.
_IDEMPOTENCY = "DELETE FROM idempotency_keys WHERE principal = ANY ($1::text[])"


@dataclass(frozen=True, slots=True)
class Erasure:
    subject: Subject
    outcome: Outcome[Any, Any]
    revoked_tokens: list[str]
    legacy_events: int
    denials_deleted: int


async def find_subject(subjects: SubjectDirectory, who: str) -> Subject:
    found = await subjects.find(who)
    if found is None:
        raise NotFoundError(f"no subject {who!r}", subject=who)
    return found


async def erase_subject(
    executor: CommandExecutor, who: str, *, actor: str, reason: str, now: datetime
) -> Erasure:
    """Erase the subject ``who`` (its id or its principal name) on behalf of ``actor``."""
    subjects = executor.subjects
    if subjects is None:
        raise RuntimeError("erasure needs an executor that records subjects")
    subject = await find_subject(subjects, who)
    if subject.principal is None:
        raise ConflictError(f"subject {subject.subject_id} is erased already")
    name = subject.principal
    tokens = await _live_tokens_of(executor, {subject.subject_id, name}, now)
    admins = set(await active_admin_ids(executor, now))
    if admins and admins <= set(tokens):
        raise LastAdminError(
            f"{subject.subject_id} holds every active admin token: erasing it would leave"
            " nobody able to manage the registry; issue another admin token first",
            subject=subject.subject_id,
        )
    for token_id in tokens:
        await revoke_token(
            executor, token_id, actor=actor, reason="its subject was erased", now=now
        )
    erased_by, _ = await subjects.pseudonymous(actor)

    async def clear_name(conn: asyncpg.Connection) -> None:
        if await conn.execute(_ERASE, subject.subject_id, now, erased_by, reason) != "UPDATE 1":
            raise ConflictError(f"subject {subject.subject_id} is erased already")
        await conn.execute(_COMMENTS, subject.subject_id, now)

    outcome = await executor.execute_beside(
        subject_stream(subject.subject_id),
        SUBJECTS,
        EraseSubject(actor=actor, now=now, subject_id=subject.subject_id),
        actor=actor,
        beside=clear_name,
    )
    subjects.forget(name, subject.subject_id)
    pool = executor.store.pool
    legacy = await pool.fetchval(_LEGACY, msgspec.json.encode(name))
    deleted = await pool.execute(_DENIALS, [name, subject.subject_id])
    await pool.execute(_IDEMPOTENCY, [name, subject.subject_id])
    return Erasure(
        subject=await find_subject(subjects, subject.subject_id),
        outcome=outcome,
        revoked_tokens=tokens,
        legacy_events=int(legacy),
        denials_deleted=int(deleted.split()[-1]),
    )


async def _live_tokens_of(executor: CommandExecutor, names: set[str], now: datetime) -> list[str]:
    found = []
    for stream_id in await executor.store.stream_ids(TOKEN_TYPE):
        _, state = await executor.state_of(stream_id, TOKENS)
        if state.principal in names and not state.revoked:
            found.append(state.token_id)
    return found
