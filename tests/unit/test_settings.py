"""Settings come from MODELREG_* variables; a bad value names the variable."""

from __future__ import annotations

import pytest

from service.settings import SettingsError, load_settings


def test_defaults_listen_on_loopback_and_embed_the_servers() -> None:
    settings = load_settings({})
    assert settings.host == "127.0.0.1"
    assert settings.embedded_postgres
    assert settings.embedded_nats


def test_values_are_parsed_from_strings() -> None:
    settings = load_settings(
        {
            "MODELREG_PORT": "9001",
            "MODELREG_NATS_REPLICAS": "3",
            "MODELREG_DATABASE_URL": "postgresql://x/y",
            "OTHER": "1",
        }
    )
    assert (settings.port, settings.nats_replicas, settings.database_url) == (
        9001,
        3,
        "postgresql://x/y",
    )
    assert not settings.embedded_postgres


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MODELREG_PORT", "eighty", "int"),
        ("MODELREG_PORT", "70000", "<= 65535"),
        ("MODELREG_ROLE", "boss", "enum"),
        ("MODELREG_DB_SCHEMA", "Robert'); DROP TABLE", "regex"),
        ("MODELREG_NATS_SUBJECT_PREFIX", "a..b", "regex"),
        ("MODELREG_NATS_DUPLICATE_WINDOW", "-1", "> 0"),
    ],
)
def test_an_invalid_value_names_the_variable_and_the_rule(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})
    message = str(caught.value)
    assert message.startswith(f"{variable}:")
    assert expected in message


def test_explicit_overrides_win_over_the_environment() -> None:
    assert load_settings({"MODELREG_PORT": "1"}, port=2).port == 2
