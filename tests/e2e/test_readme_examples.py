"""The README's examples run as written, in order, on a fresh registry.

The test does what a new user does: starts ``modelreg serve`` on a fresh data dir with
nothing configured (embedded Postgres and NATS), runs the ``export MODELREG_TOKEN=...``
line it prints, and then every block marked ``<!-- readme-test: run -->`` in one bash
session (a Python block through ``python3 -``), in a fresh working directory. Each
command must exit 0 and answer no problem document; a comment after a command that starts
with ``{``, ``[`` or ``→`` claims a line of its output (``...`` stands for anything).
Every bash or Python block carries a marker, so a new example cannot go untested
unnoticed: ``<!-- readme-test: skip (why) -->`` for the few that cannot run here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.serve_process import REPO, Serve, serve_on_fresh_data_dir

README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!-- readme-test: (run|skip \(.+\)) -->$")
CODE_LANGUAGES = {"bash", "sh", "shell", "python"}
CLAIM = re.compile(r"^#\s?([{\[].*|→ .*)$")
TOKEN_LINE = re.compile(r"export MODELREG_TOKEN=(\S+)")
PROBLEM = "urn:modelreg:"


@dataclass
class Block:
    language: str
    marker: str | None
    text: str
    line: int


@dataclass
class Command:
    """One shell command as bash reads it, where the README has it, and what it claims."""

    text: str
    line: int
    claims: list[str] = field(default_factory=list)


def blocks(markdown: str) -> list[Block]:
    """The fenced code blocks, each with the marker on the line before its fence."""
    found = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = MARKER.match(lines[i - 1]) if i > 0 else None
        found.append(
            Block(
                opening.group(1),
                marker.group(1) if marker else None,
                "\n".join(lines[i + 1 : end]),
                i + 2,
            )
        )
        i = end + 1
    return found


def commands(block: Block) -> list[Command]:
    """A bash block cut into the commands bash would run, each with the claims that follow it."""
    found: list[Command] = []
    pending: list[str] = []
    start = 0
    open_contexts: list[str] = []
    for number, line in enumerate(block.text.splitlines(), block.line):
        if not pending:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                claim = CLAIM.match(stripped)
                if claim and found:
                    found[-1].claims.append(claim.group(1).removeprefix("→ "))
                continue
            start = number
        pending.append(line)
        open_contexts = _scan(line, open_contexts)
        if not open_contexts and not line.rstrip().endswith("\\"):
            found.append(Command("\n".join(pending), start))
            pending = []
    assert not pending, f"README.md line {start}: a command never ends"
    return found


def _scan(line: str, contexts: list[str]) -> list[str]:
    """The quotes and ``$(`` still open after ``line`` (bash's rules, enough for a README)."""
    stack = list(contexts)
    i = 0
    while i < len(line):
        top = stack[-1] if stack else ""
        step = (
            _in_single(line, i, stack)
            if top == "'"
            else _in_double(line, i, stack)
            if top == '"'
            else _outside(line, i, stack)
        )
        if step is None:
            break  # a comment to the end of the line
        i += step
    return stack


def _in_single(line: str, i: int, stack: list[str]) -> int:
    if line[i] == "'":
        stack.pop()
    return 1


def _in_double(line: str, i: int, stack: list[str]) -> int:
    if line[i] == "\\":
        return 2
    if line[i] == '"':
        stack.pop()
    elif line.startswith("$(", i):
        stack.append("$(")
        return 2
    return 1


def _outside(line: str, i: int, stack: list[str]) -> int | None:
    """One step outside quotes; None at a comment, which runs to the end of the line."""
    ch = line[i]
    if ch == "\\":
        return 2
    if ch in "'\"":
        stack.append(ch)
    elif line.startswith("$(", i):
        stack.append("$(")
        return 2
    elif ch == ")" and stack and stack[-1] == "$(":
        stack.pop()
    elif ch == "#" and (i == 0 or line[i - 1].isspace()):
        return None
    return 1


def script(runnable: list[Block], out: Path) -> tuple[str, list[Command]]:
    """One bash session running every command in order, each one's output and exit code in
    files under ``out``; it stops at the first command that fails."""
    parts = ["set -o pipefail"]
    steps: list[Command] = []
    for block in runnable:
        if block.language == "python":
            text = f"python3 - <<'README_PYTHON'\n{block.text}\nREADME_PYTHON"
            steps_here = [Command(text, block.line)]
        else:
            steps_here = commands(block)
        for step in steps_here:
            n = len(steps)
            steps.append(step)
            # Braces, not a subshell: exports and variables carry over to the next command.
            parts.append(
                f'{{ {step.text}\n}} >"{out}/{n}.out" 2>"{out}/{n}.err"\n'
                f'code=$?; echo "$code" >"{out}/{n}.rc"; [ "$code" = 0 ] || exit 99'
            )
    return "\n".join(parts) + "\n", steps


def matches(claim: str, output: str) -> bool:
    """Some line of ``output`` is ``claim``, ``...`` standing for anything, spaces as any run
    of spaces (tables pad their columns)."""
    pattern = ".*".join(re.escape(" ".join(part.split())) for part in claim.split("..."))
    return any(re.fullmatch(pattern, " ".join(line.split())) for line in output.splitlines())


# ---------------------------------------------------------------- the README itself


MARKDOWN = README.read_text()
BLOCKS = blocks(MARKDOWN)
RUNNABLE = [b for b in BLOCKS if b.marker == "run"]


def test_every_example_says_whether_the_test_runs_it() -> None:
    unmarked = [b.line for b in BLOCKS if b.language in CODE_LANGUAGES and b.marker is None]
    assert unmarked == [], f"README.md blocks without a readme-test marker at lines {unmarked}"
    assert {b.language for b in RUNNABLE} == {"bash", "python"}


def test_the_readme_is_cut_into_the_commands_bash_runs() -> None:
    # given the tour's block, with commands over several lines and claims after them
    tour = next(b for b in RUNNABLE if "Idempotency-Key" in b.text)

    cut = commands(tour)

    register = next(c for c in cut if "Idempotency-Key" in c.text)
    assert register.text.count("\n") == 5 and register.text.endswith('"role": "test"}]}\'')
    assert register.claims == [
        '{"events":["model.version_registered"],"stream_version":2,"position":...,'
        '"model":"fraud","version":1}'
    ]
    bob = next(c for c in cut if c.text.startswith("B="))
    assert bob.text.endswith("# shown once; stored hashed") and bob.claims == []
    assert matches('{"ok":true,...,"first_break":null}', '{"ok":true,"n":3,"first_break":null}')
    assert not matches('{"ok":true,...}', '{"ok":false,"n":3}')


# ---------------------------------------------------------------- running it


@pytest.fixture(scope="module")
def serve() -> Iterator[Serve]:
    with serve_on_fresh_data_dir() as server:
        yield server


def test_the_examples_run_in_order_on_a_fresh_registry(serve: Serve) -> None:
    # given `modelreg serve` started on a fresh data dir, and the token its first start printed
    serve.start().wait_for("/health/ready", 200)
    printed = TOKEN_LINE.search(serve.log.read_text())
    assert printed is not None, serve.log.read_text()
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_")} | {
        "MODELREG_TOKEN": printed.group(1),
        "MODELREG_URL": serve.base_url,
        "MODELREG_DATA_DIR": str(serve.data_dir),
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
    }

    with tempfile.TemporaryDirectory(prefix="modelreg-readme-") as tmp:
        work, out = Path(tmp) / "work", Path(tmp) / "out"
        work.mkdir()
        out.mkdir()
        text, steps = script(RUNNABLE, out)

        # when every runnable block runs in one shell, in order
        subprocess.run(["bash", "-c", text], cwd=work, env=env, timeout=600, check=False, text=True)

        # then every command exits 0, answers no problem, and prints what the README claims
        for n, step in enumerate(steps):
            where = f"README.md line {step.line}:\n{step.text}\n"
            assert (out / f"{n}.rc").exists(), f"{where}never ran"
            stdout, stderr = (out / f"{n}.out").read_text(), (out / f"{n}.err").read_text()
            said = f"{where}stdout:\n{stdout}\nstderr:\n{stderr}"
            assert (out / f"{n}.rc").read_text().strip() == "0", said
            assert PROBLEM not in stdout, said
            for claim in step.claims:
                assert matches(claim, stdout), f"{said}\nclaimed: {claim}"
    assert serve.interrupt() == 0
