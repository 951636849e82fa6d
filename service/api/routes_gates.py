"""Dry runs of governed moves for CI/CD pipelines: would this move pass now? Nothing is
written (``service.commands.gate_check``)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import FromPath, Parameter

from events.access import Permission
from events.names import PLACE_NAME_MAX, STAGE_NAME_MAX, STAGE_NAME_PATTERN
from service.api.auth import require
from service.api.common import VersionNumber, principal_of, services_of
from service.commands.gate_check import GateCheck, check_transition


class GatesController(Controller):
    path = "/models/{name:str}/versions/{version:int}/gate"
    tags = ["lifecycle"]

    @get("/")
    async def check(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        to: Annotated[
            str,
            Parameter(
                description="The stage the version would move to (one the model's policy defines)",
                pattern=STAGE_NAME_PATTERN,
                max_length=STAGE_NAME_MAX,
            ),
        ],
        environment: Annotated[
            str | None,
            Parameter(
                description="The environment of ``to`` (required when that stage has environments)",
                max_length=PLACE_NAME_MAX,
            ),
        ] = None,
    ) -> GateCheck:
        """Would moving the version to ``to`` pass the policy and its metric gates now?
        200 either way: ``passes``, and ``outcome`` direct, needs_approval or refused with
        the reason. A dry run: nothing is recorded."""
        principal = principal_of(request)
        require(principal, Permission.READ, name)
        return await check_transition(
            services_of(request).registry,
            name,
            version,
            to,
            actor=principal.name,
            environment=environment,
        )
