"""``--help`` of every command and group of ``modelreg``, rendered as a user sees it: flags
without a type, usage lines without ``{placeholders}``, every option explained, summaries
on one line, brackets in help texts printed as written."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from service.cli.main import build

APP = build()
ROOT = get_command(APP)
WIDE = {"COLUMNS": "250", "TERMINAL_WIDTH": "250"}
# A type rendered the Python way (typer 0.29's default): <bool>, <str>, <list[str]>, ...
PYTHON_TYPE = re.compile(r"<(bool|str|int|float|path|file|directory|list\[[^>]*)>")


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group, as the path of names a user types and the click object."""
    yield path, command
    if isinstance(command, typer.core.TyperGroup):
        context = typer.Context(command)
        for name in command.list_commands(context):
            child = command.get_command(context, name)
            assert child is not None
            yield from commands(child, (*path, name))


EVERY = sorted(path for path, _ in commands(ROOT))


def render(*path: str) -> str:
    result = CliRunner().invoke(APP, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.stdout


def usage(text: str) -> str:
    return next(line for line in text.splitlines() if "Usage:" in line)


@pytest.mark.parametrize("path", EVERY, ids=lambda p: " ".join(p) or "modelreg")
def test_help_shows_no_python_types_and_no_braces(path: tuple[str, ...]) -> None:
    text = render(*path)

    assert PYTHON_TYPE.search(text) is None, text
    assert "{" not in usage(text) and "}" not in usage(text), usage(text)
    assert usage(text).split("Usage: ")[1].startswith(" ".join(("modelreg", *path)))


@pytest.mark.parametrize("path", EVERY, ids=lambda p: " ".join(p) or "modelreg")
def test_every_option_and_argument_says_what_it_is_for(path: tuple[str, ...]) -> None:
    command = dict(commands(ROOT))[path]
    context = typer.Context(command)
    silent = [p.name for p in command.get_params(context) if not getattr(p, "help", None)]
    assert silent == [], f"modelreg {' '.join(path)}: no help for {silent}"


def test_flags_read_as_flags_and_arguments_as_names() -> None:
    text = render("versions", "register")

    assert "Usage: modelreg versions register [OPTIONS] MODEL ARTIFACTS" in text
    assert re.search(r"^\W*--json\s+Print JSON", text, re.MULTILINE), text
    assert re.search(r"--param\s+-p\s+TEXT\s+Training parameter", text)
    assert "Usage: modelreg projections rebuild [OPTIONS] [NAMES]..." in render(
        "projections", "rebuild"
    )


def test_a_summary_is_one_line_in_its_group() -> None:
    # given a command whose docstring's first sentence spans two source lines
    listed = render()
    line = next(line for line in listed.splitlines() if "deploy-agent" in line)

    assert "(and every move of the given aliases) and record the deployment's outcome" in line


def test_brackets_in_help_texts_print_as_written() -> None:
    text = render("versions", "list")

    assert "'auc[holdout]>=0.9'" in text
    assert "metric:KEY[DATASET]" in text
    assert "--order-by '-metric:auc[holdout]' -n 3 --json" in text
