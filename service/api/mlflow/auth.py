"""Authentication as MLflow clients send it. I/O: via the token authenticator.

    MLFLOW_TRACKING_TOKEN=<secret>            ->  Authorization: Bearer <secret>
    MLFLOW_TRACKING_USERNAME=<anything>       ->  Authorization: Basic base64(user:secret)
    MLFLOW_TRACKING_PASSWORD=<secret>

Either way the secret is a modelreg token secret (``mr_...``), so an MLflow caller has
exactly the roles and scopes of that token, as on ``/api/v1``. With Basic the password is
the secret and the user name is not checked (MLflow requires one; use the principal's name
or the token id for readable client logs). A Basic header whose password is empty takes
the user name as the secret, for tools that only let one field be set.
"""

from __future__ import annotations

import base64
import binascii

from service.api.problems import AuthenticationError

_HOW = (
    "send 'Authorization: Bearer <token>' (MLFLOW_TRACKING_TOKEN) or HTTP Basic with the"
    " token as the password (MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD)"
)


def secret_of(header: str) -> str:
    """The token secret an ``Authorization`` header carries, Bearer or Basic."""
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationError(f"malformed Basic credentials; {_HOW}") from None
        user, colon, password = decoded.partition(":")
        secret = password if colon and password else user
        if secret:
            return secret
    raise AuthenticationError(_HOW)
