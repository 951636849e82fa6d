"""``modelreg login`` and ``modelreg logout``: sign in through the registry's identity
provider from a terminal (the device flow, ``service.client.signin``) and forget it again.
The stored credential serves every later command that is given no ``--token`` or
``MODELREG_TOKEN``."""

from __future__ import annotations

import sys

import typer

from service.cli.shared import EXIT_REFUSED, EXIT_UNAVAILABLE, UrlOption, fail
from service.client import DEFAULT_URL, ConfigurationError
from service.client.signin import (
    Prompt,
    SignInError,
    SignInUnreachableError,
    credentials_path,
    device_login,
    remove,
    save,
)


def login(url: UrlOption = None) -> None:
    """Sign in through the registry's identity provider (device code): open the link it
    prints on any device, enter the code, approve; the token is stored for later commands.

    Example: modelreg login --url https://models.example.com
    """
    registry = (url or DEFAULT_URL).rstrip("/")
    try:
        credentials = device_login(registry, prompt=_show, waiting=_waiting)
    except SignInError as exc:
        sys.stderr.write("\n")
        # Like every client command: 1 refused (denied, expired), 3 unreachable.
        unreachable = isinstance(exc, SignInUnreachableError)
        fail(str(exc), EXIT_UNAVAILABLE if unreachable else EXIT_REFUSED)
    finally:
        sys.stderr.flush()
    try:
        path = save(credentials)
    except OSError as exc:
        fail(f"{exc.filename or credentials_path()}: {exc.strerror or exc}")
    sys.stderr.write("\n")
    typer.echo(f"Signed in to {registry}; the token is stored in {path} (mode 0600).")


def logout() -> None:
    """Forget the credential ``modelreg login`` stored (the provider's session stays)."""
    try:
        removed = remove()
    except (OSError, ConfigurationError) as exc:
        fail(str(exc))
    path = credentials_path()
    typer.echo(f"Signed out: {path} removed." if removed else f"Not signed in ({path} absent).")


def _show(prompt: Prompt) -> None:
    typer.echo(f"To sign in with {prompt.provider_name}, open {prompt.verification_uri}")
    typer.echo(f"and enter the code {prompt.user_code}")
    if prompt.verification_uri_complete:
        typer.echo(f"(or open {prompt.verification_uri_complete})")
    typer.echo(f"The code is valid for {int(prompt.expires_in // 60)} minutes.", err=True)
    sys.stdout.flush()


def _waiting(seconds: float) -> None:
    # One line, rewritten: progress without filling the terminal.
    sys.stderr.write(f"\rWaiting for approval... {int(seconds)} s")
    sys.stderr.flush()
