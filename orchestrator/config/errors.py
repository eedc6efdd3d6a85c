"""The error types, re-exported where the config's users look for them (they live in the leaf
module orchestrator/errors.py, which the objectives' settings import without the config)."""

from orchestrator.errors import BudgetRefusal, ConfigError, FatalError

__all__ = ["BudgetRefusal", "ConfigError", "FatalError"]
