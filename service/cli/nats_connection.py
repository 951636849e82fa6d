"""How the commands that read NATS (``audit follow``, ``audit mirror``, ``deploy-agent``)
find and reach it. I/O: NATS, the data dir.

The server is, in order: ``--nats-url`` / ``MODELREG_NATS_URL``; else the embedded NATS
that a running ``modelreg serve`` started under the data dir, found by the pid file and
the ports file its ``nats-server`` writes there (``nats/nats-server.pid``,
``nats/nats-server_<pid>.ports``), so its port may be any; else none, and the command
says so in one line. Every way of not getting started (no server, refused, no stream)
raises ``CannotStartError``: one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient

from service.runtime.nats_auth import reader_url

NO_NATS = "no NATS: start `modelreg serve` or set MODELREG_NATS_URL"


class CannotStartError(Exception):
    """NATS cannot be found or used; the message says why in one line."""


def nats_url(configured: str | None, data_dir: Path) -> str:
    """The configured URL, else the running embedded server's; CannotStartError if neither."""
    if configured:
        return configured
    running = running_embedded_nats_url(data_dir)
    if running is None:
        raise CannotStartError(NO_NATS)
    return running


def running_embedded_nats_url(data_dir: Path) -> str | None:
    """The client URL of the embedded NATS running on ``data_dir``, or None if none runs."""
    store = data_dir.expanduser().absolute() / "nats"
    try:
        pid = int((store / "nats-server.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)  # alive? (a stale pid file survives a crash)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, and someone else's: its ports file still tells where it listens
    for ports in store.glob(f"*_{pid}.ports"):
        try:
            urls = json.loads(ports.read_text())["nats"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if urls:
            # The embedded server admits no anonymous client: read as the reader.
            return reader_url(store, str(urls[0]))
    return None


# A server that refuses a client writes its reason (-ERR) and closes; when the client's
# CONNECT and PING are still unread there, the close is a reset that can discard the
# reason before it is read. Such an attempt tells nothing, so it never hides a reason
# heard before, and a connect that heard only resets is tried once more.
_RESETS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, nats.errors.UnexpectedEOF)


async def connect_nats(url: str) -> NatsClient:
    """Connected, or CannotStartError: give up quickly on a server that never answers; once
    connected, reconnect forever (a follower outlives NATS restarts)."""
    reported: list[Exception] = []
    for last_try in (False, True):
        try:
            client = await _connect(url, reported)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            cause = reported[-1] if reported else exc
            if not last_try and isinstance(cause, _RESETS):
                continue
            raise CannotStartError(
                f"cannot connect to NATS at {shown(url)}: {str(cause) or type(cause).__name__}"
            ) from None
        # nats-py reads this on every reconnect.
        client.options["max_reconnect_attempts"] = -1
        return client
    raise AssertionError("unreachable: the last try returns or raises")


async def _connect(url: str, reported: list[Exception]) -> NatsClient:
    async def remember(exc: Exception) -> None:
        # nats-py hands the server's reason (say, "Authorization Violation") only to this
        # callback; the exception it then raises says just "no servers available". Only the
        # last is kept (a follower runs for days, and NATS may come and go), but a reset
        # does not replace a reason.
        if not (isinstance(exc, _RESETS) and reported and not isinstance(reported[-1], _RESETS)):
            reported[:] = [exc]

    client: NatsClient = await asyncio.wait_for(
        nats.connect(
            url,
            connect_timeout=3,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
            error_cb=remember,
        ),
        timeout=10,
    )
    return client


async def require_stream(client: NatsClient, stream: str, url: str) -> None:
    """CannotStartError unless JetStream stream ``stream`` exists and may be read."""
    try:
        await client.jsm(timeout=10).stream_info(stream)
    except nats.js.errors.NotFoundError:
        raise CannotStartError(
            f"NATS at {shown(url)} has no stream {stream}: is it the registry's NATS? "
            "(`modelreg serve` creates the stream; MODELREG_NATS_STREAM names another)"
        ) from None
    except (nats.errors.Error, TimeoutError) as exc:
        raise CannotStartError(
            f"cannot read stream {stream} on NATS at {shown(url)}: {str(exc) or type(exc).__name__}"
        ) from None


def shown(url: str) -> str:
    """``url`` fit for a message: a password in it becomes ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
