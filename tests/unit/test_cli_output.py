"""How commands print: one JSON document with ``--json``, else a table for people; streams
as rows that stay under their header however long a value is."""

from __future__ import annotations

import json

import pytest
from rich.table import Table

from service.cli.output import RowStream, StreamOutput, output, table


def test_output_is_json_for_machines_and_a_table_for_people(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def people(rows: list[dict[str, object]]) -> Table:
        grid = table("name", "version")
        for row in rows:
            grid.add_row(str(row["name"]), f"v{row['version']}")
        return grid

    rows: list[dict[str, object]] = [{"name": "churn", "version": 2}]

    output(rows, True, people, remark="(more: raise --limit)")
    machines = capsys.readouterr()
    output(rows, False, people, remark="(more: raise --limit)")
    humans = capsys.readouterr()

    assert json.loads(machines.out) == rows and machines.err == ""
    assert humans.out.split() == [
        "name",
        "version",
        "─" * len(humans.out.split()[2]),
        "churn",
        "v2",
    ]
    assert humans.err == "(more: raise --limit)\n"


def test_a_stream_keeps_every_value_under_its_header(capsys: pytest.CaptureFixture[str]) -> None:
    # given a stream whose type column is narrower than one of the values
    stream = StreamOutput(
        False, RowStream(("position", 8), ("type", 12), ("actor", None), right=("position",))
    )

    stream.emit({}, ("7", "model.stage_transitioned", "alice"))
    stream.emit({}, ("12", "token.issued", "bob"))

    lines = capsys.readouterr().out.splitlines()
    header, rule, first, folded, second = lines
    # then the long value folds within its column, and every column starts where its header does
    actor = header.index("actor")
    assert first.index("alice") == actor and second.index("bob") == actor
    assert first.index("model.stage_") == header.index("type")
    assert folded.strip() == "transitioned" and folded.index("transitioned") == header.index("type")
    assert first.index("7") == second.index("12") + 1  # right-aligned positions
    assert set(rule.strip()) == {"─"}


def test_a_stream_for_machines_is_one_json_object_a_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = StreamOutput(True, RowStream(("position", 8), ("actor", None)))

    stream.start()
    stream.emit({"log_position": 1}, ("1", "alice"))
    stream.emit({"log_position": 2}, ("2", "bob"))

    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [
        {"log_position": 1},
        {"log_position": 2},
    ]
