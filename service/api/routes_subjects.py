"""``/api/v1/subjects``: who a pseudonymous subject id stands for, and erasure.

Events name people by subject id (``events.subjects``). A consumer that re-reads events
(from NATS, from ``/events``) asks ``GET /subjects/{id}`` for the name, and is told when
the person was erased. Answers here are about the ids themselves, so the edge leaves them
as they are (``service.api.subject_names``) and names ``erased_by`` here.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, JSONBody

from events.access import Permission
from service.api.auth import require
from service.api.common import principal_of, receipt, services_of
from service.api.openapi_exact import PRINCIPAL
from service.api.problems import BadRequestError
from service.commands.subjects import MAX_REASON, erase_subject, find_subject
from service.identity.subjects import ERASED, Subject, SubjectDirectory

_SUBJECT = re.compile(rf"subj_[a-z2-7]{{26}}|{PRINCIPAL.strip('^$')}")


class SubjectView(msgspec.Struct, frozen=True, kw_only=True):
    """A subject: ``name`` is null and ``erased`` true once the person was erased."""

    subject_id: str
    name: str | None
    display: str  # what every other answer shows for this subject
    erased: bool
    created_at: datetime
    erased_at: datetime | None = None
    erased_by: str | None = None
    reason: str | None = None


class EraseRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON)]  # kept beside, not in the log


class ErasureView(msgspec.Struct, frozen=True, kw_only=True):
    subject: SubjectView
    position: int | None  # the log position of subject.erased
    revoked_tokens: list[str]
    legacy_events: int  # recorded before subjects existed: they still name the person
    denials_deleted: int


async def _view(subjects: SubjectDirectory, subject: Subject) -> SubjectView:
    erased_by = subject.erased_by
    if erased_by is not None:
        erased_by = (await subjects.names_of([erased_by])).get(erased_by, erased_by)
    return SubjectView(
        subject_id=subject.subject_id,
        name=subject.principal,
        display=subject.principal or ERASED,
        erased=subject.erased,
        created_at=subject.created_at,
        erased_at=subject.erased_at,
        erased_by=erased_by,
        reason=subject.reason,
    )


def _checked(subject: str) -> str:
    if _SUBJECT.fullmatch(subject) is None:
        raise BadRequestError(
            "subject", "pattern", "subject is a subject id (subj_...) or a principal name"
        )
    return subject


def _directory(request: Request[Any, Any, Any]) -> SubjectDirectory:
    subjects = services_of(request).executor.subjects
    if subjects is None:
        raise RuntimeError("this process records no subjects")
    return subjects


class SubjectsController(Controller):
    path = "/subjects"
    tags = ["subjects"]

    @get("/{subject:str}")
    async def show(self, request: Request[Any, Any, Any], subject: FromPath[str]) -> SubjectView:
        """Who a subject id (or principal name) stands for; after erasure, that it was
        erased, when and by whom. Any reader may ask: every answer names people anyway."""
        require(principal_of(request), Permission.READ)
        subjects = _directory(request)
        return await _view(subjects, await find_subject(subjects, _checked(subject)))

    @post("/{subject:str}/erase", status_code=200)
    async def erase(
        self, request: Request[Any, Any, Any], subject: FromPath[str], data: JSONBody[EraseRequest]
    ) -> Response[ErasureView]:
        """Erase a person (admin): their tokens are revoked, their name is deleted and
        ``subject.erased`` is recorded; every answer then shows "erased subject". The
        events stay as recorded, so ``audit verify`` and replays still pass."""
        principal = principal_of(request)
        require(principal, Permission.ADMIN)
        reason = data.reason.strip()
        if not reason:
            raise BadRequestError("reason", "required", "say why the subject is erased")
        services = services_of(request)
        erasure = await erase_subject(
            services.executor,
            _checked(subject),
            actor=principal.name,
            reason=reason,
            now=services.registry.now(),
        )
        services.auth.tokens.forget()  # the revoked tokens are refused here at once
        written = await services.registry.written_from("", erasure.outcome)
        answer = receipt(written)
        return Response(
            ErasureView(
                subject=await _view(_directory(request), erasure.subject),
                position=written.position,
                revoked_tokens=erasure.revoked_tokens,
                legacy_events=erasure.legacy_events,
                denials_deleted=erasure.denials_deleted,
            ),
            headers=answer.headers,
        )
