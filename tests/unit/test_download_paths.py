"""Where a downloaded file may land: inside the destination, whatever the manifest says
(a registry is trusted with bytes, not with where they are written)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from service.cli.versions import parse_ref
from service.client import UnsafePath
from service.client.downloads import target_of


def test_a_relative_path_lands_inside_the_destination(tmp_path: Path) -> None:
    assert target_of(tmp_path, "weights/part-1.bin") == tmp_path.resolve() / "weights/part-1.bin"


@pytest.mark.parametrize(
    "path",
    ["../outside", "a/../../outside", "/etc/passwd", "a/./b", "", "a\\..\\b", "a/\0b", "a//b"],
)
def test_a_path_that_is_not_plainly_relative_is_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(UnsafePath, match="refusing to write"):
        target_of(tmp_path / "dest", path)


def test_a_symlink_in_the_destination_cannot_carry_a_write_outside(tmp_path: Path) -> None:
    # given a destination holding a directory link and a file link that point outside it
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "weights").symlink_to(outside, target_is_directory=True)
    (dest / "model.bin").symlink_to(outside / "model.bin")

    # then a file under the linked directory, or at the linked name, is refused
    for path in ("weights/part-1.bin", "model.bin"):
        with pytest.raises(UnsafePath, match="leads outside"):
            target_of(dest, path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("churn@champion", ("churn", "@champion")),
        ("churn/3", ("churn", "3")),
        ("churn:production", ("churn", "stage:production")),
        ("churn", ("churn", None)),
        ("fraud.v2-x@a-b", ("fraud.v2-x", "@a-b")),
    ],
)
def test_the_cli_reads_a_version_reference(text: str, expected: tuple[str, str | None]) -> None:
    assert parse_ref(text) == expected


@pytest.mark.parametrize("text", ["churn@", "@champion", "churn/", ":production"])
def test_a_half_reference_is_a_usage_error(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_ref(text)
