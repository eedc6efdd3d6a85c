"""The config error type (a leaf module: everything that validates input can raise it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A job config is invalid. The message names the key (and file) and the valid choices."""
