"""Names that become folders, object keys or file names (job, run, cluster, variant).

A name is letters, digits and `._-`, starting with a letter or digit (no leading dot: no hidden
files, no `..`), at most 100 characters. Checked before anything is created, so a name can never
point outside the store (`run=../../etc`) or smuggle shell syntax anywhere it is printed.
"""

from __future__ import annotations

import re

from orchestrator.errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RULE = "letters, digits and . _ - (starting with a letter or digit, at most 100 characters)"


def is_safe_name(value: object) -> bool:
    return isinstance(value, str) and NAME.fullmatch(value) is not None


def check_name(kind: str, value: object) -> str:
    """`value` if it is a safe name, else a ConfigError naming `kind` and the rule."""
    if not is_safe_name(value):
        shown = repr(value)[:120]
        raise ConfigError(f"{kind}={shown} is not a valid name: use {RULE}")
    return value  # type: ignore[return-value]
