"""The config error type (a leaf module: everything that validates input can raise it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A job config is invalid. The message names the key (and file) and the valid choices."""


class FatalError(RuntimeError):
    """Training cannot go on, and trying again would not help: an input model or checkpoint
    that fails verification, a resume this job cannot make. Raised in a worker, it fails the
    run at once (no retry: a retry would pay for the cluster to fail the same way), with this
    message, which says what to change."""


class BudgetRefusal(ConfigError):
    """A launch that its budget cannot pay for (what is spent plus its start-up and tear-down
    exceed `budget.max_usd`): refused before anything starts. A pipeline stops at that stage's
    boundary with stop reason `budget`."""
