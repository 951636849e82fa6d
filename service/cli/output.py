"""How every command prints: for people a table or a sentence (rich), for machines JSON.
I/O: the terminal.

``output(value, as_json, human)`` is the one place a command's answer goes out: with
``--json`` the value as one indented JSON document on stdout, else what ``human(value)``
renders (a rich table, a sentence, or several in a ``Group``). Streams print one JSON
object per line (``emit_json_line``). Tables go to stdout, plain when piped (no colour,
never wrapped at 80 columns); messages and progress bars go to stderr.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table

T = TypeVar("T")


def output(
    value: T, as_json: bool, human: Callable[[T], RenderableType], *, remark: str | None = None
) -> None:
    """The answer of a command: JSON for machines with ``--json``, else for people, with
    ``remark`` (more pages, what was missing) on stderr beside it."""
    if as_json:
        emit_json(value)
        return
    show(human(value))
    if remark:
        note(remark)


def console(stderr: bool = False) -> Console:
    """Rich output, plain text when piped; never wrapped at 80 columns when not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 200
    return Console(file=stream, width=width, markup=False, highlight=False, emoji=False)


def show(renderable: RenderableType) -> None:
    """A table (or a sentence: long lines are not wrapped, so they stay greppable)."""
    console().print(renderable, soft_wrap=isinstance(renderable, str))


def note(text: str) -> None:
    """A remark beside the answer (more pages, what was skipped): stderr, so stdout stays
    the answer alone."""
    console(stderr=True).print(text, soft_wrap=True)


def table(*headers: str, title: str | None = None) -> Table:
    return Table(
        *headers,
        box=box.SIMPLE_HEAD,
        title=title,
        title_justify="left",
        header_style="bold",
        pad_edge=False,
        show_edge=False,
    )


def fields(title: str | None, values: Mapping[str, Any]) -> Table:
    """Two columns, name and value, leaving out the empty ones."""
    grid = table("", "", title=title)
    grid.show_header = False
    for key, value in values.items():
        if value not in (None, ""):
            grid.add_row(key, str(value))
    return grid


class OutputClosedError(Exception):
    """Whoever read stdout went away (``| head``): a stream stops quietly, exit 0."""


def write_out(text: str) -> None:
    """Text on stdout at once (a stream's reader waits for it); OutputClosedError when the
    reader has gone."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python's advice: point stdout at /dev/null, or the flush at exit fails once more.
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise OutputClosedError from None


class RowStream:
    """A table printed a row at a time, for streams (there is no last row to measure):
    fixed column widths, a value too long for its column folded within it, so columns stay
    aligned; the last column takes the rest of the line."""

    def __init__(self, *columns: tuple[str, int | None], right: tuple[str, ...] = ()) -> None:
        self._columns = columns
        self._right = right
        self._width = console().width

    def header(self) -> None:
        self._print(self._table(show_header=True))

    def row(self, *cells: str) -> None:
        grid = self._table(show_header=False)
        grid.add_row(*cells)
        self._print(grid)

    def _table(self, *, show_header: bool) -> Table:
        grid = Table(
            box=box.SIMPLE_HEAD,
            show_header=show_header,
            show_edge=False,
            pad_edge=False,
            header_style="bold",
            expand=False,
        )
        for name, width in self._columns:
            grid.add_column(
                name,
                width=width,
                min_width=width,
                overflow="fold",
                justify="right" if name in self._right else "left",
            )
        return grid

    def _print(self, grid: Table) -> None:
        # Rendered apart and written as one piece: rich turns a closed pipe into SystemExit.
        text = io.StringIO()
        Console(file=text, width=self._width, markup=False, highlight=False, emoji=False).print(
            grid
        )
        write_out(text.getvalue())


class StreamOutput:
    """The answer of a command that streams: one JSON object per line with ``--json``, else
    the rows of a table under its header."""

    def __init__(self, as_json: bool, rows: RowStream) -> None:
        self._as_json = as_json
        self._rows = rows
        self._started = False

    def emit(self, document: Any, cells: tuple[str, ...]) -> None:
        """One item: ``document`` for machines (``msgspec.Raw`` is written as it is), ``cells``
        for people."""
        if self._as_json:
            emit_json_line(document)
            return
        if not self._started:
            self._rows.header()
            self._started = True
        self._rows.row(*cells)

    def start(self) -> None:
        """The header now, before the first item (a follower may wait long for it)."""
        if not self._as_json and not self._started:
            self._rows.header()
            self._started = True


def emit_json(value: Any) -> None:
    """One JSON document, indented."""
    sys.stdout.write(
        msgspec.json.format(msgspec.json.encode(value, enc_hook=_enc), indent=2).decode() + "\n"
    )


def emit_json_line(value: Any) -> None:
    write_out(msgspec.json.encode(value, enc_hook=_enc).decode() + "\n")


def _enc(value: Any) -> Any:
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def when(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
