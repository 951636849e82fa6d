"""The code reference of a training run from its git checkout: remote URL, commit, path.

Runs the ``git`` binary; no git, no repository or no commit yet all mean ``None``, never
an error: registering a model must not depend on how the code was checked out. Remote
URLs lose their credentials (``https://user:token@host/...``) before they are recorded in
the append-only log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec

from events.version_content import CodeReference

TIMEOUT = 10.0


class GitInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A checkout: its top directory, remote (or ``file://`` top), commit and whether
    tracked files have uncommitted changes."""

    toplevel: str
    repository: str
    commit: str
    branch: str
    dirty: bool

    def code_reference(self, path: str = "") -> CodeReference:
        return CodeReference(repository=self.repository, commit=self.commit, path=path)


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            ["git", *args],  # noqa: S607 - whichever git the user has on PATH
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def without_credentials(url: str) -> str:
    """No secrets in the log: ``https://user:token@host/x.git`` -> ``https://host/x.git``
    (over http(s) a user name alone is often a token too); other schemes lose only a
    password (``ssh://git@host/x.git`` stays); scp-style ``git@host:x.git`` stays."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    netloc = host if parts.scheme in ("http", "https") else f"{userinfo.split(':', 1)[0]}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def git_info(path: str | os.PathLike[str] = ".") -> GitInfo | None:
    """The checkout containing ``path`` (a file or directory), or None."""
    start = Path(path).resolve()
    directory = start if start.is_dir() else start.parent
    if not directory.is_dir():
        return None
    toplevel = _git(directory, "rev-parse", "--show-toplevel")
    commit = (
        _git(directory, "rev-parse", "--verify", "--quiet", "HEAD^{commit}") if toplevel else None
    )
    if not toplevel or not commit:
        return None
    remote = _git(directory, "remote", "get-url", "origin")
    if not remote:
        remotes = (_git(directory, "remote") or "").split()
        remote = _git(directory, "remote", "get-url", remotes[0]) if remotes else None
    status = _git(directory, "status", "--porcelain", "--untracked-files=no")
    return GitInfo(
        toplevel=toplevel,
        repository=without_credentials(remote) if remote else Path(toplevel).as_uri(),
        commit=commit.lower(),
        branch=_git(directory, "rev-parse", "--abbrev-ref", "HEAD") or "",
        dirty=bool(status),
    )


def relative_in(info: GitInfo, path: str | os.PathLike[str]) -> str:
    """``path`` relative to the checkout's top (POSIX), or "" when it is outside or the top."""
    try:
        relative = Path(path).resolve().relative_to(Path(info.toplevel).resolve())
    except ValueError:
        return ""
    text = relative.as_posix()
    return "" if text == "." else text


def entry_point() -> Path | None:
    """The ``__main__`` script being run, if there is one (not in a REPL or notebook)."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    if script and Path(script).is_file():
        return Path(script)
    return None


def detect_code(
    path: str | os.PathLike[str] | None = None,
) -> tuple[CodeReference | None, GitInfo | None]:
    """The code reference for ``path``: the checkout's remote, its HEAD commit and the path
    within it. By default the running script's checkout (path: the script), else the
    working directory's (path: the directory)."""
    candidates = (
        [Path(path)]
        if path is not None
        else [p for p in (entry_point(), Path.cwd()) if p is not None]
    )
    for where in candidates:
        info = git_info(where)
        if info is not None:
            return info.code_reference(relative_in(info, where)), info
    return None, None
