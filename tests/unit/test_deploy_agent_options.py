"""The deploy agent command refuses bad options before it connects to anything."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from service.cli.deploy_agent import deploy_agent


def test_a_bad_option_stops_the_command_before_it_starts(tmp_path: Path) -> None:
    command = typer.Typer()
    command.command()(deploy_agent)
    refused = CliRunner().invoke(
        command,
        ["--out", str(tmp_path), "--storage-uri-from", "somewhere"],
        env={"MODELREG_TOKEN": "unused"},
    )
    assert refused.exit_code == 2
    assert "storage_uri_from is 'artifacts', 'blobs' or 'tag:<key>'" in refused.stderr
    refused = CliRunner().invoke(
        command,
        ["--out", str(tmp_path), "--target", "k8s serving"],
        env={"MODELREG_TOKEN": "unused"},
    )
    assert refused.exit_code == 2 and "target" in refused.stderr
