"""Groups to roles and model scopes, as configured in ``MODELREG_OIDC_GROUP_ROLES``. Pure.

    ml-admins=admin; ml-team=contributor,approver:churn*|fraud*; everyone=reader

One entry per group, separated by ``;``: the roles (comma-separated) and, after ``:``, the
model scopes (``|``-separated, as a token's ``--scope``; none: every model). The FIRST entry
whose group the caller carries decides, like a firewall rule: roles and scopes are not
merged across entries, because a principal has one set of scopes for all its roles and a
merge would widen one group's narrow grant to another group's models.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from events.access import Role

_SCOPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}\*?|\*")
_GROUP = re.compile(r"[^\s=;:,|]{1,256}")


class MappingError(ValueError):
    """The configured mapping is malformed; the message names the entry."""


@dataclass(frozen=True, slots=True)
class Grant:
    group: str
    roles: tuple[Role, ...]
    scopes: tuple[str, ...]


def parse_group_roles(text: str) -> tuple[Grant, ...]:
    grants: list[Grant] = []
    for entry in (part.strip() for part in text.split(";")):
        if not entry:
            continue
        group, sep, rest = entry.partition("=")
        group = group.strip()
        if not sep or not _GROUP.fullmatch(group):
            raise MappingError(f"{entry!r}: expected group=role[,role][:scope|scope]")
        roles_text, _, scopes_text = rest.partition(":")
        try:
            roles = tuple(dict.fromkeys(Role(r.strip()) for r in roles_text.split(",")))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise MappingError(f"{entry!r}: roles are {known}") from None
        scopes = tuple(s.strip() for s in scopes_text.split("|") if s.strip())
        bad = [s for s in scopes if not _SCOPE.fullmatch(s)]
        if bad:
            raise MappingError(f"{entry!r}: {bad[0]!r} is not a model name or a prefix ending in *")
        if any(g.group == group for g in grants):
            raise MappingError(f"{entry!r}: group {group!r} is mapped twice")
        grants.append(Grant(group=group, roles=roles, scopes=scopes))
    return tuple(grants)


def grant_for(grants: tuple[Grant, ...], groups: Iterable[str]) -> Grant | None:
    """The first configured grant among the caller's groups; None: no role at all."""
    held = set(groups)
    return next((g for g in grants if g.group in held), None)
