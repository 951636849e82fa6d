"""Policies that tests state explicitly, so no test leans on the registry's defaults.

``DEFAULT_POLICY`` needs an approver for every production change. Tests about something
else than governance (views, relay, search, history) move versions into production
directly, so they decide under ``PERMISSIVE_POLICY``: the lifecycle's transitions, no
approvals anywhere, rollback without approval. Governance tests set their own.
"""

from __future__ import annotations

from msgspec.structs import replace

from events.policy import DEFAULT_POLICY, DEFAULT_TRANSITIONS, GovernancePolicy

PERMISSIVE_TRANSITIONS = tuple(replace(r, approvals=0) for r in DEFAULT_TRANSITIONS)

PERMISSIVE_POLICY: GovernancePolicy = replace(
    DEFAULT_POLICY, transitions=PERMISSIVE_TRANSITIONS, rollback_approvals=0
)

# The same, as a client sends it in ``PUT /api/v1/policy``.
PERMISSIVE_POLICY_BODY = {
    "transitions": [
        {"from_stage": str(r.from_stage), "to_stage": str(r.to_stage), "approvals": 0}
        for r in PERMISSIVE_TRANSITIONS
    ],
    "rollback_approvals": 0,
}


def permissive(**overrides: object) -> GovernancePolicy:
    """``PERMISSIVE_POLICY`` with some fields changed (e.g. a protected alias)."""
    return replace(PERMISSIVE_POLICY, **overrides)
