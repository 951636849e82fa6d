"""The code reference of a training run from its git checkout (real ``git``, tmp repos)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from service.client.gitinfo import detect_code, git_info, without_credentials


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@x",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@x",
            "HOME": str(cwd),
            "PATH": "/usr/bin:/bin",
        },
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "train").mkdir(parents=True)
    git(root, "init", "-q")
    (root / "train" / "churn.py").write_text("print('train')\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    return root


def test_the_remote_commit_and_path_of_a_script_in_a_checkout(repo: Path) -> None:
    git(repo, "remote", "add", "origin", "https://ci:s3cret@git.example.com/ml/churn.git")

    code, info = detect_code(repo / "train" / "churn.py")

    assert code is not None and info is not None
    assert code.repository == "https://git.example.com/ml/churn.git"  # no credentials in the log
    assert code.commit == git(repo, "rev-parse", "HEAD") and len(code.commit) == 40
    assert code.path == "train/churn.py"
    assert info.dirty is False


def test_without_a_remote_the_checkout_is_named_by_its_directory_and_edits_show_as_dirty(
    repo: Path,
) -> None:
    (repo / "train" / "churn.py").write_text("print('changed')\n")

    info = git_info(repo / "train")

    assert info is not None
    assert info.repository == repo.resolve().as_uri()
    assert info.dirty is True


def test_no_checkout_no_commit_or_no_git_is_none_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_info(plain) is None
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    git(fresh, "init", "-q")
    assert git_info(fresh) is None  # no commit yet
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert detect_code(plain) == (None, None)


def test_scp_style_and_plain_urls_are_kept() -> None:
    assert without_credentials("git@github.com:ml/churn.git") == "git@github.com:ml/churn.git"
    assert without_credentials("https://github.com/ml/churn") == "https://github.com/ml/churn"
    assert without_credentials("ssh://git@host:22/ml/churn.git") == "ssh://git@host:22/ml/churn.git"
    assert without_credentials("ssh://git:pw@host/ml/churn.git") == "ssh://git@host/ml/churn.git"
    assert (
        without_credentials("https://ghp_token@github.com/ml/churn")
        == "https://github.com/ml/churn"
    )
