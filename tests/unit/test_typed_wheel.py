"""The wheel ships ``py.typed``, so a user's type checker sees our types (PEP 561).

Without the marker, mypy treats an installed ``service.client`` as untyped: every call is
``Any`` and a wrong argument passes silently. These tests build the wheel from this
checkout offline (the test extras carry hatchling) and type-check a user's script against
it, installed into a throwaway environment outside the repository.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"][
    "build"
]["targets"]["wheel"]["packages"]

USER_SCRIPT = """\
from service.client import Client


def use(client: Client) -> None:
    reveal_type(client.get_model)
    client.get_model(42)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation --no-index: the venv's hatchling builds it, nothing is downloaded.
    pip_wheel = ["pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [sys.executable, "-m", *pip_wheel, "--quiet", "--wheel-dir", str(out)],
        check=True,
        capture_output=True,
        cwd=out,
    )
    [built] = out.glob("modelreg-*.whl")
    return built


def test_the_wheel_marks_every_top_level_package_as_typed(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {f"{package}/py.typed" for package in PACKAGES} <= names
    assert not [name for name in names if name.startswith("tests/")]


def test_mypy_sees_the_client_types_in_a_users_script(wheel: Path, tmp_path: Path) -> None:
    # given the wheel unpacked into a fresh environment whose other dependencies
    # (httpx, msgspec, ...) come from this one, and a user's script outside the repository
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # A .pth in a site directory adds a path but its own .pth files are not read, so this
    # checkout's editable install stays out of the new environment.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    user = tmp_path / "user"
    user.mkdir()
    (user / "script.py").write_text(USER_SCRIPT)
    (user / "mypy.ini").write_text("[mypy]\nstrict = True\n")

    # when mypy checks the script against that environment
    options = ["--config-file", "mypy.ini", "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--python-executable", str(python), *options, "script.py"],
        capture_output=True,
        text=True,
        cwd=user,
    )

    # then it knows the method's signature and refuses a wrong argument type
    assert "-> service.client.models.ModelRow" in result.stdout, result.stdout
    assert 'Argument 1 to "get_model" of "Client" has incompatible type "int"' in result.stdout
    assert "import-untyped" not in result.stdout
    assert result.stdout.count("error:") == 1, result.stdout
