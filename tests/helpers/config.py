"""What every configuration test starts from: a minimal valid environment and the error check.

One definition, so a new required setting is added in one place and every
config test module keeps building valid configurations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mterelay.service.config import ConfigError, load_config

__all__ = ["SECRET", "BASE", "env", "ConfigErrorCase"]

SECRET = "s" * 32
#: The smallest environment ``load_config`` accepts.
BASE: Mapping[str, str] = {"UPSTREAM": "http://127.0.0.1:9000", "CLIENT_ID_SECRET": SECRET}


def env(base: Mapping[str, str] = BASE, **extra: str) -> dict[str, str]:
    """A fresh environment: ``base`` (the minimal one unless given) plus ``extra``."""
    values = dict(base)
    values.update(extra)
    return values


class ConfigErrorCase(SynchronousTestCase):
    """``check``: refused in one line that starts with the setting's name; returns that line."""

    def check(self, environ: dict[str, str], setting: str, fragment: str,
              file_values: dict[str, Any] | None = None,
              cli_values: dict[str, Any] | None = None) -> str:
        with self.assertRaises(ConfigError) as caught:
            load_config(environ, file_values, cli_values)
        message = str(caught.exception)
        self.assertTrue(message.startswith(f"invalid configuration: {setting} "), message)
        self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        self.assertEqual(caught.exception.setting, setting)
        return message
