"""table-procexec's settings (settings.py): validated once, with a message naming the
option."""

from __future__ import annotations

import pytest

from opensmtpd.procexec import Settings


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="protocol"):
        Settings(protocol="imsg")
    with pytest.raises(ValueError, match="deadline"):
        Settings(deadline=0)
    with pytest.raises(ValueError, match="form-2020"):
        Settings(form_2020="article")


@pytest.mark.parametrize(("settings", "message"), [
    ({"handshake_timeout": -1.0}, "handshake-timeout must be a positive number of seconds"),
    ({"max_backoff": 0.1, "min_backoff": 0.2}, "max-backoff must not be below min-backoff"),
    ({"restart_after": 0}, "restart-after must be at least 1"),
])
def test_each_bad_setting_names_its_option(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**settings)  # type: ignore[arg-type]


def test_defaults() -> None:
    s = Settings()
    assert (s.protocol, s.form_2020, s.deadline, s.handshake_timeout, s.max_backoff,
            s.restart_after) == ("auto", "named", 5.0, 2.0, 5.0, 3)
