"""Field checks every settings dataclass uses (a leaf: the schema and the objectives' settings
import it). Each error names the key and what would be valid."""

from __future__ import annotations

import math

from orchestrator.errors import ConfigError


def choice(key: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {list(choices)}")


def positive(key: str, value: float | int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")
