"""Passwords in database and NATS URLs never reach a message or a log line."""

from __future__ import annotations

import pytest

from service.runtime.serve import redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://modelreg:s3cret@db:5432/modelreg",
            "postgresql://modelreg:***@db:5432/modelreg",
        ),
        ("nats://modelreg:s3cret@nats:4222", "nats://modelreg:***@nats:4222"),
        ("nats://a:pw1@n1:4222,nats://a:pw2@n2:4222", "nats://a:***@n1:4222,nats://a:***@n2:4222"),
        ("nats://nats:4222", "nats://nats:4222"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact(url) == shown
