"""Signed checkpoints: an Ed25519 signature over (log position, log hash, time). I/O: files.

A checkpoint anchors the sealed log outside the database. Whoever holds the public key can
later prove that the log still extends it: the log hash recorded at that position must be
the signed one. Truncating the tail and rewinding the heads, or rewriting history and
re-chaining it, is consistent inside the database but cannot reproduce the signature.

The signed bytes are a fixed domain tag and the canonical JSON of the three fields, so a
signature over anything else (another protocol, another field order) never verifies here.
The private key lives in a file outside the database (created 0600 on first use); its
public half is written beside it as ``<key>.pub`` for auditors.

Files are named ``checkpoint-<position, 20 digits>.json``, so a directory lists in log
order, and hold the checkpoint as JSON (``encode_checkpoint``).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from events.base import UtcDateTime
from events.envelope import encode_canonical

_DOMAIN = b"modelreg-checkpoint-v1\n"
_FILE_PREFIX = "checkpoint-"


class CheckpointError(ValueError):
    """A key or checkpoint file is unusable; the message names the file and why."""


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    log_position: int
    log_hash: str  # hex
    time: UtcDateTime
    key_id: str  # hex sha256 of the raw public key, first 16 bytes: which key signed
    signature: str  # base64 Ed25519 signature over ``signed_bytes``


class _Signed(msgspec.Struct, frozen=True, kw_only=True):
    log_position: int
    log_hash: str
    time: UtcDateTime


def signed_bytes(log_position: int, log_hash: str, time: datetime) -> bytes:
    return _DOMAIN + encode_canonical(
        _Signed(log_position=log_position, log_hash=log_hash, time=time)
    )


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def sign_checkpoint(
    key: Ed25519PrivateKey, log_position: int, log_hash: bytes, time: datetime
) -> Checkpoint:
    # Whole microseconds in UTC: the signed form and the stored form must encode alike.
    moment = time.astimezone(UTC)
    hex_hash = log_hash.hex()
    signature = key.sign(signed_bytes(log_position, hex_hash, moment))
    return Checkpoint(
        log_position=log_position,
        log_hash=hex_hash,
        time=moment,
        key_id=key_id(key.public_key()),
        signature=base64.b64encode(signature).decode("ascii"),
    )


def signature_holds(checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    try:
        signature = base64.b64decode(checkpoint.signature, validate=True)
        public_key.verify(
            signature,
            signed_bytes(checkpoint.log_position, checkpoint.log_hash, checkpoint.time),
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    return encode_canonical(checkpoint)


def decode_checkpoint(raw: bytes) -> Checkpoint:
    return msgspec.json.decode(raw, type=Checkpoint)


# ------------------------------------------------------------------ keys


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path``; on first use a new one, written 0600, with ``<path>.pub``."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # O_EXCL: two workers starting at once must not overwrite each other's key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_private_key(path)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        public_key_path(path).write_bytes(public_pem(key.public_key()))
        return key
    if path.stat().st_mode & 0o077:
        raise CheckpointError(
            f"checkpoint key {path} is readable by others; chmod 600 it (it signs the log)"
        )
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint key {path} is not a PEM private key: {exc}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise CheckpointError(f"checkpoint key {path} is not an Ed25519 key")
    if not public_key_path(path).exists():
        public_key_path(path).write_bytes(public_pem(loaded.public_key()))
    return loaded


def public_key_path(private_key_path: Path) -> Path:
    return private_key_path.with_name(private_key_path.name + ".pub")


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise CheckpointError(f"cannot read public key {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CheckpointError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"{path} is not an Ed25519 public key")
    return key


# ------------------------------------------------------------------ files


def checkpoint_file(directory: Path, log_position: int) -> Path:
    return directory / f"{_FILE_PREFIX}{log_position:020d}.json"


def write_checkpoint_file(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write atomically (temp file, fsync, rename), so a crash never leaves half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    target = checkpoint_file(directory, checkpoint.log_position)
    temporary = target.with_suffix(".tmp")
    with temporary.open("wb") as out:
        out.write(encode_checkpoint(checkpoint))
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(target)
    return target


def read_checkpoint_dir(directory: Path) -> list[Checkpoint]:
    """Every checkpoint file in ``directory``, in log order; raise on an unreadable one."""
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    found = []
    for path in sorted(directory.glob(f"{_FILE_PREFIX}*.json")):
        try:
            found.append(decode_checkpoint(path.read_bytes()))
        except msgspec.DecodeError as exc:
            raise CheckpointError(f"checkpoint file {path} is not a checkpoint: {exc}") from None
    return found


def latest(checkpoints: Iterable[Checkpoint]) -> Checkpoint | None:
    return max(checkpoints, key=lambda c: c.log_position, default=None)
