"""How ``--help`` reads: every command group of the CLI is made by ``command_group``. Pure
(formatting only).

typer 0.29 renders a flag as ``--json <bool>``, a required argument in the usage line as
``{model}``, a repeatable option as ``<list[str]>``; its rich markup swallows anything in
square brackets (``auc[holdout]`` became ``auc``) and keeps the line breaks of a
docstring's first paragraph, so summaries broke mid-sentence. ``Group`` tidies each
command it hands out, once, before click renders it: flags show no type, arguments read
``MODEL`` (``[MODEL]`` when optional), types read as click's (``TEXT``, ``INTEGER``,
``PATH``, ``a|b|c``), prose paragraphs are joined into lines and example lines
(indented in the docstring) are kept one per line behind ``$``.
"""

from __future__ import annotations

import inspect
import re
import weakref
from enum import Enum
from typing import Any, get_args, get_origin

import typer
from rich.markup import escape
from typer._click import Context  # typer vendors click; its commands take this context
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

_TYPE_NAMES = {
    "str": "TEXT",
    "int": "INTEGER",
    "float": "FLOAT",
    "bool": "BOOLEAN",
    "path": "PATH",
    "file": "FILE",
    "directory": "DIRECTORY",
    "datetime": "DATETIME",
}
_LIST = re.compile(r"^list\[(.*)\]$")
_LONGEST_CHOICES = 20


def command_group(help: str, **settings: Any) -> typer.Typer:
    """A typer app whose commands render their help as described above."""
    defaults: dict[str, Any] = {
        "no_args_is_help": True,
        "add_completion": False,
        "pretty_exceptions_enable": False,
    }
    return typer.Typer(cls=Group, help=help, **(defaults | settings))


class Group(TyperGroup):
    """A command group that tidies itself and every command it resolves."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        if self.help:
            self.help = reflow(self.help)

    def get_command(self, ctx: Context, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if isinstance(command, TyperCommand) and command not in _tidied:
            _tidied.add(command)
            if command.help:
                command.help = reflow(command.help)
            # The parent's context: a child inherits its help option names.
            for param in [*command.params, command.get_help_option(ctx)]:
                _tidy_param(param)
        return command

    def get_params(self, ctx: Context) -> Any:
        params = super().get_params(ctx)
        for param in params:
            _tidy_param(param)
        return params


# Commands whose help text was already rewritten (rewriting escapes markup: twice is wrong).
_tidied: weakref.WeakSet[TyperCommand] = weakref.WeakSet()


def _tidy_param(param: Any) -> None:
    if isinstance(param, _Option | _Argument):
        return
    if isinstance(param, TyperOption):
        param.__class__ = _Option
        if param.help:
            param.help = escape(param.help)
    elif isinstance(param, TyperArgument):
        param.__class__ = _Argument
        if param.metavar is None and param.name:
            param.metavar = param.name.upper()
        if param.help:
            param.help = escape(param.help)


def reflow(text: str) -> str:
    """Prose paragraphs on one line each; example paragraphs (indented) one command a line
    behind ``$``; rich markup escaped, so brackets print as written."""
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if lines and all(line.startswith(" ") for line in lines):
            paragraphs.append("\n".join(f"$ {line.strip()}" for line in lines))
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return escape("\n\n".join(paragraphs))


def type_label(param: TyperOption | TyperArgument, ctx: Context) -> str:
    """click's names for types: ``TEXT``, ``INTEGER``, ``PATH``, short choices as
    ``a|b|c`` (long ones by their enum's name, ``STAGE``: the help lists them); a
    repeatable option shows the type of one value."""
    label = param.display_type(ctx).strip("<>")
    if found := _LIST.match(label):
        label = found.group(1)
    label = label.removesuffix(" range")
    if "|" in label and len(label) > _LONGEST_CHOICES:
        return _choice_name(param)
    return _TYPE_NAMES.get(label, label)


def _choice_name(param: TyperOption | TyperArgument) -> str:
    kind: Any = param.type_descriptor.annotation
    if get_origin(kind) is list:
        kind = get_args(kind)[0]
    if isinstance(kind, type) and issubclass(kind, Enum):
        return kind.__name__.upper()
    return (param.name or "choice").upper()


class _Option(TyperOption):
    def display_type_rich(self, ctx: Context) -> str | None:
        if self.is_flag or self.count:
            return None
        if self.metavar is not None:
            return self.metavar
        return type_label(self, ctx)


class _Argument(TyperArgument):
    def display_type_rich(self, ctx: Context) -> str | None:
        return type_label(self, ctx)

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return f"{name}..." if self.nargs != 1 else name
