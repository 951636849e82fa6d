"""Credentials and permissions of the embedded NATS. I/O: files in the data dir.

The embedded server accepts no anonymous client. Two users are generated on first start,
each with a random password in its own 0600 file under ``<data dir>/nats/``:

- ``modelreg`` (``service-credentials``): the service. It publishes events and signed
  checkpoints and manages their streams through the JetStream API.
- ``modelreg-reader`` (``reader-credentials``): auditors and consumers (``modelreg audit
  follow``/``mirror``, ``modelreg deploy-agent``, the consumer kit). It may create
  consumers, pull and acknowledge messages, and dead-letter into ``<root>.dlq.>``. It may
  not publish on the event or checkpoint subjects, and it may not create, update, purge or
  delete their streams or any of their messages.

The same rules as ``deploy/nats/values.yaml``, rendered for the configured stream names
and subject prefixes. The CLI finds the reader's password through the data dir
(``reader_url``).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

SERVICE_USER = "modelreg"
READER_USER = "modelreg-reader"
SERVICE_FILE = "service-credentials"
READER_FILE = "reader-credentials"


@dataclass(frozen=True, slots=True)
class NatsNames:
    """The streams and subject prefixes the permissions speak of."""

    events_stream: str = "MODELREG_EVENTS"
    events_prefix: str = "modelreg.events"
    checkpoint_stream: str = "MODELREG_CHECKPOINTS"
    checkpoint_prefix: str = "modelreg.checkpoints"

    @property
    def dlq_root(self) -> str:
        # As the consumer kit derives it: the events prefix without its last token.
        head, dot, _ = self.events_prefix.rpartition(".")
        return f"{head}.dlq" if dot else f"{self.events_prefix}_dlq"


def password(store_dir: Path, file_name: str) -> str:
    """The password in ``file_name``, created 0600 with a random one on first use."""
    path = store_dir / file_name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def server_config(store_dir: Path, names: NatsNames) -> Path:
    """Write the server's authorization config (0600) and return its path."""
    mutations = [
        f"$JS.API.STREAM.{verb}.{stream}"
        for stream in (names.events_stream, names.checkpoint_stream)
        for verb in ("CREATE", "UPDATE", "DELETE", "PURGE", "MSG.DELETE")
    ]
    users = [
        {
            "user": SERVICE_USER,
            "password": password(store_dir, SERVICE_FILE),
            "permissions": {
                "publish": [
                    f"{names.events_prefix}.>",
                    f"{names.checkpoint_prefix}.>",
                    "$JS.API.>",
                ],
                "subscribe": ["_INBOX.>"],
            },
        },
        {
            "user": READER_USER,
            "password": password(store_dir, READER_FILE),
            "permissions": {
                "publish": {
                    "allow": ["$JS.API.>", "$JS.ACK.>", f"{names.dlq_root}.>"],
                    "deny": [
                        f"{names.events_prefix}.>",
                        f"{names.checkpoint_prefix}.>",
                        *mutations,
                    ],
                },
                "subscribe": ["_INBOX.>"],
            },
        },
    ]
    path = store_dir / "auth.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        # NATS config reads JSON as a value.
        out.write(f"authorization: {json.dumps({'users': users})}\n")
    return path


def with_user(url: str, user: str, secret: str) -> str:
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(secret, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


def reader_url(store_dir: Path, url: str) -> str:
    """``url`` with the reader's credentials, when the data dir has them (else as is)."""
    try:
        secret = (store_dir / READER_FILE).read_text().strip()
    except OSError:
        return url
    return with_user(url, READER_USER, secret)
