"""The shared vocabulary of the domain: event and command base types, deciders. Pure.

An event is a frozen fact with a permanent type name and a schema version. A stream's
rules live in one module per stream type as two pure functions:

    evolve(state, event) -> state        fold one fact into the state
    decide(command, state) -> [events]   the facts a command causes, or a DomainError

Time and identity come in on the command (``now``, ids), never from a clock or a random
generator inside ``decide``, so a decision can be replayed and tested without I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Generic, TypeVar

import msgspec

UtcDateTime = Annotated[datetime, msgspec.Meta(tz=True)]


def utc(moment: datetime) -> datetime:
    """Normalise an aware datetime to UTC so its encoded form is canonical."""
    if moment.tzinfo is None:
        raise ValueError("naive datetimes are ambiguous; pass an aware datetime")
    return moment.astimezone(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """A fact. Subclasses set a permanent ``event_type`` and bump ``schema_version``
    (with an upcaster) whenever the shape of their data changes."""

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """An intention. ``actor`` is the authenticated principal, ``now`` the decision time."""

    actor: str
    now: UtcDateTime


def acted_as(command: Command, who: str) -> bool:
    """Is ``who`` (a name or subject id from a recorded event) the actor of ``command``?

    A command whose rules compare who acted (separation of duties, only the requester may
    cancel) carries ``actor_aliases``: the shell records people by pseudonymous subject id,
    events from before that hold the name, and both must count as one actor."""
    return who == command.actor or who in getattr(command, "actor_aliases", ())


S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E", bound=Event)


@dataclass(frozen=True, slots=True)
class Decider(Generic[S, C, E]):
    """The three parts of one stream type's rules, bundled for the command handler."""

    stream_type: str
    initial_state: Callable[[], S]
    evolve: Callable[[S, E], S]
    decide: Callable[[C, S], list[E]]
    # For snapshots: the state's type, and a number to bump whenever ``evolve`` changes
    # meaning, so snapshots folded by older code are ignored rather than trusted.
    state_type: type[S] | None = None
    snapshot_version: int = 1

    def fold(self, history: Iterable[E], state: S | None = None) -> S:
        current = self.initial_state() if state is None else state
        for event in history:
            current = self.evolve(current, event)
        return current
