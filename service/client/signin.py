"""Signing in from a terminal: the device authorization grant (RFC 8628) against the
registry's identity provider, and the stored credential the CLI and the Python client use
when no token is given. I/O: HTTP (the registry's ``/api/v1/auth/config``, the provider),
the credentials file.

The credential lives in ``$MODELREG_CREDENTIALS``, else
``$XDG_CONFIG_HOME/modelreg/credentials.json`` (``~/.config/...``), written with mode 0600
(its folder 0700) and replaced atomically, so a crash never leaves half a token and no
other user on the machine can read it. When the access token has expired and the provider
gave a refresh token, the next client refreshes it and stores the new pair.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec

from service.client.errors import ConfigurationError

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CREDENTIALS_VARIABLE = "MODELREG_CREDENTIALS"
# Refresh a little early: a token that expires in flight is refused mid-command.
EXPIRY_MARGIN = 30.0
# RFC 8628 3.5: on slow_down, wait five seconds longer from then on.
SLOW_DOWN_STEP = 5.0
HTTP_TIMEOUT = 15.0


class SignInError(Exception):
    """The device sign-in did not finish: denied, expired, or the provider refused."""


class SignInUnreachableError(SignInError):
    """The registry or its provider could not be reached, or answered nonsense."""


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    url: str  # the registry this credential signs in to
    access_token: str
    token_endpoint: str
    client_id: str
    refresh_token: str | None = None
    expires_at: float | None = None  # Unix seconds


def credentials_path() -> Path:
    explicit = os.environ.get(CREDENTIALS_VARIABLE)
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config).expanduser() / "modelreg" / "credentials.json"


def save(credentials: Credentials, path: Path | None = None) -> Path:
    target = path or credentials_path()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file 0600 from the start: the token is never readable by others,
    # not even between the write and a chmod.
    handle, temporary = tempfile.mkstemp(prefix=".credentials-", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(msgspec.json.format(msgspec.json.encode(credentials)))
            file.flush()
            os.fsync(file.fileno())
        Path(temporary).replace(target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def load(path: Path | None = None) -> Credentials | None:
    """The stored credential; None when there is none. ConfigurationError when unreadable."""
    source = path or credentials_path()
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"{source}: cannot be read ({exc.strerror})") from None
    try:
        return msgspec.json.decode(raw, type=Credentials)
    except msgspec.DecodeError as exc:
        raise ConfigurationError(
            f"{source}: not a modelreg credential ({exc}); run modelreg login"
        ) from None


def remove(path: Path | None = None) -> bool:
    """Forget the stored credential; False when there was none."""
    source = path or credentials_path()
    try:
        source.unlink()
    except FileNotFoundError:
        return False
    return True


def stored_token(url: str | None) -> tuple[str, str] | None:
    """The registry URL and a usable token from the credentials file, refreshed when it has
    expired and a refresh token is held; None without a credential for ``url`` (None: any)."""
    credentials = load()
    if credentials is None:
        return None
    if url is not None and url.rstrip("/") != credentials.url:
        return None
    expired = credentials.expires_at is not None and (
        time.time() >= credentials.expires_at - EXPIRY_MARGIN
    )
    if expired:
        if not credentials.refresh_token:
            raise ConfigurationError("the stored sign-in has expired: run modelreg login")
        credentials = refresh(credentials)
    return credentials.url, credentials.access_token


def refresh(credentials: Credentials) -> Credentials:
    form = {
        "grant_type": "refresh_token",
        "refresh_token": credentials.refresh_token or "",
        "client_id": credentials.client_id,
    }
    try:
        answer = httpx.post(credentials.token_endpoint, data=form, timeout=HTTP_TIMEOUT)
        body = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ConfigurationError(f"the stored sign-in could not be refreshed ({exc})") from None
    if answer.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
        error = body.get("error") if isinstance(body, dict) else answer.status_code
        raise ConfigurationError(
            f"the stored sign-in could not be refreshed ({error}): run modelreg login"
        )
    renewed = _from_tokens(body, credentials.url, credentials.token_endpoint, credentials.client_id)
    if renewed.refresh_token is None:  # the provider kept the old one valid
        renewed = msgspec.structs.replace(renewed, refresh_token=credentials.refresh_token)
    save(renewed)
    return renewed


def _from_tokens(
    body: dict[str, Any], url: str, token_endpoint: str, client_id: str
) -> Credentials:
    expires_in = body.get("expires_in")
    return Credentials(
        url=url,
        access_token=str(body["access_token"]),
        refresh_token=body.get("refresh_token")
        if isinstance(body.get("refresh_token"), str)
        else None,
        expires_at=time.time() + float(expires_in) if isinstance(expires_in, int | float) else None,
        token_endpoint=token_endpoint,
        client_id=client_id,
    )


@dataclass(frozen=True)
class Prompt:
    """What the person is asked to do on another device."""

    verification_uri: str
    user_code: str
    verification_uri_complete: str | None
    expires_in: float
    provider_name: str


def device_login(
    url: str,
    *,
    prompt: Callable[[Prompt], None],
    waiting: Callable[[float], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    http: httpx.Client | None = None,
) -> Credentials:
    """Sign in to the registry at ``url`` through its provider's device flow; the caller
    stores the result. ``waiting`` is told the seconds waited so far before each poll."""
    owned = http is None
    client = http or httpx.Client(timeout=HTTP_TIMEOUT)
    try:
        return _device_login(url.rstrip("/"), client, prompt, waiting, sleep, clock)
    except httpx.HTTPStatusError as exc:
        raise SignInUnreachableError(
            f"{exc.request.url} answered {exc.response.status_code}"
        ) from None
    except httpx.HTTPError as exc:
        raise SignInUnreachableError(
            f"cannot reach the registry or its identity provider: {exc}"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        # Not the shape RFC 8628 or /api/v1/auth/config promise (a proxy's error page).
        raise SignInUnreachableError(f"an unexpected answer during sign-in ({exc!r})") from None
    finally:
        if owned:
            client.close()


def _device_login(
    url: str,
    http: httpx.Client,
    prompt: Callable[[Prompt], None],
    waiting: Callable[[float], None],
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> Credentials:
    answer = http.get(f"{url}/api/v1/auth/config")
    if answer.status_code == 404:
        raise SignInError(f"{url} offers no sign-in through an identity provider; use a token")
    answer.raise_for_status()
    config = answer.json()
    client_id, token_endpoint = config["client_id"], config["token_endpoint"]
    started = http.post(
        config["device_authorization_endpoint"],
        data={"client_id": client_id, "scope": config["scope"]},
    )
    grant = started.json()
    if started.status_code != 200:
        raise SignInError(f"the identity provider refused to start: {_described(grant)}")
    began = clock()
    expires_in = float(grant.get("expires_in", 600))
    interval = float(grant.get("interval", 5))  # RFC 8628 3.2: 5 when not given
    prompt(
        Prompt(
            verification_uri=grant["verification_uri"],
            user_code=grant["user_code"],
            verification_uri_complete=grant.get("verification_uri_complete"),
            expires_in=expires_in,
            provider_name=str(config.get("provider_name", "your identity provider")),
        )
    )
    poll = {"grant_type": DEVICE_GRANT, "device_code": grant["device_code"], "client_id": client_id}
    while True:
        waiting(clock() - began)
        sleep(interval)
        answer = http.post(token_endpoint, data=poll)
        body = answer.json()
        if answer.status_code == 200:
            return _from_tokens(body, url, token_endpoint, client_id)
        error = body.get("error") if isinstance(body, dict) else None
        if error == "authorization_pending":
            pass
        elif error == "slow_down":
            interval += SLOW_DOWN_STEP
        elif error == "access_denied":
            raise SignInError("the sign-in was denied at the identity provider")
        elif error == "expired_token":
            raise SignInError("the code expired before it was approved: run modelreg login again")
        else:
            raise SignInError(f"the identity provider refused: {_described(body)}")
        if clock() - began >= expires_in:
            raise SignInError("the code expired before it was approved: run modelreg login again")


def _described(body: Any) -> str:
    if not isinstance(body, dict):
        return "an answer that is not JSON"
    error, description = body.get("error", "unknown error"), body.get("error_description")
    return f"{error} ({description})" if description else str(error)
