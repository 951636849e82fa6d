"""The dependency rule of DESIGN.md, checked on the source: service -> projections -> eventlog -> events."""

from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = set(sys.stdlib_module_names)


def imports_of(package: str) -> dict[Path, set[str]]:
    found: dict[Path, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[path] = names
    return found


def test_events_imports_only_the_standard_library_and_msgspec() -> None:
    for path, names in imports_of("events").items():
        foreign = {n for n in names if n.split(".")[0] not in STDLIB | {"msgspec", "events"}}
        assert not foreign, (
            f"{path.relative_to(ROOT)} imports {sorted(foreign)}: events/ must stay pure"
        )


def test_the_event_log_imports_only_the_domain_and_its_drivers() -> None:
    # cryptography signs and checks the log's checkpoints (eventlog.checkpoints).
    allowed = STDLIB | {"msgspec", "asyncpg", "cryptography", "events", "eventlog"}
    for path, names in imports_of("eventlog").items():
        foreign = {n for n in names if n.split(".")[0] not in allowed}
        assert not foreign, (
            f"{path.relative_to(ROOT)} imports {sorted(foreign)}: eventlog/ sits below projections/ and service/"
        )


def test_projections_never_import_the_service() -> None:
    for path, names in imports_of("projections").items():
        assert not {n for n in names if n.split(".")[0] == "service"}, (
            f"{path.relative_to(ROOT)} imports service"
        )


@pytest.mark.parametrize(
    "package", ["events", "eventlog", "projections", "service", "tests", "bench"]
)
def test_our_packages_are_imported_by_name_never_as_bare_modules(package: str) -> None:
    # `import events` next to a local variable called `events` is a shadowing bug waiting.
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                bare = {a.name for a in node.names} & {
                    "events",
                    "eventlog",
                    "projections",
                    "service",
                }
                assert not bare, (
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {bare} as a module"
                )


def test_no_other_distribution_provides_our_top_level_names() -> None:
    owners = packages_distributions()
    for name in ("events", "eventlog", "projections", "service"):
        others = set(owners.get(name, [])) - {"modelreg"}
        assert not others, f"{name!r} is also installed by {sorted(others)}"
